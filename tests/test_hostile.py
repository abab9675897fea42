"""Hostile and careless inputs: one regression test per defect found by fuzzing and fault injection, and a
seeded fuzz corpus (mutated/truncated JPEGs, hostile manifests) that runs in seconds.

Every bad input must end as a clear EdgeGuardError (CLI: one `error:` line, exit code 2) or a counted,
skipped frame, never a traceback, a crash, NaN in the output, or a silently wrong result.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edge_guard import Guard, jpeg
from edge_guard.bundle import load_bundle
from edge_guard.cli import app
from edge_guard.errors import BundleError, ConfigError, EdgeGuardError, InputError
from edge_guard.sources.base import StreamSource
from edge_guard.sources.frame import Frame, FrameError, decode_frame, image_size
from edge_guard.sources.mjpeg import Broken, split_jpegs
from edge_guard.stream import StreamStats, run_stream
from tests.onnx_fixtures import make_bundle, read_manifest, solid, write_raw_manifest

REPO = Path(__file__).resolve().parent.parent
RED = (220, 20, 20)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("b"))


@pytest.fixture(scope="module")
def guard(bundle_dir):
    return Guard.from_bundle(bundle_dir, threads=1)


def _run(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def _jpeg_header(width: int, height: int) -> bytes:
    """A tiny JPEG whose frame header claims width x height: a decompression bomb's first bytes."""
    real = jpeg.encode(solid(RED, 8, 8), 90)
    i = real.index(b"\xff\xc0")
    return real[:i + 5] + struct.pack(">HH", height, width) + real[i + 9:]


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", 0) + b"IDAT" + struct.pack(">I", zlib.crc32(b"IDAT")))


# ----------------------------------------------------------------------------- 1. decompression bombs


@pytest.mark.parametrize("make, size", [(_jpeg_header, (60000, 60000)), (_jpeg_header, (40000, 27000)),
                                        (_png_header, (60000, 60000)), (_png_header, (20000, 20000))])
def test_decompression_bomb_is_refused_from_its_header(tmp_path, bundle_dir, make, size):
    bomb = tmp_path / ("bomb.jpg" if make is _jpeg_header else "bomb.png")
    bomb.write_bytes(make(*size))
    assert image_size(bomb.read_bytes()) == size
    ok = tmp_path / "ok.png"
    import cv2

    cv2.imwrite(str(ok), np.ascontiguousarray(solid(RED)[..., ::-1]))
    result = _run("infer", bomb, ok, "--bundle", bundle_dir, "--threads", "1")
    assert result.exit_code == 0, result.output  # the rest of the folder is still read
    assert len([line for line in result.stdout.splitlines() if line.strip()]) == 1
    assert "too_large" in result.stderr and "more than the cap" in result.stderr


def test_frame_pixel_cap_is_configurable():
    frame = Frame(0, "s", 0.0, jpeg=jpeg.encode(solid(RED, 64, 64), 90))
    with pytest.raises(FrameError) as info:
        decode_frame(frame, max_pixels=64 * 63)
    assert info.value.reason == "too_large"
    assert decode_frame(frame, max_pixels=64 * 64)[0].shape == (64, 64, 3)


# ----------------------------------------------------------------------------- 3-5. bundles that lie


def test_member_input_shape_differing_from_the_manifest_is_refused_at_load(tmp_path):
    root = make_bundle(tmp_path / "b")
    manifest = read_manifest(root)
    manifest["input"]["height"] = manifest["input"]["width"] = 9  # the graphs take 8x8
    write_raw_manifest(root, manifest)
    with pytest.raises(BundleError, match=r"input shape: expected \[N, 3, 9, 9\]"):
        Guard.from_bundle(root)


def test_deeply_nested_manifest_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b")
    manifest = read_manifest(root)
    deep: dict = {}
    node = deep
    for _ in range(500):
        node["x"] = {}
        node = node["x"]
    manifest["metrics"] = deep
    write_raw_manifest(root, manifest)
    with pytest.raises(BundleError, match="nested at most"):
        load_bundle(root)


