"""Guard: input handling, ROIs, resize, per-manifest defense, fused vs members, threads, codec warning."""

from __future__ import annotations

import json
import warnings
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from edge_guard import jpeg
from edge_guard.bundle import sha256_file, write_manifest
from edge_guard.errors import BundleError, InputError
from edge_guard.guard import STAGES, Guard, Prediction, resize
from tests.onnx_fixtures import (
    CLASSES,
    H,
    W,
    channel_weights,
    defense_dict,
    fused_graph,
    make_bundle,
    read_manifest,
    solid,
)

RED, GREEN, BLUE = (220, 20, 20), (20, 220, 20), (20, 20, 220)


def _noisy_members(names_q, seed=0):
    """Members whose logits depend on every pixel (so JPEG changes them)."""
    rng = np.random.default_rng(seed)
    return [{"name": n, "vaccination": v, "quality": q,
             "weight": channel_weights() + rng.normal(0, 0.3, (3 * H * W, 4)).astype(np.float32)}
            for n, v, q in names_q]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    pm_members = [("q20", "jpeg", 20), ("q80", "jpeg", 80), ("raw", "none", None)]
    three = [("a", "none", None), ("b", "none", None), ("c", "none", None)]
    return {
        "plain": make_bundle(root / "plain"),
        "pm": make_bundle(root / "pm", _noisy_members(pm_members),
                          defense=defense_dict("jpeg", [20, 80], per_member=True), fused=True),
        "pm_slq": make_bundle(root / "pm_slq", _noisy_members([("q20", "jpeg", 20), ("s", "slq", None)]),
                              defense=defense_dict("jpeg", [20, 60], per_member=True)),
        "slq": make_bundle(root / "slq", _noisy_members(three), defense=defense_dict("slq", [20, 40, 60, 80]),
                           fused=True),
        "jpeg": make_bundle(root / "jpeg", _noisy_members(three), defense=defense_dict("jpeg", [50])),
        "in_graph": make_bundle(root / "in_graph", defense=defense_dict("jpeg", [50], in_graph=True)),
    }


def _images(n, seed=0, size=(24, 24)):
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def _key(preds):
    return [(p.class_id, p.votes, round(p.confidence, 5)) for p in preds]


# ----------------------------------------------------------------------------- end to end


def test_classify_end_to_end(bundles):
    guard = Guard.from_bundle(bundles["plain"], threads=1)
    preds = guard.classify([solid(RED), solid(GREEN, 5, 40), solid(BLUE, 100, 60)])
    assert [p.class_name for p in preds] == ["red", "green", "blue"]
    assert [p.class_id for p in preds] == [0, 1, 2] and preds[0].votes == (0, 0, 0)
    assert all(0.9 < p.confidence <= 1.0 for p in preds)
    p = preds[0]
    assert isinstance(p, Prediction) and set(p.timings_ms) == set(STAGES) and p.timings_ms["total"] > 0
    assert json.loads(json.dumps(p.to_dict()))["votes"] == [0, 0, 0]
    assert guard.classes == CLASSES


def test_single_image_batch_and_list_agree(bundles):
    guard = Guard.from_bundle(bundles["pm"], threads=1)
    batch = _images(3)
    one_by_one = [guard.classify(img)[0] for img in batch]
    assert _key(guard.classify(batch)) == _key(one_by_one) == _key(guard.classify(list(batch)))


def test_gray_and_rgba_are_converted(bundles):
    guard = Guard.from_bundle(bundles["pm"], threads=1)
    rgb = _images(1)[0]
    gray = rgb[..., 1].copy()
    as_rgb = np.repeat(gray[..., None], 3, axis=2)
    assert _key(guard.classify(gray)) == _key(guard.classify(gray[..., None])) == _key(guard.classify(as_rgb))
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 7, np.uint8)], axis=2)
    assert _key(guard.classify(rgba)) == _key(guard.classify(rgb))


