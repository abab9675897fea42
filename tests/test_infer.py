"""`edgeguard infer` and its library (edge_guard.frames, edge_guard.infer) on tiny bundles and images."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from edge_guard.cli import app
from edge_guard.errors import ConfigError, InputError
from edge_guard.frames import iter_images, parse_roi, read_image
from tests.onnx_fixtures import make_bundle, solid

RED, GREEN, BLUE = (220, 20, 20), (20, 220, 20), (20, 20, 220)


def _write(path, rgb):
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture()
def bundle(tmp_path):
    return make_bundle(tmp_path / "bundle")  # three members; class = brightest channel (red, green, blue)


def _run(*args, env=None):
    return CliRunner().invoke(app, ["infer", *map(str, args)], env=env)


def _lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_infer_prints_one_line_per_image_with_the_right_class(tmp_path, bundle):
    red = _write(tmp_path / "red.png", solid(RED))
    blue = _write(tmp_path / "blue.jpg", solid(BLUE, 24, 20))
    result = _run(red, blue, "--bundle", bundle, "--threads", "1")
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert [(r["frame"], r["roi"], r["class_name"], r["class_id"]) for r in lines] == [
        (str(red), None, "red", 0), (str(blue), None, "blue", 2)]
    for r in lines:
        assert r["votes"] == [r["class_id"]] * 3 and 0.25 < r["confidence"] <= 1.0
        assert set(r["timings_ms"]) == {"preprocess", "defense", "inference", "vote", "total"}
    assert "2 images, 2 predictions, 0 skipped" in result.stderr


def test_infer_rois_give_one_line_per_box(tmp_path, bundle):
    image = np.concatenate([solid(RED, 16, 16), solid(GREEN, 16, 16)], axis=1)  # left red, right green
    path = _write(tmp_path / "two.png", image)
    result = _run(path, "--bundle", bundle, "--roi", "0,0,16,16", "--roi", "16, 0, 32, 16")
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert [(r["roi"], r["class_name"]) for r in lines] == [([0, 0, 16, 16], "red"), ([16, 0, 32, 16], "green")]
    assert "1 images, 2 predictions" in result.stderr


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
    assert [(r["frame"], r["class_name"]) for r in lines] == [
        (str(folder / "a_red.png"), "red"), (str(folder / "c_green.bmp"), "green")]
    assert f"warning: skipped {folder / 'b_broken.jpg'}" in result.stderr
    assert "2 images, 2 predictions, 1 skipped" in result.stderr


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


def test_roi_outside_the_image_exits_2(tmp_path, bundle):
    path = _write(tmp_path / "red.png", solid(RED))  # 16x16
    result = _run(path, "--bundle", bundle, "--roi", "0,0,17,8")
    assert result.exit_code == 2 and "inside the 16x16 image" in result.stderr


def test_no_bundle_uses_the_default(tmp_path, bundle):
    path = _write(tmp_path / "blue.png", solid(BLUE))
    result = _run(path, env={"EDGEGUARD_BUNDLE": str(bundle)})
    assert result.exit_code == 0, result.output
    assert _lines(result.stdout)[0]["class_name"] == "blue"


def test_iter_images_order_recursion_and_rgb(tmp_path):
    _write(tmp_path / "b.png", solid(BLUE))
    _write(tmp_path / "a.PNG", solid(RED))
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "c.ppm", solid(GREEN))
    flat = list(iter_images([tmp_path]))
    assert [fid for fid, _ in flat] == [str(tmp_path / "a.PNG"), str(tmp_path / "b.png")]
    assert flat[0][1].dtype == np.uint8 and flat[0][1].shape == (16, 16, 3)
    assert tuple(flat[0][1][0, 0]) == RED  # RGB order, not BGR
    deep = [fid for fid, _ in iter_images([tmp_path], recursive=True)]
    assert deep == [str(tmp_path / "a.PNG"), str(tmp_path / "b.png"), str(tmp_path / "sub" / "c.ppm")]


def test_iter_images_errors_and_skips(tmp_path):
    with pytest.raises(InputError, match="not found"):
        iter_images([tmp_path / "missing"])  # raised at the call, not at the first next()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="at least one image"):
        iter_images([tmp_path / "empty"])
    (tmp_path / "x.png").write_bytes(b"")
    skipped = []
    assert list(iter_images([tmp_path / "x.png"], on_skip=lambda f, r: skipped.append(f))) == []
    assert skipped == [str(tmp_path / "x.png")] and read_image(tmp_path / "x.png") is None


def test_parse_roi():
    assert parse_roi(" 1, 2 ,30,40") == (1, 2, 30, 40)
    with pytest.raises(ConfigError, match="x1,y1,x2,y2"):
        parse_roi("1,2,3")
