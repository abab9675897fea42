"""edge_guard.bench and `edgeguard bench` on tiny bundles and small rendered frames (shapes and bookkeeping of
the report, never speed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_guard.bench import STAGES, BenchConfig, parse_synthetic, parse_variant, percentiles, run_bench
from edge_guard.bench.frames import layout_boxes
from edge_guard.cli import app
from edge_guard.errors import ConfigError
from edge_guard.scenes import encode_frame, render_scene
from tests.onnx_fixtures import defense_dict, make_bundle

CONFIG = BenchConfig(frames=4, warmup=1, rois=3, synthetic=(160, 96), distinct=2, threads=1)
SMALL = ["--synthetic", "160x96", "--rois", "2", "--distinct", "1", "--warmup", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    members = [{"name": "q20", "vaccination": "jpeg", "quality": 20},
               {"name": "q80", "vaccination": "jpeg", "quality": 80},
               {"name": "slq", "vaccination": "slq", "quality": None}]
    return {"fused": make_bundle(root / "fused", members, defense=defense_dict("jpeg", [20, 80], per_member=True),
                                 fused=True),
            "plain": make_bundle(root / "plain")}


def _check(result, crops):
    stages = result["stages"]
    assert set(stages) == set(STAGES)
    for s in STAGES:
        st = stages[s]
        assert 0 <= st["p50"] <= st["p90"] <= st["p99"] <= st["max"] and st["mean"] >= 0
    for k in ("p50", "mean", "max"):  # total is timed around every other stage, frame by frame
        assert stages["total"][k] >= max(stages[s][k] for s in STAGES[:-1])
    assert stages["decode"]["mean"] > 0 and stages["inference"]["mean"] > 0
    assert result["frames_per_s"] == pytest.approx(1000 / stages["total"]["mean"])
    assert result["crops_per_s"] == pytest.approx(crops * result["frames_per_s"])
    assert result["cpu_use"] > 0 and result["providers"][0] == "CPUExecutionProvider"


def test_bench_times_the_frame_path_of_fused_and_per_member_sessions(bundles):
    report = run_bench(bundles["fused"], CONFIG, progress=False)
    assert report.variants == ("fused", "members")
    assert report.frames["crops_per_frame"] == 3 and report.frames["jpeg"] and report.frames["size"] == [160, 96]
    for name in report.variants:
        _check(report.results[name], 3)
    assert list(report.results["fused"]["sessions"]) == ["fused"]
    assert list(report.results["members"]["sessions"]) == ["q20", "q80", "slq"]  # one onnxruntime call per member
    sessions = sum(v["mean"] for v in report.results["members"]["sessions"].values())
    assert sessions <= report.results["members"]["stages"]["inference"]["mean"]  # the sessions are inside inference
    fused, members = (report.results[v]["stages"]["total"]["p50"] for v in report.variants)
    assert report.ratios["members"]["over_first"] == pytest.approx(members / fused)
    assert report.ratios["fused"]["over_full_decode"] == pytest.approx(fused / report.reference["decode_full"]["p50"])
    assert report.reference["decode_floor"]["mean"] > 0 and report.peak_rss_mb > 10
    assert report.limits["matmul_gflops"] > 0 and report.limits["fused"]["macs_per_crop"] > 0
    assert report.limits["members"]["macs_per_crop"] == report.limits["fused"]["macs_per_crop"]
    json.dumps(report.to_dict())


def test_compare_variants_run_on_the_same_frames(bundles):
    config = BenchConfig(frames=2, warmup=0, rois=2, synthetic=(128, 64), distinct=1,
                         compare=("threads=2", str(bundles["plain"])))
    report = run_bench(bundles["fused"], config, progress=False)
    assert report.variants == ("fused", "threads=2", "plain")
    assert report.results["plain"]["bundle"] == "tiny" and report.results["plain"]["members"] == 3
    assert report.results["plain"]["defense"]["kind"] == "none"
    assert report.results["plain"]["stages"]["defense"]["max"] < report.results["fused"]["stages"]["total"]["max"]


def test_parse_variant_and_synthetic():
    assert parse_variant("members").use_fused is False and parse_variant("fused").use_fused is True
    assert parse_variant("threads=3").threads == 3 and parse_variant("provider=cuda").providers == ("cuda",)
    assert parse_variant("precision=int8").precision == "int8" and parse_variant("spin").spin is True
    assert parse_variant("bundle=x/y").bundle == "x/y"
    assert parse_synthetic("1280x720") == (1280, 720)
    for bad in ("threads=x", "precision=fp8", "no/such/bundle"):
        with pytest.raises(ConfigError, match="--compare"):
            parse_variant(bad)
    with pytest.raises(ConfigError, match="--synthetic"):
        parse_synthetic("1280*720")


def test_rendered_scenes_have_signs_in_their_boxes():
    scene = render_scene(320, 180, rng=1, signs=3)
    assert scene.image.shape == (180, 320, 3) and len(scene.boxes) == len(scene.classes) == 3
    x1, y1, x2, y2 = scene.boxes[0]
    inside, sky = scene.image[y1:y2, x1:x2].astype(float), scene.image[:5, :5].astype(float)
    assert inside.std() > sky.std()  # a sign, not the flat sky
    assert encode_frame(scene.image)[:2] == b"\xff\xd8"
    boxes = layout_boxes(1920, 1080, 4, 32)
    assert len(boxes) == 4 and all(x2 - x1 == 129 and y2 - y1 == 129 for x1, y1, x2, y2 in boxes)


def test_percentiles():
    stats = percentiles([float(v) for v in range(1, 11)])
    assert stats == pytest.approx({"p50": 5.5, "p90": 9.1, "p99": 9.91, "max": 10.0, "mean": 5.5})


@pytest.mark.parametrize("config", [BenchConfig(frames=0), BenchConfig(rois=0), BenchConfig(warmup=-1),
                                    BenchConfig(synthetic=(8, 8)), BenchConfig(distinct=0)])
def test_bench_rejects_bad_config(bundles, config):
    with pytest.raises(ConfigError):
        run_bench(bundles["plain"], config, progress=False)


def test_bench_cli_prints_table_and_writes_json(bundles, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--bundle", str(bundles["fused"]), "--frames", "3", *SMALL,
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    words = " ".join(result.stdout.split())  # rich wraps long lines
    assert "fused" in words and "members" in words and "x a bare full decode" in words and "peak memory" in words
    report = json.loads(out.read_text())
    assert report["variants"] == ["fused", "members"] and report["config"]["frames"] == 3
    assert np.isfinite(report["ratios"]["members"]["over_first"])
    assert report["machine"]["cores"] >= 1 and report["results"]["fused"]["stages"]["total"]["p99"] > 0


def test_bench_cli_reads_frames_from_a_source(bundles, tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "a.jpg"), render_scene(200, 120, rng=2).image[..., ::-1].copy())
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["bench", "--bundle", str(bundles["plain"]), "--source", str(tmp_path / "a.jpg"),
                                      "--frames", "2", "--warmup", "0", "--rois", "2", "--threads", "1", "--json",
                                      str(out)])
    assert result.exit_code == 0, result.output
    frames = json.loads(out.read_text())["frames"]
    assert frames["origin"] == str(tmp_path / "a.jpg") and frames["size"] == [200, 120] and frames["distinct"] == 1
    assert frames["crops_per_frame"] == 2


@pytest.mark.parametrize("args", [["--frames", "0"], ["--providers", "cpux"], ["--synthetic", "big"],
                                  ["--compare", "threads=many"]])
def test_bench_cli_bad_options_exit_2(bundles, args):
    result = CliRunner().invoke(app, ["bench", "--bundle", str(bundles["plain"]), *args])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")


def test_spin_off_reaches_the_sessions(bundles):
    from edge_guard import Guard

    off = Guard.from_bundle(bundles["plain"], threads=2, spin=False).engine._sessions[0].get_session_options()
    assert off.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    on = Guard.from_bundle(bundles["plain"], threads=2).engine._sessions[0].get_session_options()
    with pytest.raises(RuntimeError):  # not set: onnxruntime's default (spin)
        on.get_session_config_entry("session.intra_op.allow_spinning")


def test_bench_profile_sets_regions_and_frame_size(bundles, tmp_path):
    profile = tmp_path / "board.toml"
    profile.write_text(f'name = "board"\nbundle = "{bundles["plain"]}"\nthreads = 1\nbatch = 3\n'
                       'latency_budget_ms = 100000.0\n[camera]\nwidth = 192\nheight = 96\n')
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["bench", "--profile", str(profile), "--frames", "2", "--warmup", "0",
                                      "--distinct", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "latency budget: p99 per frame" in result.output and "PASS" in result.output
    frames = json.loads(out.read_text())["frames"]
    assert frames["size"] == [192, 96] and frames["crops_per_frame"] == 3