def test_rois_give_one_prediction_per_crop_in_order(bundles):
    guard = Guard.from_bundle(bundles["plain"], threads=1)
    frame = np.concatenate([solid(RED, 20, 30), solid(GREEN, 20, 30), solid(BLUE, 20, 30)], axis=1)  # 20x90
    boxes = [(30, 0, 60, 20), (0, 0, 30, 20), (60.2, 0.4, 89.6, 19.7)]  # floats round to pixels
    assert [p.class_name for p in guard.classify(frame, rois=boxes)] == ["green", "red", "blue"]
    assert [p.class_name for p in guard.classify(frame, rois=(60, 0, 90, 20))] == ["blue"]
    other = solid(GREEN, 10, 10)
    preds = guard.classify([frame, other, frame], rois=[[boxes[2], boxes[0]], None, []])
    assert [p.class_name for p in preds] == ["blue", "green", "green"]
    assert guard.classify([frame], rois=[np.array([[0, 0, 30, 20]])])[0].class_name == "red"
    assert guard.classify(frame, rois=[[]]) == []


@pytest.mark.parametrize(
    "rois, match",
    [
        ([(0, 0, 91, 20)], r"rois\[0\]\[0\]: expected a non-empty box inside the 90x20 image"),
        ([(10, 0, 10, 20)], r"rois\[0\]\[0\].*got \(10, 0, 10, 20\)"),
        ([(-1, 0, 5, 5)], r"rois\[0\]\[0\]"),
        ([[(0, 0, 5, 5)], None], r"rois: expected a list with one entry per image \(1\).*got 2 entries"),
        ([["a", "b", "c", "d"]], r"rois\[0\]\[0\]: expected 4 numbers"),
        ("0,0,5,5", r"rois: expected a list"),
    ],
)
def test_bad_rois_are_refused(bundles, rois, match):
    guard = Guard.from_bundle(bundles["plain"])
    with pytest.raises(InputError, match=match):
        guard.classify(np.zeros((20, 90, 3), np.uint8), rois=rois)


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((8, 8, 3), np.float32), r"image dtype: expected uint8 \(0\.\.255\), got float32"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.int64)], r"images\[1\] dtype: expected uint8"),
        (np.zeros((8, 8, 2), np.uint8), r"images shape: expected HxWx3, NxHxWx3"),
        (np.zeros((1, 1, 8, 8, 3), np.uint8), r"images shape.*\(1, 1, 8, 8, 3\)"),
        ([np.zeros((8, 8, 5), np.uint8)], r"images\[0\] shape: expected HxWx3 RGB"),
        (np.zeros((0, 8, 3), np.uint8), r"image shape: expected a non-empty image"),
        ([], r"images: expected at least one image"),
        (np.zeros((0, 8, 8, 3), np.uint8), r"images: expected at least one image"),
        ("frame.png", r"images: expected a numpy array or a list"),
        ([[1, 2, 3]], r"images\[0\]: expected a numpy.ndarray"),
    ],
)
def test_bad_images_are_refused(bundles, images, match):
    guard = Guard.from_bundle(bundles["plain"])
    with pytest.raises(InputError, match=match):
        guard.classify(images)


