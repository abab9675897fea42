"""edgeguard evaluate --ray: the cells as tasks on a local Ray of 2 CPUs give the single-process report.

Uses test_evaluate's tiny ensemble (`world`) and settings (SMALL, fewer attacks and qualities): FGSM and
DeepFool jobs are crafted in image shards, PGD and the jobs on SLQ systems in one task each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from edge_guard.cli import app
from edge_guard.training import evaluate as ev
from edge_guard.training import ray_eval
from edge_guard.training.evaluate import EvalConfig, evaluate
from edge_guard.training.report import table
from edge_guard.training.run import Run
from tests.training.test_evaluate import SMALL, Spy, world  # noqa: F401  (world: the shared fixture)

CONFIG = EvalConfig(**{**SMALL, "attacks": ("fgsm", "pgd", "deepfool"), "eps": (8,), "qualities": (30,)})
TIMINGS = ("attack_seconds", "eval_seconds")
REPO = Path(__file__).resolve().parents[2]


def _cells(results: dict) -> list[dict]:
    return [{k: v for k, v in c.items() if k not in TIMINGS} for c in results["cells"]]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def single(world, tmp_path_factory):  # noqa: F811
    return evaluate(world["ens"], tmp_path_factory.mktemp("single") / "report", CONFIG, progress=False)


def test_ray_report_equals_the_single_process_report(world, single, local_ray, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "ray"
    result = evaluate(world["ens"], out, CONFIG, progress=False, ray="local")
    run = Run.open(world["ens"])
    systems = ev.system_list(run, CONFIG)
    jobs = ev.plan_jobs(CONFIG, systems, ev.adaptive_systems(systems, CONFIG, run))
    kinds = {(j.threat, ray_eval.shardable(j, run)) for j in jobs}  # both kinds of task, both threats
    assert kinds == {("graybox", True), ("graybox", False), ("adaptive", True), ("adaptive", False)}
    assert _cells(result.results) == _cells(single.results) and len(result.results["cells"]) >= 30
    for threat in ("graybox", "adaptive"):
        assert table(result.results, threat) == table(single.results, threat)
    assert result.results["target"] == single.results["target"]
    # every cell went through the store --resume reads, once
    keys = [json.loads(line)["key"] for line in (out / "cells.jsonl").read_text().splitlines()]
    assert sorted(keys) == sorted(c["key"] for c in single.results["cells"])


def test_ray_resumes_a_stopped_run_and_computes_only_the_missing_cells(world, single, local_ray, tmp_path,  # noqa: F811
                                                                       monkeypatch) -> None:
    out = tmp_path / "stopped"
    Spy(monkeypatch, fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        evaluate(world["ens"], out, CONFIG, progress=False)
    monkeypatch.undo()
    before = {json.loads(line)["key"] for line in (out / "cells.jsonl").read_text().splitlines()}
    assert 0 < len(before) < len(single.results["cells"])
    args = ["evaluate", "--models", str(world["ens"]), "--out", str(out), "--resume", "--ray", "local",
            "--attacks", "fgsm,pgd,deepfool", "--eps", "8", "--qualities", "30", "--limit", "24",
            "--adaptive-attacks", "fgsm,pgd", "--eot-samples", "2", "--pgd-steps", "3", "--cw-steps", "20",
            "--cw-search-steps", "3", "--batch-size", "16",
            "--threads", "1"]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    lines = [json.loads(line)["key"] for line in (out / "cells.jsonl").read_text().splitlines()]
    assert len(lines) == len(set(lines)) == len(single.results["cells"])  # the finished ones were not redone
    resumed = json.loads((out / "results.json").read_text())
    assert _cells(resumed) == _cells(single.results)


def test_evaluate_without_ray_never_imports_ray(world, tmp_path) -> None:  # noqa: F811
    script = (
        "import sys\n"
        "from edge_guard.training.evaluate import EvalConfig, evaluate\n"
        f"evaluate({str(world['ens'])!r}, {str(tmp_path / 'plain')!r}, EvalConfig(attacks=('fgsm',), eps=(8,), "
        "qualities=(50,), limit=8, adaptive=False, batch_size=8, threads=1), progress=False)\n"
        "print('ray' in sys.modules, 'edge_guard.training.ray_eval' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEGUARD_CACHE_DIR": str(world["root"] / "cache")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False False"
    assert (tmp_path / "plain" / "report.md").is_file()


def test_bad_ray_options_are_one_clear_error(world, tmp_path) -> None:  # noqa: F811
    bad = CliRunner().invoke(app, ["evaluate", "--models", str(world["ens"]), "--out", str(tmp_path / "x"),
                                   "--ray", "local", "--ray-cpus", "0", "--attacks", "fgsm", "--eps", "8",
                                   "--limit", "8", "--no-adaptive", "--threads", "1"])
    assert bad.exit_code == 2 and "--ray-cpus" in bad.output and len(bad.output.strip().splitlines()) == 1

