"""Progressive resizing (TrainConfig.low_res, `train --low-res`): early epochs on downscaled images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edge_guard.cli import app
from edge_guard.errors import ConfigError
from edge_guard.training.checkpoint import make_vaccination
from edge_guard.training.config import TrainConfig
from edge_guard.training.data import split_by_track
from edge_guard.training.models import create_model
from edge_guard.training.predict import robustness_views
from edge_guard.training.train import fit, train
from edge_guard.training.transforms import make_batch
from edge_guard.training.vaccinate import vaccinate
from tests.training.synthetic import make_dataset, write_gtsrb

torch.set_num_threads(1)
GAP = {"widths": [16, 32, 64], "head": "gap"}  # global pooling: any input size


def config(out: Path, **kw) -> TrainConfig:
    base = dict(epochs=4, batch_size=8, lr=3e-3, num_threads=1, out_dir=str(out), eval_qualities=(),
                slq_qualities=(20, 60), model_kwargs=GAP, low_res=((16, 1), (24, 1)))
    return TrainConfig(**{**base, **kw})


def test_side_at_follows_the_stages_and_bad_stages_are_refused() -> None:
    cfg = TrainConfig(epochs=8, low_res=((16, 3), (24, 2)))
    assert [cfg.side_at(e) for e in range(8)] == [16, 16, 16, 24, 24, 32, 32, 32]
    assert [TrainConfig(epochs=2).side_at(e) for e in range(2)] == [32, 32]
    for bad in (((32, 1),), ((7, 1),), ((16, 0),), ((16, 4),), ((16, 2), (24, 2)), ((16,),), (16, 2)):
        with pytest.raises(ConfigError, match="low_res"):
            TrainConfig(epochs=4, low_res=bad)


def test_make_batch_downscales_to_the_side_with_antialiasing() -> None:
    images = make_dataset(n_per_class=2).images
    cfg = TrainConfig()
    full = make_batch(images, cfg, None, torch.Generator().manual_seed(0), None, np.random.default_rng(0))
    small = make_batch(images, cfg, None, torch.Generator().manual_seed(0), None, np.random.default_rng(0), 16)
    assert full.shape == (8, 3, 32, 32) and small.shape == (8, 3, 16, 16)
    torch.testing.assert_close(small.mean((2, 3)), full.mean((2, 3)), atol=2e-3, rtol=0)  # each image keeps its mean
    # a 1-px checkerboard is detail no 24-px image can hold: antialiasing blurs it to grey (0.42..0.58),
    # plain bilinear sampling would alias it into a coarser pattern (0.28..0.72)
    board = np.repeat((np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)[None, :, :, None], 3, 3)
    grey = make_batch(board, cfg, None, torch.Generator(), None, np.random.default_rng(0), 24)
    assert grey.shape == (1, 3, 24, 24) and float((grey - 0.5).abs().max()) < 0.1


def test_low_res_epochs_train_small_and_only_full_size_epochs_are_validated(tmp_path: Path) -> None:
    data = make_dataset(n_per_class=20, seed=1)
    train_set, val_set = split_by_track(data, 0.2, 0)
    cfg = config(tmp_path / "r")
    model = create_model("compact_cnn", 4, **GAP)
    sides: list[set[int]] = [set()]
    model.register_forward_pre_hook(lambda m, args: sides[-1].add(args[0].shape[-1]) if m.training else None)
    result = fit(model, train_set, val_set, cfg, model_kwargs=GAP, val_view="clean",
                 vaccination=make_vaccination("none", None, None, {"backend": "turbojpeg", "version": "x"}, "420"),
                 views=robustness_views(val_set.images, cfg), progress=False,
                 on_epoch_end=lambda epoch, record: sides.append(set()))
    assert sides[:4] == [{16}, {24}, {32}, {32}]
    measured = [h["val_accuracy"] is not None for h in result.metrics["history"]]
    assert measured == [False, False, True, True] and result.metrics["best_epoch"] in (3, 4)
    log = (tmp_path / "r" / "train.log").read_text()
    assert "epoch 1/4 (16 px)" in log and "epoch 2/4 (24 px)" in log and "epoch 3/4 loss" in log
    assert "low-res epochs first: 1 at 16 px, 1 at 24 px" in log


def test_a_model_that_takes_one_size_only_is_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="16x16 images, got compact_cnn.*global pooling"):
        train(config(tmp_path / "r", model_kwargs={"widths": [16, 32, 64]}), make_dataset(n_per_class=10),
              progress=False)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_members_vaccinated_from_a_low_res_base_train_at_full_size(tmp_path: Path) -> None:
    data = make_dataset(n_per_class=10, seed=2)
    base = train(config(tmp_path / "base", epochs=3, low_res=((16, 2),)), data, progress=False)
    assert json.loads((tmp_path / "base" / "config.json").read_text())["low_res"] == [[16, 2]]
    result = vaccinate(base.best_checkpoint, dataset=data, qualities=(50,), slq=False, epochs=1, num_threads=1,
                       out_dir=tmp_path / "ens", progress=False)
    assert json.loads((tmp_path / "ens" / "q50" / "config.json").read_text())["low_res"] == []
    assert " px)" not in (tmp_path / "ens" / "q50" / "train.log").read_text()
    assert result.members["q50"].metrics["history"][0]["val_accuracy"] is not None


def test_cli_train_low_res(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEGUARD_CACHE_DIR", str(tmp_path / "cache"))
    write_gtsrb(tmp_path / "g", n_classes=3, tracks=3, per_track=4)
    args = ["train", "--data", str(tmp_path / "g"), "--epochs", "2", "--batch-size", "8", "--eval-qualities",
            "none", "--threads", "1", "--model", "resnet14"]
    ok = CliRunner().invoke(app, args + ["--low-res", "16:1", "--out", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["low_res"] == [[16, 1]]
    typo = CliRunner().invoke(app, args + ["--low-res", "16-1", "--out", str(tmp_path / "typo")])
    assert typo.exit_code == 2 and "SIDE:EPOCHS" in typo.output and "'16-1'" in typo.output
    flat = CliRunner().invoke(app, args[:-2] + ["--low-res", "16:1", "--out", str(tmp_path / "flat")])
    assert flat.exit_code == 2 and "global pooling" in flat.output
