"""`edgeguard infer` end to end on tiny bundles: images, video files, stdin MJPEG, boxes, outputs, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from edge_guard import jpeg
from edge_guard.cli import app
from edge_guard.errors import ConfigError, InputError
from edge_guard.regions import parse_roi
from edge_guard.sources import open_source
from edge_guard.sources.images import list_image_files, read_image
from edge_guard.stream import SCHEMA
from tests.onnx_fixtures import make_bundle, solid

RED, GREEN, BLUE = (220, 20, 20), (20, 220, 20), (20, 20, 220)
REPO = Path(__file__).resolve().parent.parent


def _write(path, rgb):
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture()
def bundle(tmp_path):
    return make_bundle(tmp_path / "bundle")  # three members; class = brightest channel (red, green, blue)


def _run(*args, env=None):
    return CliRunner().invoke(app, ["infer", *map(str, args), "--threads", "1"], env=env)


def _lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _classes(records):
    return [[r["class_name"] for r in rec["regions"]] for rec in records]


def test_infer_prints_one_schema_line_per_image(tmp_path, bundle):
    red = _write(tmp_path / "red.png", solid(RED))
    blue = _write(tmp_path / "blue.jpg", solid(BLUE, 24, 20))
    result = _run(red, blue, "--bundle", bundle)
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert [(r["source"], r["frame"]) for r in lines] == [(str(red), 0), (str(blue), 1)]
    assert _classes(lines) == [["red"], ["blue"]]
    manifest_sha = __import__("hashlib").sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    for r in lines:
        assert r["schema"] == SCHEMA and r["bundle"] == "tiny" and r["manifest_sha256"] == manifest_sha
        region = r["regions"][0]
        assert region["votes"] == [region["class_id"]] * 3 and region["agreement"] == 1.0 and not region["suspect"]
        assert set(r["timings_ms"]) == {"decode", "crop", "defense", "inference", "vote", "total"}
    assert lines[1]["regions"][0]["box"] == [0, 2, 20, 22]  # the centre square of a 20x24 image
    assert "2 frames, 2 regions (0 suspect)" in result.stderr and "p99" in result.stderr


def test_rois_are_clipped_or_skipped_never_the_end_of_the_run(tmp_path, bundle):
    image = np.concatenate([solid(RED, 16, 16), solid(GREEN, 16, 16)], axis=1)  # left red, right green
    path = _write(tmp_path / "two.png", image)
    result = _run(path, "--bundle", bundle, "--roi", "0,0,16,16", "--roi", "16, 0, 40, 16", "--roi", "50,0,60,10")
    assert result.exit_code == 0, result.output
    (line,) = _lines(result.stdout)
    assert [(r["box"], r["class_name"]) for r in line["regions"]] == [([0, 0, 16, 16], "red"),
                                                                      ([16, 0, 32, 16], "green")]
    assert line["skipped_boxes"] == 1 and "boxes skipped 1" in result.stderr


def test_corrupt_file_is_skipped_and_counted(tmp_path, bundle):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _write(folder / "a_red.png", solid(RED))
    (folder / "b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _write(folder / "c_green.bmp", solid(GREEN))
    (folder / "notes.txt").write_text("not an image suffix: never read")
    out = tmp_path / "preds.jsonl"
    result = _run(folder, "--bundle", bundle, "--output", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == ""
    lines = _lines(out.read_text())
    assert [(r["source"], _classes([r])[0]) for r in lines] == [
        (str(folder / "a_red.png"), ["red"]), (str(folder / "c_green.bmp"), ["green"])]
    assert f"warning: skipped {folder / 'b_broken.jpg'}" in result.stderr
    assert "2 frames" in result.stderr and "corrupt 1 {'no_header': 1}" in result.stderr


def test_video_file_every_frame_and_annotated_output(tmp_path, bundle):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (40, 30))
    for color in (RED, GREEN, BLUE, GREEN, RED):
        writer.write(np.ascontiguousarray(solid(color, 30, 40)[..., ::-1]))
    writer.release()
    annotated = tmp_path / "out.avi"
    result = _run(path, "--bundle", bundle, "--annotate", annotated)
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert _classes(lines) == [["red"], ["green"], ["blue"], ["green"], ["red"]]
    assert [r["frame"] for r in lines] == [0, 1, 2, 3, 4] and lines[1]["source_ts"] is not None
    cap = cv2.VideoCapture(str(annotated))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()


def test_boxes_file_gives_per_frame_regions(tmp_path, bundle):
    image = np.concatenate([solid(RED, 16, 16), solid(BLUE, 16, 16)], axis=1)
    paths = [_write(tmp_path / f"f{i}.png", image) for i in range(2)]
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text(json.dumps({"frame": 0, "boxes": [[16, 0, 32, 16]]}) + "\n"
                     + json.dumps({"frame": 1, "boxes": [[0, 0, 16, 16], [16, 0, 32, 16], ["x", 1, 2, 3]]}) + "\n")
    result = _run(*paths, "--bundle", bundle, "--boxes", boxes)
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert _classes(lines) == [["blue"], ["red", "blue"]] and lines[1]["skipped_boxes"] == 1
    boxes.write_text('{"frame": "zero"}\n')
    bad = _run(*paths, "--bundle", bundle, "--boxes", boxes)
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and "boxes.jsonl:1" in bad.stderr


def test_min_confidence_gives_no_sign(tmp_path, bundle):
    path = _write(tmp_path / "reddish.png", solid((130, 100, 100)))  # red, but not by much
    plain = _lines(_run(path, "--bundle", bundle).stdout)[0]["regions"][0]
    assert plain["class_name"] == "red" and plain["confidence"] < 0.99
    above = (plain["confidence"] + 1) / 2
    region = _lines(_run(path, "--bundle", bundle, "--min-confidence", above).stdout)[0]["regions"][0]
    assert region["class_id"] is None and region["class_name"] is None
    assert region["confidence"] == plain["confidence"] and region["votes"] == plain["votes"]


def test_output_problems_are_one_line_before_any_work(tmp_path, bundle):
    path = _write(tmp_path / "red.png", solid(RED))
    for out, words in ((tmp_path / "missing" / "x.jsonl", "no folder"), (tmp_path, "a folder")):
        result = _run(path, "--bundle", bundle, "--output", out)
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and words in result.stderr


def test_a_failed_run_never_wipes_the_output_and_append_adds(tmp_path, bundle):
    path = _write(tmp_path / "red.png", solid(RED))
    out = tmp_path / "results.jsonl"
    out.write_text('{"kept": true}\n')
    failed = _run(path, tmp_path / "nope.png", "--bundle", bundle, "--output", out)
    assert failed.exit_code == 2 and out.read_text() == '{"kept": true}\n'
    appended = _run(path, "--bundle", bundle, "--output", out, "--append")
    assert appended.exit_code == 0 and len(_lines(out.read_text())) == 2
    replaced = _run(path, "--bundle", bundle, "--output", out)
    assert replaced.exit_code == 0 and len(_lines(out.read_text())) == 1
    assert not list(tmp_path.glob(".results.jsonl.partial-*"))


def test_missing_path_exits_2_with_one_line(tmp_path, bundle):
    _write(tmp_path / "red.png", solid(RED))
    result = _run(tmp_path / "red.png", tmp_path / "nope.png", "--bundle", bundle)
    assert result.exit_code == 2
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nope.png" in err[0] and "not found" in err[0]
    assert result.stdout == ""  # nothing classified before the paths were checked


@pytest.mark.parametrize("roi", ["1,2,3", "a,b,c,d", "1,2,3,4,5", "5,0,2,4", "0,4,4,4", "-1,0,4,4"])
def test_bad_roi_exits_2(tmp_path, bundle, roi):
    path = _write(tmp_path / "red.png", solid(RED))
    result = _run(path, "--bundle", bundle, "--roi", roi)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --roi") and len(result.stderr.strip().splitlines()) == 1


def test_no_bundle_uses_the_default(tmp_path, bundle):
    path = _write(tmp_path / "blue.png", solid(BLUE))
    result = _run(path, env={"EDGEGUARD_BUNDLE": str(bundle)})
    assert result.exit_code == 0, result.output
    assert _classes(_lines(result.stdout)) == [["blue"]]


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEGUARD_BUNDLE": kw.pop("bundle")}
    return subprocess.Popen([sys.executable, "-m", "edge_guard.cli", "infer", *args, "--threads", "1"], cwd=REPO,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_stdin_mjpeg_with_corrupt_and_truncated_frames(bundle):
    good = [jpeg.encode(solid(c, 16, 16), 90) for c in (RED, GREEN, BLUE)]
    noisy = jpeg.encode(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8), 90)
    stream = good[0] + noisy[: len(noisy) // 2] + good[1] + b"\xff\xd8\xff\xdb junk \xff\xd9" + good[2]
    proc = _cli("-", bundle=str(bundle))
    out, err = proc.communicate(stream, timeout=120)
    assert proc.returncode == 0, err.decode()
    lines = _lines(out.decode())
    assert _classes(lines) == [["red"], ["green"], ["blue"]] and [r["source"] for r in lines] == ["-"] * 3
    assert "truncated" in err.decode() and "3 frames" in err.decode()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_stream_leaves_valid_json_lines_and_a_summary(tmp_path, bundle, sig):
    out = tmp_path / "results.jsonl"
    proc = _cli("-", "--output", str(out), bundle=str(bundle))
    frame = jpeg.encode(solid(GREEN, 16, 16), 90)
    for _ in range(20):
        proc.stdin.write(frame)
    proc.stdin.flush()
    time.sleep(3)  # the stream stays open: the process waits for more frames
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    lines = _lines(out.read_text())  # every line parses
    assert len(lines) >= 1 and all(r["regions"][0]["class_name"] == "green" for r in lines)
    assert f"stopped by {sig.name}" in err.decode() and f"wrote {len(lines)} lines" in err.decode()


def test_image_listing_order_recursion_globs_and_rgb(tmp_path):
    _write(tmp_path / "b.png", solid(BLUE))
    _write(tmp_path / "a.PNG", solid(RED))
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "c.ppm", solid(GREEN))
    assert list_image_files([tmp_path]) == [tmp_path / "a.PNG", tmp_path / "b.png"]
    assert list_image_files([tmp_path], recursive=True)[-1] == tmp_path / "sub" / "c.ppm"
    assert list_image_files([str(tmp_path / "*.png")]) == [tmp_path / "b.png"]
    frames = list(open_source(str(tmp_path)))
    assert frames[0].image.dtype == np.uint8 and tuple(frames[0].image[0, 0]) == RED  # RGB order, not BGR
    with pytest.raises(InputError, match="matches nothing"):
        list_image_files([str(tmp_path / "*.gif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="at least one image"):
        list_image_files([tmp_path / "empty"])
    (tmp_path / "x.png").write_bytes(b"")
    assert read_image(tmp_path / "x.png") is None


def test_parse_roi():
    assert parse_roi(" 1, 2 ,30,40") == (1, 2, 30, 40)
    with pytest.raises(ConfigError, match=r"x1,y1,x2,y2.*3 values"):
        parse_roi("1,2,3")


def test_http_mjpeg_stream_through_infer(bundle):
    from tests.test_sources import _MjpegServer

    server = _MjpegServer([jpeg.encode(solid(c, 16, 16), 90) for c in (RED, BLUE)], per_connection=6)
    try:
        result = _run(server.url, "--bundle", bundle, "--max-frames", "4", "--queue-size", "16")
    finally:
        server.close()
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert _classes(lines) == [["red"], ["blue"], ["red"], ["blue"]] and lines[0]["source"] == server.url
    assert "4 frames" in result.stderr
