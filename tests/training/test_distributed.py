"""Data-parallel training (edge_guard.training.distributed): the sampler, and 2 gloo ranks under torchrun.

The 2-rank run must equal one process that computes what DDP computes: each step's global batch cut in
two interleaved halves (images 0, 2, 4, ... and 1, 3, 5, ...), batch norm over each half (as each rank's
BatchNorm sees only its share), the mean of the two halves' losses (what averaging the ranks' gradients
gives). `Halves` does that in one process, so the weights must agree to float rounding. A plain
1-process run differs from both by batch norm over the whole batch; its losses are compared within
the tolerance docs/scaling.md states.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edge_guard.cli import app
from edge_guard.errors import ConfigError
from edge_guard.training import distributed
from edge_guard.training.checkpoint import make_vaccination
from edge_guard.training.config import TrainConfig
from edge_guard.training.data import split_by_track
from edge_guard.training.distributed import EpochBatches, World
from edge_guard.training.models import create_model
from edge_guard.training.predict import robustness_views
from edge_guard.training.train import channel_stats, fit, train
from tests.training.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[2]
KWARGS = {"widths": [8, 16], "dropout": 0.0}  # no dropout: rank 1 would draw other dropout masks
CONFIG = dict(epochs=3, batch_size=16, lr=2e-3, num_threads=1, augment=False, eval_qualities=(), slq_qualities=(20,),
              model_kwargs=KWARGS, device="cpu")
DATA = dict(n_per_class=30, seed=3)

# run by torchrun on 2 ranks: an interrupted run (stopped after epoch 1), then --resume to the end
RANK_SCRIPT = """
import sys
import torch.distributed as dist
from edge_guard.training import distributed
from edge_guard.training.config import TrainConfig
from edge_guard.training.train import train
from tests.training.synthetic import make_dataset

class Stop(Exception):
    pass

def stop(epoch, record):
    if epoch == 1:
        raise Stop

w = distributed.init_from_env("cpu")
config = TrainConfig(out_dir=sys.argv[1], **{config})
data = make_dataset(**{data})
try:
    train(config, data, progress=False, on_epoch_end=stop)
except Stop:
    pass
dist.barrier()  # rank 0 has written last.pt
result = train(TrainConfig(out_dir=sys.argv[1], resume=True, **{config}), data, progress=False)
if w.rank == 1:
    print("RANK1", result.metrics["val_accuracy"])
distributed.close()
"""


class Halves(nn.Module):
    """Runs `model` on each interleaved half of the batch (batch norm per half), outputs in batch order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self.model(x[0::2]), self.model(x[1::2])
        out = first.new_empty((len(x), first.shape[1]))
        out[0::2], out[1::2] = first, second
        return out


def _one_process(out: Path, halves: bool) -> dict:
    """What `train` does, in this process, optionally through Halves; returns last.pt."""
    cfg = TrainConfig(out_dir=str(out), **CONFIG)
    train_set, val_set = split_by_track(make_dataset(**DATA), cfg.val_fraction, cfg.seed)
    mean, std = channel_stats(train_set.images)
    kwargs = {"mean": mean, "std": std, **KWARGS}
    torch.manual_seed(cfg.seed)
    model = create_model("compact_cnn", train_set.num_classes, **kwargs)
    fit(Halves(model) if halves else model, train_set, val_set, cfg, model_kwargs=kwargs,
        vaccination=make_vaccination("none", None, None, {}), val_view="clean",
        views=robustness_views(val_set.images, cfg), progress=False)
    return torch.load(out / "last.pt", weights_only=True)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("ddp")
    script = root / "ranks.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT).format(config=repr(CONFIG), data=repr(DATA)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(root / "run")], env=env, cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "run", proc.stdout