def test_huge_manifest_is_refused_before_parsing(tmp_path):
    root = make_bundle(tmp_path / "b")
    with open(root / "manifest.json", "ab") as fh:
        fh.write(b" " * (5 << 20))
    with pytest.raises(BundleError, match="at most 4 MiB"):
        load_bundle(root)


@pytest.mark.parametrize("mutate, match", [
    (lambda m: m["input"].update(mean=[float("nan"), 0, 0]), r"input\.mean\[0\]: expected a number \(finite\)"),
    (lambda m: m["input"].update(scale=float("inf")), r"input\.scale: expected a number > 0"),
    (lambda m: m.update(classes=["red\x1b[31m", "green", "blue", "other"]), r"classes\[0\].*without control"),
    (lambda m: m.update(name="tiny\r\nerror: fake line"), r"^name: expected a non-empty string without control"),
])
def test_nan_and_control_characters_in_a_manifest_are_refused(tmp_path, mutate, match):
    root = make_bundle(tmp_path / "b")
    manifest = read_manifest(root)
    mutate(manifest)
    write_raw_manifest(root, manifest)  # json.dumps writes NaN / Infinity tokens, which json.loads reads back
    with pytest.raises(BundleError, match=match) as info:
        load_bundle(root)
    assert "\x1b" not in str(info.value) and "\r" not in str(info.value)  # echoed escaped, never raw


# ----------------------------------------------------------------------------- 6-11. the command line


def test_a_box_that_does_not_fit_never_ends_infer_nor_wipes_output(tmp_path, bundle_dir):
    import cv2

    image = tmp_path / "red.png"
    cv2.imwrite(str(image), np.ascontiguousarray(solid(RED)[..., ::-1]))
    out = tmp_path / "out.jsonl"
    out.write_text('{"old": 1}\n')
    result = _run("infer", image, "--bundle", bundle_dir, "--roi", "0,0,99,99", "--roi", "50,50,60,60",
                  "--output", out, "--append")
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == '{"old": 1}' and json.loads(lines[1])["skipped_boxes"] == 1


@pytest.mark.parametrize("target", ["missing/x.jsonl", "folder"])
def test_output_to_a_missing_folder_or_a_directory_is_one_line(tmp_path, bundle_dir, target):
    (tmp_path / "folder").mkdir()
    line = _one_error_line(_run("infer", tmp_path / "nothing.png", "--bundle", bundle_dir,
                                "--output", tmp_path / target))
    assert "--output" in line


def test_read_only_output_is_one_line(tmp_path, bundle_dir):
    import cv2

    image = tmp_path / "red.png"
    cv2.imwrite(str(image), np.ascontiguousarray(solid(RED)[..., ::-1]))
    if os.geteuid() == 0:  # root passes permission checks: /proc is a file system nobody can create files on
        target = Path("/proc/edgeguard-results.jsonl")
    else:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o500)
        target = tmp_path / "ro" / "x.jsonl"
    line = _one_error_line(_run("infer", image, "--bundle", bundle_dir, "--output", target))
    assert "--output: expected a writable location" in line


def test_bench_json_path_is_checked_before_the_benchmark_runs(tmp_path, bundle_dir):
    line = _one_error_line(_run("bench", "--bundle", bundle_dir, "--json", tmp_path / "missing" / "x.json",
                                "--frames", "100000"))
    assert "--json" in line and "no folder" in line


def test_np_matrix_input_is_converted_not_a_crash(guard):
    gray = np.asmatrix(np.full((16, 16), 200, np.uint8))
    assert len(guard.classify(gray)) == 1  # an ndarray subclass, handled as a plain array


@pytest.mark.parametrize("args", [["--seed", "-1"]])
def test_negative_seed_is_a_usage_error(bundle_dir, args):
    assert "--seed" in _one_error_line(_run("bench", "--bundle", bundle_dir, *args))
    assert "--seed" in _one_error_line(_run("infer", "x.png", "--bundle", bundle_dir, *args))