def test_resize_uses_area_when_shrinking_and_linear_when_growing():
    rng = np.random.default_rng(3)
    big, small, mixed = (rng.integers(0, 256, s, dtype=np.uint8) for s in ((40, 30, 3), (5, 6, 3), (4, 30, 3)))
    area = cv2.resize(big, (W, H), interpolation=cv2.INTER_AREA)
    assert not np.array_equal(area, cv2.resize(big, (W, H), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(resize(big, H, W), area)
    linear = cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR)
    assert not np.array_equal(linear, cv2.resize(small, (W, H), interpolation=cv2.INTER_AREA))
    assert np.array_equal(resize(small, H, W), linear)
    assert np.array_equal(resize(mixed, H, W), cv2.resize(mixed, (W, H), interpolation=cv2.INTER_LINEAR))
    same = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert resize(same, H, W) is same


# ----------------------------------------------------------------------------- defense


def test_per_member_defense_applies_each_members_quality(bundles):
    guard = Guard.from_bundle(bundles["pm"], use_fused=False, threads=1)
    batch = np.stack([resize(img, H, W) for img in _images(2)])
    d = guard.defend(batch)
    assert d.shape == (3, 2, H, W, 3)
    assert np.array_equal(d[0], jpeg.roundtrip(batch, 20, backend=guard.backend))
    assert np.array_equal(d[1], jpeg.roundtrip(batch, 80, backend=guard.backend))
    assert np.array_equal(d[2], batch)  # vaccination "none": raw
    assert not np.array_equal(d[0], d[1])


def test_per_member_classify_feeds_each_member_its_own_tensor(bundles, monkeypatch):
    guard = Guard.from_bundle(bundles["pm"], use_fused=False, threads=1)
    calls, fed = [], []
    real_roundtrip, real_roundtrips, real_run = jpeg.roundtrip, jpeg.roundtrips, guard.engine.run
    monkeypatch.setattr(jpeg, "roundtrips", lambda imgs, qs, **kw: calls.extend(qs) or real_roundtrips(imgs, qs, **kw))
    monkeypatch.setattr(guard.engine, "run", lambda x, **kw: fed.append(x) or real_run(x, **kw))
    images = _images(2, size=(H, W))  # already the input size: no resize
    preds = guard.classify(images)
    assert sorted(calls) == [20, 80] and len(fed) == 1
    x = fed[0]
    assert x.shape == (3, 2, 3, H, W) and x.dtype == np.float32
    for i, q in enumerate((20, 80)):
        expected = real_roundtrip(images, q, backend=guard.backend).astype(np.float32) / 255
        assert np.allclose(x[i], expected.transpose(0, 3, 1, 2), atol=1e-6)
    assert np.allclose(x[2], images.astype(np.float32).transpose(0, 3, 1, 2) / 255, atol=1e-6)
    member_ids = real_run(x).argmax(-1).T  # [N, M]
    assert [p.votes for p in preds] == [tuple(v) for v in member_ids.tolist()]


def test_shared_slq_runs_once_per_classify(bundles, monkeypatch):
    guard = Guard.from_bundle(bundles["slq"], seed=0, threads=1)
    calls, direct, inside = [], [], [False]
    real_slq, real_roundtrips = jpeg.slq, jpeg.roundtrips

    def slq(imgs, qs, **kw):
        calls.append((imgs.shape, tuple(qs)))
        inside[0] = True
        try:
            return real_slq(imgs, qs, **kw)
        finally:
            inside[0] = False

    def roundtrips(imgs, qs, **kw):  # SLQ compresses at each quality itself; nothing else may
        if not inside[0]:
            direct.append(tuple(qs))
        return real_roundtrips(imgs, qs, **kw)

    monkeypatch.setattr(jpeg, "slq", slq)
    monkeypatch.setattr(jpeg, "roundtrips", roundtrips)
    assert len(guard.classify(_images(4))) == 4
    assert calls == [((4, H, W, 3), (20, 40, 60, 80))] and direct == []
    guard.classify(_images(2, seed=1))
    assert len(calls) == 2


def _refuse(*args, **kwargs):
    raise AssertionError("the CPU defense must not run for this bundle")


def test_slq_is_seeded_and_advances(bundles):
    batch = np.stack([resize(img, H, W) for img in _images(4, size=(64, 64))])
    g1, g2 = Guard.from_bundle(bundles["slq"], seed=7), Guard.from_bundle(bundles["slq"], seed=7)
    first = g1.defend(batch)
    assert np.array_equal(first, g2.defend(batch))
    assert not np.array_equal(first, g1.defend(batch))  # the generator moves on between calls
    versions = [jpeg.roundtrip(batch, q, backend=g1.backend) for q in (20, 40, 60, 80)]
    assert np.all(np.any([first == v for v in versions], axis=0))  # every pixel comes from some quality


def test_per_member_slq_member_gets_slq(bundles):
    guard = Guard.from_bundle(bundles["pm_slq"], seed=3)
    batch = np.stack([resize(img, H, W) for img in _images(2, size=(40, 40))])
    d = guard.defend(batch)
    assert np.array_equal(d[0], jpeg.roundtrip(batch, 20, backend=guard.backend))
    versions = [jpeg.roundtrip(batch, q, backend=guard.backend) for q in (20, 60)]
    assert np.all((d[1] == versions[0]) | (d[1] == versions[1]))


def test_shared_jpeg_and_in_graph(bundles, monkeypatch):
    guard = Guard.from_bundle(bundles["jpeg"])
    batch = np.stack([resize(img, H, W) for img in _images(2)])
    assert np.array_equal(guard.defend(batch), jpeg.roundtrip(batch, 50, backend=guard.backend))
    in_graph = Guard.from_bundle(bundles["in_graph"])
    monkeypatch.setattr(jpeg, "roundtrip", _refuse)
    monkeypatch.setattr(jpeg, "slq", _refuse)
    assert in_graph.defend(batch) is batch and in_graph.backend is None
    assert in_graph.classify(solid(RED))[0].class_name == "red"


def test_per_member_bundle_with_shared_input_fused_graph_is_refused(tmp_path):
    members = _noisy_members([("q20", "jpeg", 20), ("q80", "jpeg", 80)])
    root = make_bundle(tmp_path / "b", members, defense=defense_dict("jpeg", [20, 80], per_member=True))
    fused_graph(root / "fused.onnx", [m["weight"] for m in members], [np.zeros(4, np.float32)] * 2, per_member=False)
    manifest = read_manifest(root)
    manifest["fused"] = {"file": "fused.onnx", "sha256": sha256_file(root / "fused.onnx")}
    write_manifest(root, manifest)
    with pytest.raises(BundleError, match=r"fused graph input: expected per-member batches"):
        Guard.from_bundle(root)
    assert len(Guard.from_bundle(root, use_fused=False).classify(_images(1))) == 1


def test_fused_and_member_sessions_predict_identically(bundles):
    images = _images(6, seed=5)
    for name in ("pm", "slq"):
        fused = Guard.from_bundle(bundles[name], use_fused=True, seed=11, threads=1)
        members = Guard.from_bundle(bundles[name], use_fused=False, seed=11, threads=1)
        assert fused.engine.use_fused and not members.engine.use_fused
        a, b = fused.classify(images), members.classify(images)
        assert [(p.class_id, p.votes) for p in a] == [(p.class_id, p.votes) for p in b]
        assert np.allclose([p.confidence for p in a], [p.confidence for p in b], atol=1e-5)


# ----------------------------------------------------------------------------- threads, codec, defaults


def test_concurrent_callers_get_sequential_results(bundles):
    guard = Guard.from_bundle(bundles["pm"], threads=1)
    inputs = [_images(3, seed=s) for s in range(16)]
    sequential = [_key(guard.classify(x)) for x in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = [_key(r) for r in pool.map(guard.classify, inputs)]
    assert concurrent == sequential


def test_codec_mismatch_warns_once_with_fix(tmp_path):
    runtime = jpeg.resolve_backend("auto")
    other = "opencv" if runtime == "turbojpeg" else "turbojpeg"
    root = make_bundle(tmp_path / "b", defense=defense_dict("jpeg", [50], backend=other))
    with pytest.warns(RuntimeWarning, match="predictions may differ slightly") as record:
        Guard.from_bundle(root)
    assert len(record) == 1
    fix = "pass backend='opencv'" if other == "opencv" else "install libturbojpeg"
    assert fix in str(record[0].message)
    if other == "opencv" or "turbojpeg" in jpeg.available_backends():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Guard.from_bundle(root, backend=other)  # the bundle's own backend: no warning


def test_no_warning_when_backends_match(bundles):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Guard.from_bundle(bundles["jpeg"])


def test_from_bundle_without_path_uses_default(bundles, monkeypatch):
    monkeypatch.setenv("EDGEGUARD_BUNDLE", str(bundles["plain"]))
    guard = Guard.from_bundle()
    assert guard.bundle.root == bundles["plain"].resolve()
    assert guard.classify(solid(GREEN))[0].class_name == "green"