def test_epoch_batches_cut_each_global_batch_into_rank_shares() -> None:
    n, batch, world = 50, 12, 3
    single = EpochBatches(n, batch, seed=5)
    ranks = [EpochBatches(n, batch, seed=5, w=World(r, world)) for r in range(world)]
    orders = []
    for epoch in (0, 1):
        for b in (single, *ranks):
            b.set_epoch(epoch)
        steps = list(single)
        shares = [list(r) for r in ranks]
        assert len(steps) == n // batch and all(len(s) == len(steps) for s in shares)
        for step, whole in enumerate(steps):
            parts = [s[step] for s in shares]
            assert [len(p) for p in parts] == [batch // world] * world
            for r, part in enumerate(parts):  # interleaved: every rank's share spans the batch
                np.testing.assert_array_equal(part, whole[r::world])
            np.testing.assert_array_equal(np.sort(np.concatenate(parts)), whole)  # disjoint, all of it
        seen = np.concatenate(steps)
        assert len(np.unique(seen)) == len(seen) == (n // batch) * batch and seen.max() < n
        orders.append(single.order.copy())
        # rank 0 keeps the single-process streams (a 1-rank run equals a plain run); rank 1 has its own
        assert ranks[0].augment_seed == single.augment_seed and ranks[1].augment_seed != single.augment_seed
        assert ranks[0].rng.integers(2**62) == single.rng.integers(2**62)
    assert not np.array_equal(orders[0], orders[1])  # set_epoch reshuffles
    again = EpochBatches(n, batch, seed=5)
    again.set_epoch(1)
    np.testing.assert_array_equal(again.order, orders[1])  # deterministic per (seed, epoch)


def test_two_gloo_ranks_equal_one_process_with_per_rank_batch_norm(ddp_run, tmp_path: Path) -> None:
    run, _ = ddp_run
    ddp = torch.load(run / "last.pt", weights_only=True)
    ref = _one_process(tmp_path / "halves", halves=True)
    assert ddp["epoch"] == 3 and [h["epoch"] for h in ddp["history"]] == [1, 2, 3]
    for key, value in ref["model"].items():
        key = key.removeprefix("model.")
        if "running_" in key or "num_batches" in key:  # DDP keeps rank 0's statistics, Halves both halves'
            continue
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # the logged losses are over both ranks' images
    np.testing.assert_allclose([h["train_loss"] for h in ddp["history"]],
                               [h["train_loss"] for h in ref["history"]], rtol=1e-4)


def test_ddp_run_is_written_once_resumes_and_matches_a_plain_run(ddp_run, tmp_path: Path) -> None:
    run, stdout = ddp_run
    log = (run / "train.log").read_text()
    assert log.count("epoch 1/3 ") == 1 and log.count("epoch 3/3 ") == 1 and "resumed from" in log
    cfg = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert cfg["resolved"]["world_size"] == 2 and cfg["batch_size"] == 16
    assert f"RANK1 {metrics['val_accuracy']}" in stdout  # rank 1 returns rank 0's metrics
    plain = _one_process(tmp_path / "plain", halves=False)
    assert cfg["resolved"]["train_images"] == plain["run_config"]["resolved"]["train_images"]  # same split
    losses = [h["train_loss"] for h in torch.load(run / "last.pt", weights_only=True)["history"]]
    np.testing.assert_allclose(losses, [h["train_loss"] for h in plain["history"]], rtol=0.05)


def test_batch_must_split_over_ranks_and_distributed_needs_torchrun(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="multiple of the 4 ranks"):
        distributed.check_batch(30, World(0, 4))
    distributed.check_batch(32, World(1, 4))
    for name in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        distributed.init_from_env("cpu")
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--distributed"])
    assert result.exit_code == 2 and "started by torchrun" in result.output
    assert len(result.output.strip().splitlines()) == 1
    bad = subprocess.run([sys.executable, "-m", "edge_guard.training", "evaluate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "train, vaccinate" in bad.stderr


def test_vaccinate_fan_out_trains_each_member_on_one_rank_as_one_process(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_guard.training.vaccinate import vaccinate
    from tests.training.synthetic import write_gtsrb

    monkeypatch.setenv("EDGEGUARD_CACHE_DIR", str(tmp_path / "cache"))
    write_gtsrb(tmp_path / "g", n_classes=3, tracks=4, per_track=5)
    base = train(TrainConfig(data=str(tmp_path / "g"), out_dir=str(tmp_path / "base"),
                             **{**CONFIG, "epochs": 1}), progress=False)
    args = ["--base", str(base.best_checkpoint), "--qualities", "40,80", "--epochs", "1", "--threads", "1",
            "--eval-qualities", "none", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "edge_guard.training", "vaccinate", *args, "--fan-out", "--out",
                           str(tmp_path / "fan")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("ensemble majority vote") == 1  # rank 0 prints the summary
    ref = vaccinate(base.best_checkpoint, qualities=(40, 80), epochs=1, num_threads=1, eval_qualities=(),
                    device="cpu", out_dir=tmp_path / "ref", progress=False)
    fan = json.loads((tmp_path / "fan" / "metrics.json").read_text())
    assert fan == ref.metrics  # the members and their votes are the single process's
    for name in ("q40", "q80", "slq"):  # rank 0 trained q40 and slq, rank 1 q80, each alone
        a = torch.load(tmp_path / "fan" / name / "best.pt", weights_only=True)["model"]
        b = torch.load(ref.members[name].best_checkpoint, weights_only=True)["model"]
        for key in a:
            torch.testing.assert_close(a[key], b[key], msg=f"{name} {key}")
        assert (tmp_path / "fan" / name / "train.log").read_text().count("epoch 1/1 ") == 1
    assert [m["name"] for m in json.loads((tmp_path / "fan" / "ensemble.json").read_text())["members"]] == [
        "q40", "q80", "slq"]
    assert list(distributed.shares(["q40", "q80", "slq"])) == ["q40", "q80", "slq"]  # not distributed: all here
    no_group = CliRunner().invoke(app, ["vaccinate", *args, "--fan-out", "--out", str(tmp_path / "x")])
    assert no_group.exit_code == 2 and "--distributed" in no_group.output