def test_infinite_box_is_an_input_error(guard):
    with pytest.raises(InputError, match="4 numbers"):
        guard.classify(solid(RED), rois=[(0, 0, float("inf"), 8)])
    assert "--roi" in _one_error_line(_run("infer", "x.png", "--roi", "0,0,inf,8"))


def test_doctor_fails_on_a_tampered_bundle_and_takes_bundle(tmp_path, bundle_dir):
    ok = _run("doctor", "--bundle", bundle_dir)
    assert ok.exit_code == 0 and "hashes verified" in ok.output
    bad = Path(shutil.copytree(bundle_dir, tmp_path / "bad"))
    (bad / "m0.onnx").write_bytes((bad / "m0.onnx").read_bytes()[:-1] + b"\x00")
    result = _run("doctor", "--bundle", bad)
    assert result.exit_code == 1 and "FAILED" in result.output and "sha256 mismatch" in result.output


def test_closed_stdout_is_an_error_not_a_false_summary(tmp_path, bundle_dir):
    import cv2

    image = tmp_path / "red.png"
    cv2.imwrite(str(image), np.ascontiguousarray(solid(RED)[..., ::-1]))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = f"{sys.executable} -m edge_guard.cli infer {image} --bundle {bundle_dir} --threads 1 >&-"
    result = subprocess.run(cmd, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "error: results: expected an open stdout, or --output FILE, got stdout closed" in result.stderr
    assert "frames" not in result.stderr  # no summary claiming results that went nowhere


# ----------------------------------------------------------------------------- 12. corrupt but decodable


def test_corrupt_but_decodable_jpeg_is_counted_not_printed_raw(guard):
    if "turbojpeg" not in jpeg.available_backends():
        pytest.skip("libturbojpeg is not installed on this machine (make setup installs it)")
    data = jpeg.encode(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8), 90)
    stats = StreamStats()
    frames = [Frame(0, "s", 0.0, jpeg=data[: len(data) * 3 // 4])]
    (result,) = run_stream(guard, StreamSource("s", lambda: iter(frames)), stats=stats, backend="turbojpeg")
    assert result.warnings and stats.warned == 1


# ----------------------------------------------------------------------------- 13. messages


def test_provider_that_runs_remotely_is_refused(bundle_dir):
    with pytest.raises(ConfigError, match="AzureExecutionProvider sends requests to a remote endpoint"):
        Guard.from_bundle(bundle_dir, providers=["azure"])


def test_training_messages_say_what_was_wrong(tmp_path):
    pytest.importorskip("torch")  # the training half: these are its messages
    from edge_guard.training.config import TrainConfig

    with pytest.raises(ConfigError, match=r"eval_qualities .*got \(0,\)"):
        TrainConfig(eval_qualities=(0,))
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    line = _one_error_line(_run("vaccinate", "--base", text))
    assert "a .pt file written by edgeguard train or vaccinate" in line
    assert "--epochs: expected an integer >= 1" in _one_error_line(_run("vaccinate", "--base", text, "--epochs", "0"))
    assert "--qualities" in _one_error_line(_run("vaccinate", "--base", text, "--qualities", ""))
    resumed = _one_error_line(_run("train", "--data", tmp_path, "--out", tmp_path / "fresh", "--resume"))
    assert "--resume: expected a run to continue" in resumed


def test_a_three_number_box_reports_what_was_given():
    assert "'10,20,30' (3 values)" in _one_error_line(_run("infer", "x.png", "--roi", "10,20,30"))


# ----------------------------------------------------------------------------- fuzz corpus (seeded, seconds)


def _mutations(seed: int, n: int) -> list[bytes]:
    """Seeded byte flips, truncations, duplicated and deleted runs of real JPEGs."""
    rng = np.random.default_rng(seed)
    base = [jpeg.encode(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), int(q))
            for h, w, q in ((16, 16, 90), (24, 40, 50), (48, 32, 20))]
    out = []
    for i in range(n):
        data = bytearray(base[i % len(base)])
        kind = i % 4
        if kind == 0:
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
                data[pos] = int(rng.integers(0, 256))
        elif kind == 1:
            data = data[: int(rng.integers(2, len(data)))]
        elif kind == 2:
            a, b = sorted(rng.integers(0, len(data), size=2))
            data = data[:b] + data[a:b] + data[b:]
        else:
            a, b = sorted(rng.integers(0, len(data), size=2))
            data = data[:a] + data[b:]
        out.append(bytes(data))
    return out


def test_fuzz_corpus_of_mutated_jpegs_is_counted_or_classified(guard):
    corpus = _mutations(seed=7, n=400)
    stats = StreamStats()
    frames = [Frame(i, "fuzz", 0.0, jpeg=d) for i, d in enumerate(corpus)]
    results = list(run_stream(guard, StreamSource("fuzz", lambda: iter(frames)), stats=stats))
    assert stats.frames + sum(stats.corrupt.values()) == len(corpus)  # every input accounted for
    for r in results:
        json.dumps(r.to_record("tiny", ""), allow_nan=False)  # valid JSON, no NaN
    # the same bytes through the stdin splitter: whole frames or Broken pieces, never an exception
    items = list(split_jpegs([b"".join(corpus)[i:i + 4096] for i in range(0, sum(map(len, corpus)), 4096)]))
    assert all(isinstance(x, (bytes, Broken)) for x in items)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: (st.lists(inner, max_size=4)
                                    | st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["name", "classes", "input", "defense", "members", "vote", "metrics", "provenance",
                            "fused", "format_version", "extra"]), value=_JSON)
def test_hostile_manifest_values_are_bundle_errors(bundle_dir, key, value):
    manifest = read_manifest(bundle_dir)
    manifest[key] = value
    from edge_guard.bundle import bundle_from_dict

    try:
        bundle_from_dict(manifest, bundle_dir)
    except EdgeGuardError as exc:
        assert isinstance(exc, BundleError) and str(exc).isprintable()


# ----------------------------------------------------------------------------- batch and region caps


def test_too_many_crops_in_one_call_is_an_input_error(guard):
    from edge_guard.guard import MAX_CROPS

    with pytest.raises(InputError, match=rf"crops per classify call: expected at most {MAX_CROPS}"):
        guard.classify([solid(RED, 4, 4)] * (MAX_CROPS + 1))


def test_a_frame_with_too_many_boxes_is_capped_and_counted(guard):
    from edge_guard.regions import Regions
    from edge_guard.stream import MAX_REGIONS

    regions = Regions("file", per_frame={0: [[0, 0, 8, 8]] * (MAX_REGIONS + 44)})
    frames = [Frame(0, "s", 0.0, image=solid(RED))]
    (result,) = run_stream(guard, StreamSource("s", lambda: iter(frames)), regions)
    assert len(result.regions) == MAX_REGIONS and result.skipped_boxes == 44


def test_bench_refuses_an_unsigned_bundle_with_a_trusted_key(tmp_path, bundle_dir):
    from edge_guard.signing import generate_keys

    keys = generate_keys(tmp_path / "k")
    line = _one_error_line(_run("bench", "--bundle", bundle_dir, "--trusted-key", keys.public, "--frames", "1"))
    assert "expected a signed bundle" in line


# ----------------------------------------------------------------------------- found in review


def test_a_bad_threshold_never_touches_an_existing_output(tmp_path, bundle_dir):
    out = tmp_path / "results.jsonl"
    out.write_text('{"kept": true}\n')
    line = _one_error_line(_run("infer", "x.png", "--bundle", bundle_dir, "--output", out, "--min-confidence", "2"))
    assert "--min-confidence" in line and out.read_text() == '{"kept": true}\n'


def test_a_stray_byte_before_a_marker_cannot_bypass_the_pixel_cap():
    data = _jpeg_header(60000, 60000)
    sneaky = data[:2] + b"\x00" + data[2:]  # libjpeg skips it; a header walk cannot read the size
    with pytest.raises(FrameError) as info:
        decode_frame(Frame(0, "s", 0.0, jpeg=sneaky), max_pixels=10**6)
    assert info.value.reason == "no_header"


def test_an_image_of_unknown_format_is_refused_before_decoding(tmp_path):
    import cv2

    from edge_guard.sources.images import read_image

    tiff = tmp_path / "really_a.tiff.png"
    assert cv2.imwrite(str(tmp_path / "x.tiff"), np.zeros((8, 8, 3), np.uint8))
    tiff.write_bytes((tmp_path / "x.tiff").read_bytes())
    with pytest.raises(FrameError) as info:
        read_image(tiff)
    assert info.value.reason == "no_header"


def test_trusted_keys_force_the_hash_check_and_come_before_parsing(tmp_path):
    from edge_guard.signing import generate_keys, sign_bundle

    keys = generate_keys(tmp_path / "k")
    root = make_bundle(tmp_path / "b")
    sign_bundle(root, keys.private)
    member = root / "m0.onnx"
    member.write_bytes(member.read_bytes()[:-1] + b"\x01")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(root, verify=False, trusted_keys=[keys.public])  # a signature is worthless without hashes
    (root / "manifest.json").write_text("[" * 100000)  # hostile and unsigned: refused before the JSON parser
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(root, trusted_keys=[keys.public])


def test_a_name_ending_in_a_newline_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b")
    manifest = read_manifest(root)
    manifest["name"] = "shield\n"
    write_raw_manifest(root, manifest)
    with pytest.raises(BundleError, match="without control characters"):
        load_bundle(root)


def test_bad_camera_fourcc_and_urls_are_one_line(bundle_dir):
    assert "--camera-fourcc" in _one_error_line(_run("infer", "0", "--bundle", bundle_dir, "--camera-fourcc", "MJPEG"))
    assert "not a valid URL" in _one_error_line(_run("infer", "http://127.0.0.1:abc/", "--bundle", bundle_dir))


def test_a_stream_that_opens_and_dies_at_once_respects_max_reconnects():
    from edge_guard.sources.base import LiveSource

    opened = []

    def opener():
        opened.append(1)
        return iter(())  # connects, then ends without a frame

    source = LiveSource("flaky", opener, max_reconnects=2, backoff=0.01)
    assert list(source) == []
    source.close()
    assert len(opened) == 3 and source.stats.reconnects == 2  # the first open and two reconnects, then it gives up


def test_an_unexpected_exception_in_a_stream_is_a_lost_stream_not_a_dead_thread():
    import http.client

    from edge_guard.sources.base import LiveSource

    calls = []

    def opener():
        calls.append(1)
        if len(calls) > 2:
            raise OSError("camera unplugged")

        def frames():
            yield Frame(len(calls), "s", 0.0, image=solid(RED))
            raise http.client.IncompleteRead(b"")  # not an OSError: it used to kill the reader thread

        return frames()

    source = LiveSource("s", opener, max_reconnects=1, backoff=0.01, queue_size=10)
    got = list(source)
    source.close()
    assert len(got) == 2 and source.stats.reconnects == 1  # reconnected after the IncompleteRead, then gave up
    assert any("IncompleteRead" in e for e in source.stats.errors) and "camera unplugged" in source.stats.errors[-1]


def test_boxes_scaled_back_never_leave_the_frame(guard):
    frame = np.zeros((100, 1001, 3), np.uint8)
    frame[:, 900:] = RED
    frames = [Frame(0, "s", 0.0, jpeg=jpeg.encode(frame, 90))]
    (result,) = run_stream(guard, StreamSource("s", lambda: iter(frames)),
                           __import__("edge_guard.regions", fromlist=["Regions"]).Regions.fixed([(937, 0, 1001, 64)]))
    assert result.decode_scale == 8 and result.regions[0].box[2] <= 1001
