"""edge_guard.bench and `edgeguard bench` on tiny bundles (few iterations: shapes of the report, not speed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_guard.bench import BenchConfig, run_bench, stage_stats
from edge_guard.cli import app
from edge_guard.errors import ConfigError
from edge_guard.guard import STAGES
from tests.onnx_fixtures import defense_dict, make_bundle

CONFIG = BenchConfig(batches=(1, 4), iterations=6, warmup=1, size=16, threads=1)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    members = [{"name": "q20", "vaccination": "jpeg", "quality": 20},
               {"name": "q80", "vaccination": "jpeg", "quality": 80},
               {"name": "slq", "vaccination": "slq", "quality": None}]
    return {"fused": make_bundle(root / "fused", members, defense=defense_dict("jpeg", [20, 80], per_member=True),
                                 fused=True),
            "plain": make_bundle(root / "plain")}


def _check_stats(result, batch):
    stages = result["stages"]
    assert set(stages) == set(STAGES)
    for s in STAGES:
        assert 0 <= stages[s]["p50"] <= stages[s]["p90"]
        assert stages[s]["mean"] > 0
    # total >= inference call by call, so also for every percentile and the mean
    for k in ("p50", "p90", "mean"):
        assert stages["total"][k] >= stages["inference"][k]
        assert stages["total"][k] >= stages["defense"][k]
    assert result["images_per_s"] == pytest.approx(1000 * batch / stages["total"]["mean"])


def test_bench_measures_fused_and_members_at_every_batch(bundles):
    report = run_bench(bundles["fused"], CONFIG, progress=False)
    assert report.variants == ("fused", "members")
    assert report.providers[0] == "CPUExecutionProvider" and report.members == 3
    for variant in ("fused", "members"):
        assert list(report.results[variant]) == ["1", "4"]
        for b in ("1", "4"):
            _check_stats(report.results[variant][b], int(b))
            share = report.ratios["defense_share"][variant][b]
            assert 0 < share < 1  # JPEG at q20 and q80 plus SLQ costs something, never more than the whole call
    for b in ("1", "4"):
        fused, members = (report.results[v][b]["stages"]["total"]["p50"] for v in ("fused", "members"))
        assert report.ratios["fused_over_members"][b] == pytest.approx(fused / members)
    json.dumps(report.to_dict())  # JSON-ready


def test_bench_without_fused_graph_measures_members_only(bundles):
    report = run_bench(bundles["plain"], BenchConfig(batches=(2,), iterations=3, warmup=0, size=8), progress=False)
    assert report.variants == ("members",) and "fused_over_members" not in report.ratios
    _check_stats(report.results["members"]["2"], 2)
    assert report.defense["kind"] == "none"


def test_bench_compares_a_second_bundle_interleaved(bundles):
    report = run_bench(bundles["fused"], CONFIG, compare=bundles["plain"], progress=False)
    alone = run_bench(bundles["plain"], CONFIG, progress=False)
    assert report.variants == ("fused", "members", "compare")
    assert report.compare["path"] == str(bundles["plain"]) and report.compare["against"] == "fused"
    assert report.compare["members"] == alone.members and alone.compare is None
    for b in ("1", "4"):
        _check_stats(report.results["compare"][b], int(b))
        ours, theirs = (report.results[v][b]["stages"]["total"]["p50"] for v in ("fused", "compare"))
        assert report.ratios["compare_over_bundle"][b] == pytest.approx(theirs / ours)


def test_stage_stats_percentiles():
    timings = [{s: float(v) for s in STAGES} for v in range(1, 11)]
    stats = stage_stats(timings)
    assert stats["total"] == pytest.approx({"p50": 5.5, "p90": 9.1, "p99": 9.91, "mean": 5.5})


@pytest.mark.parametrize("config", [BenchConfig(iterations=0), BenchConfig(batches=()), BenchConfig(batches=(0,)),
                                    BenchConfig(size=0), BenchConfig(warmup=-1)])
def test_bench_rejects_bad_config(bundles, config):
    with pytest.raises(ConfigError):
        run_bench(bundles["plain"], config, progress=False)


def test_bench_cli_prints_table_and_writes_json(bundles, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--bundle", str(bundles["fused"]), "--batch", "1,2", "--iterations",
                                      "3", "--warmup", "0", "--size", "16", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "fused" in result.stdout and "members" in result.stdout and "fused/members total" in result.stdout
    report = json.loads(out.read_text())
    assert list(report["results"]["fused"]) == ["1", "2"] and report["config"]["iterations"] == 3
    assert np.isfinite(report["ratios"]["fused_over_members"]["2"])
    versus = CliRunner().invoke(app, ["bench", "--bundle", str(bundles["fused"]), "--compare", str(bundles["plain"]),
                                      "--batch", "2", "--iterations", "2", "--warmup", "0", "--size", "16"])
    assert versus.exit_code == 0, versus.output
    words = " ".join(versus.stdout.split())  # rich wraps long lines
    assert "compare" in words and "compare (tiny, 3 members) / tiny fused: total p50" in words


@pytest.mark.parametrize("args", [["--batch", "1,x"], ["--iterations", "0"], ["--providers", "cpux"]])
def test_bench_cli_bad_options_exit_2(bundles, args):
    result = CliRunner().invoke(app, ["bench", "--bundle", str(bundles["plain"]), *args])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
