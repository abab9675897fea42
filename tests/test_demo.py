"""`edgeguard demo`: a rendered clip with known signs, read through the infer path and scored."""

from __future__ import annotations

import json
import re

import cv2
from typer.testing import CliRunner

from edge_guard.cli import app
from edge_guard.demo import SIGNS, render_clip


def test_rendered_clip_and_boxes_agree(tmp_path):
    video, boxes, truth = render_clip(tmp_path, frames=10, seed=1)
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    cap.release()
    lines = [json.loads(line) for line in boxes.read_text().splitlines()]
    assert [rec["frame"] for rec in lines] == list(range(10))
    assert [len(rec["boxes"]) for rec in lines] == [len(placed) for placed in truth]
    assert all(p.class_id in SIGNS for placed in truth for p in placed)


def test_demo_reads_the_clip_through_infer_and_scores_it(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--frames", "12"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    (tmp_path / "again").mkdir()
    _, _, truth = render_clip(tmp_path / "again", frames=12, seed=0)  # the same seeded scene
    drawn = sum(len(p) for p in truth)
    right = sum(region["class_id"] == sign.class_id
                for rec in records for region, sign in zip(rec["regions"], truth[rec["frame"]]))
    assert len(records) == 12 and f"rendered 12 frames with {drawn} signs; read {right} of them right" in result.output
    assert (tmp_path / "annotated.avi").is_file() and "latency per frame" in result.output
    # the attack half: crafted live (torch is installed for the tests), flips the undefended model
    assert "crafted live on this clip's crops" in result.output and (tmp_path / "attack.png").is_file()
    clean, attacked = map(int, re.search(r"undefended \(gtsrb-undefended\)\s+(\d+) / \d+\s+(\d+) / ",
                                         result.output).groups())
    assert attacked < clean


def test_no_attack_skips_the_second_half(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--frames", "4", "--no-attack"])
    assert result.exit_code == 0, result.output
    assert "rendered 4 frames" in result.output and "attack:" not in result.output
    assert not (tmp_path / "attack.png").exists()


def test_an_out_folder_that_cannot_be_made_is_one_line_and_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(app, ["demo", "--out", str(blocker / "demo"), "--frames", "2"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 and "--out" in result.output and "a-file" in result.output


def test_ctrl_c_during_the_read_stops_the_demo_with_one_line_and_exit_130(tmp_path, monkeypatch):
    import edge_guard.demo as demo
    from edge_guard.infer import InferSummary
    from edge_guard.stream import StreamStats

    def interrupted_infer(options):  # what run_infer returns when SIGINT arrives mid-clip
        return InferSummary("b", "CPUExecutionProvider", StreamStats(), {}, None, 0, interrupted="SIGINT")

    monkeypatch.setattr(demo, "run_infer", interrupted_infer)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--frames", "4"])
    assert result.exit_code == 130
    assert result.output.strip().startswith("interrupted:") and "Traceback" not in result.output
    assert not (tmp_path / "attack.png").exists()  # the attack half did not run on a half-read clip
