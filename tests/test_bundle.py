"""Bundle manifest: strict schema, cross-field rules, sha256 integrity, writing, default path."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from edge_guard import bundle as bundle_mod
from edge_guard.bundle import Bundle, BundleError, default_bundle_path, load_bundle, sha256_file, write_manifest
from tests.onnx_fixtures import CLASSES, defense_dict, make_bundle, read_manifest, write_raw_manifest


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("template"), fused=True)


@pytest.fixture
def bdir(template, tmp_path) -> Path:
    """A fresh copy of a valid bundle that a test may modify."""
    return Path(shutil.copytree(template, tmp_path / "b"))


def _load_with(bdir: Path, mutate) -> Bundle:
    manifest = read_manifest(bdir)
    mutate(manifest)
    write_raw_manifest(bdir, manifest)
    return load_bundle(bdir)


def test_load_valid_bundle_and_roundtrip_dict(bdir):
    b = load_bundle(bdir)
    assert b.classes == CLASSES and b.num_classes == 4
    assert (b.input.height, b.input.width, b.input.mean, b.input.std) == (8, 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert [m.name for m in b.members] == ["m0", "m1", "m2"]
    assert b.member_path(b.members[0]).is_file() and b.fused_path().is_file()
    assert b.to_dict() == read_manifest(bdir)
    assert load_bundle(bdir / "manifest.json") == b  # the manifest file works as the path too


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda m: m.update(defence=m["defense"]), r"defence: unknown key.*Did you mean 'defense'"),
        (lambda m: m["defense"].update(subsamplng="420"), r"defense\.subsamplng: unknown key.*'subsampling'"),
        (lambda m: m["members"][0].update(sha="x"), r"members\[0\]\.sha: unknown key.*'sha256'"),
    ],
)
def test_unknown_key_is_refused_with_suggestion(bdir, mutate, match):
    with pytest.raises(BundleError, match=match):
        _load_with(bdir, mutate)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda m: m.pop("vote"), r"^vote: expected a required key, got nothing"),
        (lambda m: m["defense"]["codec"].pop("version"), r"^defense\.codec\.version: expected a required key"),
        (lambda m: m["members"][2].pop("quality"), r"^members\[2\]\.quality: expected a required key"),
    ],
)
def test_missing_key_names_its_path(bdir, mutate, match):
    with pytest.raises(BundleError, match=match):
        _load_with(bdir, mutate)


def test_fused_key_is_optional(bdir):
    assert _load_with(bdir, lambda m: m.pop("fused")).fused is None


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda m: m["input"].update(height="8"), r"input\.height: expected an integer, got '8' \(str\)"),
        (lambda m: m["input"].update(height=True), r"input\.height: expected an integer"),
        (lambda m: m["input"].update(mean=[0, 0]), r"input\.mean: expected 3 numbers"),
        (lambda m: m["input"].update(std=[1, 0, 1]), r"input\.std\[1\]: expected a number > 0"),
        (lambda m: m["defense"].update(per_member="no"), r"defense\.per_member: expected true or false"),
        (lambda m: m.update(classes="red"), r"classes: expected a JSON list, got str"),
        (lambda m: m.update(metrics=[]), r"metrics: expected a JSON object"),
        (lambda m: m["provenance"].update(created="yesterday"), r"provenance\.created: expected an ISO 8601"),
    ],
)
def test_wrong_type_is_refused(bdir, mutate, match):
    with pytest.raises(BundleError, match=match):
        _load_with(bdir, mutate)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda m: m["defense"].update(subsampling="411"), r"defense\.subsampling: expected one of '420', '422', '444', got '411'"),
        (lambda m: m["defense"].update(kind="jepg"), r"defense\.kind: expected one of .*got 'jepg'.*Did you mean 'jpeg'"),
        (lambda m: m.update(vote="average"), r"vote: expected one of 'majority', 'soft'"),
        (lambda m: m["input"].update(layout="NHWC"), r"input\.layout: expected one of 'NCHW'"),
        (lambda m: m["members"][1].update(vaccination="jpg"), r"members\[1\]\.vaccination"),
        (lambda m: m["defense"]["codec"].update(backend="pillow"), r"defense\.codec\.backend"),
    ],
)
def test_bad_enum_is_refused(bdir, mutate, match):
    with pytest.raises(BundleError, match=match):
        _load_with(bdir, mutate)


def _per_member_jpeg(m):
    m["defense"] = defense_dict("jpeg", [20, 40], per_member=True)
    m["members"][0].update(vaccination="jpeg", quality=20)
    m["members"][1].update(vaccination="jpeg", quality=40)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda m: m["defense"].update(kind="jpeg", qualities=[0]), r"defense\.qualities\[0\]: expected an integer in 1\.\.100, got 0"),
        (lambda m: m["defense"].update(kind="jpeg", qualities=[101]), r"defense\.qualities\[0\].*got 101"),
        (lambda m: m["defense"].update(kind="jpeg", qualities=[20, 40]), r"defense\.qualities: expected exactly one"),
        (lambda m: m["defense"].update(kind="slq", qualities=[]), r"defense\.qualities: expected the SLQ quality set"),
        (lambda m: m["defense"].update(qualities=[50]), r"defense\.qualities: expected \[\] for kind 'none'"),
        (lambda m: m["defense"].update(kind="slq", qualities=[20, 40], per_member=True), r"defense\.per_member: expected false with kind 'slq'"),
        (lambda m: m["defense"].update(in_graph=True), r"defense\.in_graph: expected false for kind 'none'"),
        (lambda m: m.update(classes=[]), r"classes: expected a non-empty list"),
        (lambda m: m.update(classes=["a", "b", "a", "c"]), r"classes: expected unique class names"),
        (lambda m: m.update(members=[]), r"members: expected a non-empty list"),
        (lambda m: m["members"][1].update(name="m0"), r"members: expected unique member names"),
        (lambda m: m["members"][0].update(vaccination="jpeg", quality=None), r"members\[0\]\.quality: expected an integer"),
        (lambda m: m["members"][0].update(quality=50), r"members\[0\]\.quality: expected null for vaccination 'none'"),
        (lambda m: (_per_member_jpeg(m), m["members"][1].update(quality=60)), r"members\[1\]\.quality: expected one of defense\.qualities \[20, 40\]"),
        (lambda m: m["members"][0].update(file="../m0.onnx"), r"members\[0\]\.file: expected a relative path"),
        (lambda m: m["members"][0].update(sha256="ABC"), r"members\[0\]\.sha256: expected 64 lowercase hex"),
        (lambda m: m.update(format_version=2), r"format_version: expected 1, got 2"),
    ],
)
def test_inconsistent_values_are_refused(bdir, mutate, match):
    with pytest.raises(BundleError, match=match):
        _load_with(bdir, mutate)


def test_valid_per_member_and_slq_defenses_load(bdir):
    b = _load_with(bdir, _per_member_jpeg)
    assert b.defense.per_member and [m.quality for m in b.members] == [20, 40, None]
    b = _load_with(bdir, lambda m: m.update(defense=defense_dict("slq", [20, 40, 60, 80])))
    assert b.defense.kind == "slq" and b.defense.qualities == (20, 40, 60, 80)


def test_missing_member_file_is_refused(bdir):
    (bdir / "m1.onnx").unlink()
    with pytest.raises(BundleError, match=r"members\[1\]\.file: expected an existing file .*m1\.onnx"):
        load_bundle(bdir)
    with pytest.raises(BundleError, match=r"members\[1\]\.file"):
        load_bundle(bdir, verify=False)  # existence is checked even without hashing


@pytest.mark.parametrize("name", ["m2.onnx", "fused.onnx"])
def test_flipped_byte_is_refused_naming_file_and_both_hashes(bdir, name):
    path = bdir / name
    expected = sha256_file(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as info:
        load_bundle(bdir)
    msg = str(info.value)
    assert name in msg and expected in msg and sha256_file(path) in msg
    assert "re-export" in msg and "re-download" in msg
    assert load_bundle(bdir, verify=False).name == "tiny"  # verify=False skips the hash check


def test_truncated_file_is_refused(bdir):
    path = bdir / "m0.onnx"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"m0\.onnx: sha256 mismatch.*\(100 bytes\)"):
        load_bundle(bdir)


def test_bad_json_and_missing_manifest(bdir, tmp_path):
    (bdir / "manifest.json").write_text('{"name": ')
    with pytest.raises(BundleError, match=r"expected valid JSON, got .* line 1"):
        load_bundle(bdir)
    with pytest.raises(BundleError, match=r"manifest\.json.*not found"):
        load_bundle(tmp_path / "nowhere")


def test_write_manifest_validates_before_writing(bdir):
    good = read_manifest(bdir)
    (bdir / "manifest.json").unlink()
    bad = copy.deepcopy(good)
    bad["defense"]["subsampling"] = "411"
    with pytest.raises(BundleError, match=r"defense\.subsampling"):
        write_manifest(bdir, bad)
    bad = copy.deepcopy(good)
    bad["members"][0]["sha256"] = "0" * 64
    with pytest.raises(BundleError, match="sha256 mismatch"):
        write_manifest(bdir, bad)
    assert not (bdir / "manifest.json").exists()
    path = write_manifest(bdir, good)
    assert path == (bdir / "manifest.json").resolve() and json.loads(path.read_text()) == good


def test_sha256_file_streams_large_files(tmp_path):
    data = bytes(range(256)) * 9000  # 2.3 MB: more than two 1 MiB chunks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_default_bundle_path_honours_env(bdir, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEGUARD_BUNDLE", str(bdir))
    assert default_bundle_path() == bdir
    monkeypatch.setenv("EDGEGUARD_BUNDLE", str(tmp_path / "missing"))
    with pytest.raises(BundleError, match=r"No bundle is shipped at .*missing.*EDGEGUARD_BUNDLE.*Pass a bundle path"):
        default_bundle_path()


def test_default_bundle_path_is_repo_export_dir(monkeypatch):
    monkeypatch.delenv("EDGEGUARD_BUNDLE", raising=False)
    shipped = Path(bundle_mod.__file__).parent / "bundles" / "gtsrb-shield-r14"  # export/ in this tree
    if (shipped / "manifest.json").is_file():
        assert default_bundle_path() == shipped
    else:
        with pytest.raises(BundleError, match=f"No bundle is shipped at {shipped}"):
            default_bundle_path()


COMMITTED = sorted((Path(bundle_mod.__file__).resolve().parent.parent / "export").glob("*/manifest.json"))


@pytest.mark.parametrize("manifest", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_bundles_verify_and_classify(manifest):
    import numpy as np

    from edge_guard import Guard

    bundle = load_bundle(manifest.parent)  # schema, and the sha256 of every graph
    guard = Guard.from_bundle(manifest.parent, threads=1, seed=0)
    images = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    preds = guard.classify(images)
    assert len(preds) == 3 and len(bundle.classes) == 43
    for p in preds:
        assert len(p.votes) == len(bundle.members) and p.class_name == bundle.classes[p.class_id]
        if bundle.vote == "majority":
            assert p.votes.count(p.class_id) == max(p.votes.count(v) for v in p.votes)
