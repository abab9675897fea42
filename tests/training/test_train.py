from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edge_guard.cli import app
from edge_guard.errors import ConfigError
from edge_guard.training.augment import AugmentConfig, augment_batch, to_tensor, to_uint8
from edge_guard.training.checkpoint import load_checkpoint, make_vaccination
from edge_guard.training.config import TrainConfig
from edge_guard.training.data import split_by_track
from edge_guard.training.device import resolve_device
from edge_guard.training.models import create_model
from edge_guard.training.predict import accuracy, robustness_views
from edge_guard.training.train import TrainResult, fit, train, warm_start
from edge_guard.training.transforms import jpeg_augment_transform, make_batch
from tests.training.synthetic import make_dataset, write_gtsrb

torch.set_num_threads(1)


def config(out: Path, **kw) -> TrainConfig:
    base = dict(epochs=6, batch_size=8, lr=3e-3, num_threads=1, out_dir=str(out), eval_qualities=(10, 50, 90),
                slq_qualities=(20, 60), model_kwargs={"widths": [16, 32, 64]})
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("run") / "base"
    return train(config(out), make_dataset(n_per_class=40, seed=0), progress=False)


def test_run_folder_and_metrics(run: TrainResult) -> None:
    for name in ("best.pt", "last.pt", "config.json", "metrics.json", "train.log"):
        assert (run.out_dir / name).is_file(), name
    metrics = json.loads((run.out_dir / "metrics.json").read_text())
    assert set(metrics["jpeg"]) == {"10", "50", "90"} and 0 <= metrics["slq"] <= 1
    assert metrics["val_preprocessing"] == "clean" and metrics["val_accuracy"] == metrics["clean"]
    assert metrics["train_images"] + metrics["val_images"] == 160
    cfg = json.loads((run.out_dir / "config.json").read_text())
    assert cfg["epochs"] == 6 and cfg["resolved"]["num_classes"] == 4 and len(cfg["model_kwargs"]["mean"]) == 3
    assert cfg["device"] == "auto" and cfg["resolved"]["device"] == str(resolve_device("auto"))
    assert "epoch 6/6" in (run.out_dir / "train.log").read_text()


def test_loss_goes_down_and_model_learns(run: TrainResult) -> None:
    losses = [h["train_loss"] for h in run.metrics["history"]]
    assert losses[-1] < 0.8 * losses[0], losses
    assert run.metrics["clean"] > 0.7  # 4 classes: chance is 0.25


def test_best_checkpoint_follows_the_contract(run: TrainResult) -> None:
    model, ckpt = load_checkpoint(run.best_checkpoint)
    assert ckpt["model_name"] == "compact_cnn" and ckpt["classes"] == ["circle", "square", "triangle", "cross"]
    assert ckpt["input_size"] == [32, 32] and ckpt["optimizer"] is None
    assert ckpt["vaccination"]["kind"] == "none" and ckpt["vaccination"]["subsampling"] == "420"
    assert ckpt["vaccination"]["backend"] in ("turbojpeg", "opencv") and ckpt["vaccination"]["codec_version"]
    assert ckpt["epoch"] == run.metrics["best_epoch"] and ckpt["metrics"]["clean"] == run.metrics["clean"]
    _, val = split_by_track(make_dataset(n_per_class=40, seed=0), 0.2, 0)
    assert accuracy(model, val.images, val.labels) == pytest.approx(run.metrics["clean"], abs=1e-4)


def test_resume_continues_from_the_saved_epoch(run: TrainResult, tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def stop_after_two(epoch: int, record: dict) -> None:
        if epoch == 2:
            raise Stop

    data = make_dataset(n_per_class=40, seed=0)
    with pytest.raises(Stop):
        train(config(tmp_path / "r"), data, progress=False, on_epoch_end=stop_after_two)
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["epoch"] == 2
    with pytest.raises(ConfigError, match="--resume"):
        train(config(tmp_path / "r"), data, progress=False)
    with pytest.raises(ConfigError, match="epochs: 6 -> 7"):
        train(config(tmp_path / "r", epochs=7, resume=True), data, progress=False)
    with pytest.raises(ConfigError, match=r"jpeg_augment: \[\] -> \[50\]"):
        train(config(tmp_path / "r", jpeg_augment=(50,), resume=True), data, progress=False)
    epochs_run = []
    resumed = train(config(tmp_path / "r", resume=True), data, progress=False,
                    on_epoch_end=lambda e, r: epochs_run.append(e))
    assert epochs_run == [3, 4, 5, 6] and "resumed from" in (tmp_path / "r" / "train.log").read_text()
    assert [h["epoch"] for h in resumed.metrics["history"]] == [1, 2, 3, 4, 5, 6]
    # per-epoch seeding: the resumed run ends with the same weights as the uninterrupted one
    a = torch.load(run.last_checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_val_every_validates_every_nth_and_the_last_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_guard.training.train as train_module

    calls = []
    real = train_module.predict_logits
    monkeypatch.setattr(train_module, "predict_logits", lambda model, images, **kw: calls.append(1) or real(
        model, images, **kw))
    result = train(config(tmp_path / "r", epochs=5, val_every=2), make_dataset(n_per_class=20, seed=1),
                   progress=False)
    measured = {h["epoch"]: h["val_accuracy"] for h in result.metrics["history"]}
    assert [e for e, acc in measured.items() if acc is not None] == [2, 4, 5]
    best = max((acc, -e) for e, acc in measured.items() if acc is not None)
    assert result.metrics["best_epoch"] == -best[1] and result.metrics["val_accuracy"] == best[0]
    assert torch.load(result.best_checkpoint, weights_only=True)["epoch"] == -best[1]
    assert "epoch 3/5" in (tmp_path / "r" / "train.log").read_text() and "not measured" in (
        tmp_path / "r" / "train.log").read_text()
    # 3 validations, then clean (the val view: the best epoch's logits are reused), slq and 3 JPEG qualities
    assert len(calls) == 3 + 4


def test_config_is_validated() -> None:
    for bad in ({"epochs": 0}, {"val_every": 0}, {"optimizer": "adam"}, {"val_fraction": 1.5},
                {"scale_range": (1.2, 0.9)}, {"eval_qualities": (0,)}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().epochs = 3  # type: ignore[misc]


def test_device_is_validated_and_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("gpu", "cuda:x", "CPU", ""):
        with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
            TrainConfig(device=bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device.*--device cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="CUDA device 2.*2 CUDA device"):
        resolve_device("cuda:2")


def test_augmentation_is_seeded_in_range_and_never_flips() -> None:
    x = to_tensor(make_dataset(n_per_class=2).images)
    a = augment_batch(x, torch.Generator().manual_seed(1))
    b = augment_batch(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, x)
    # with every range at zero the warp is the identity: no hidden flip or shift
    still = AugmentConfig(rotate_deg=0, scale=(1, 1), translate_px=0, brightness=0, contrast=0)
    torch.testing.assert_close(augment_batch(x, torch.Generator().manual_seed(1), still), x, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(to_uint8(x), make_dataset(n_per_class=2).images)


def test_make_batch_applies_the_transform_after_augmentation() -> None:
    images = make_dataset(n_per_class=2).images
    seen = []

    def transform(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        seen.append(batch.copy())
        return np.full_like(batch, 255)

    cfg = TrainConfig()
    out = make_batch(images, cfg, cfg.augmentation(), torch.Generator().manual_seed(0), transform,
                     np.random.default_rng(0))
    assert seen[0].dtype == np.uint8 and seen[0].shape == images.shape
    assert not np.array_equal(seen[0], images)  # augmented before the transform
    assert out.shape == (8, 3, 32, 32) and torch.all(out == 1.0)


def test_cli_train_on_tiny_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEGUARD_CACHE_DIR", str(tmp_path / "cache"))
    write_gtsrb(tmp_path / "g", n_classes=3, tracks=3, per_track=4)
    out = tmp_path / "runs" / "base"
    args = ["train", "--data", str(tmp_path / "g"), "--epochs", "1", "--batch-size", "8", "--out", str(out),
            "--eval-qualities", "none", "--threads", "1", "--jpeg-augment", "50,90", "--limit", "30"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_config = json.loads((out / "config.json").read_text())
    assert run_config["jpeg_augment"] == [50, 90] and run_config["eval_qualities"] == []
    assert json.loads((out / "metrics.json").read_text())["jpeg"] == {}
    assert "% clean, SLQ " in result.output  # no JPEG column when none was measured
    assert "val accuracy" in result.output and str(out / "best.pt") in result.output
    assert "kept 30 of 36" in result.output
    assert (out / "best.pt").is_file() and (tmp_path / "cache").is_dir()
    again = CliRunner().invoke(app, args)  # an existing run without --resume: one clear line, exit 2
    assert again.exit_code == 2 and "--resume" in again.output
    bad = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "existing directory" in bad.output
    typo = CliRunner().invoke(app, args[:-2] + ["--jpeg-augment", "50;90", "--out", str(tmp_path / "runs" / "t")])
    assert typo.exit_code == 2 and "--jpeg-augment" in typo.output and "comma-separated" in typo.output
    gpu = CliRunner().invoke(app, args[:-6] + ["--device", "gpu", "--out", str(tmp_path / "runs" / "gpu")])
    assert gpu.exit_code == 2 and "auto, cpu, cuda or cuda:N" in gpu.output


def test_warm_start_then_fit_equals_one_uninterrupted_fit(tmp_path: Path) -> None:
    data = make_dataset(n_per_class=20, seed=1)
    train_set, val_set = split_by_track(data, 0.2, 0)
    cfg = config(tmp_path / "full", epochs=3, eval_qualities=(), schedule="cosine")
    views = robustness_views(val_set.images, cfg)
    step = jpeg_augment_transform((30, 70), 0.5)  # a transform that uses the epoch's rng
    torch.manual_seed(0)
    model = create_model("compact_cnn", 4, widths=[16, 32, 64])
    kw = dict(model_kwargs={"widths": [16, 32, 64]}, vaccination=make_vaccination("none", None, None, {}),
              val_view="clean", views=views, train_transform=step, progress=False)
    full = fit(copy.deepcopy(model), train_set, val_set, cfg, **kw)
    start = warm_start(model, train_set, cfg, 1, step, progress=False)
    epochs_run: list[int] = []
    rest = fit(copy.deepcopy(model), train_set, val_set, dataclasses.replace(cfg, out_dir=str(tmp_path / "rest")),
               on_epoch_end=lambda e, r: epochs_run.append(e), start=start, **kw)
    # a second member from the same start must not see the first one's updates
    again = fit(copy.deepcopy(model), train_set, val_set, dataclasses.replace(cfg, out_dir=str(tmp_path / "again")),
                start=start, **kw)
    assert epochs_run == [2, 3] and [h["epoch"] for h in rest.metrics["history"]] == [2, 3]
    a = torch.load(full.last_checkpoint, weights_only=True)["model"]
    for other in (rest, again):
        b = torch.load(other.last_checkpoint, weights_only=True)["model"]
        for key in a:
            torch.testing.assert_close(a[key], b[key], msg=key)
    with pytest.raises(ConfigError, match="fewer than --epochs"):
        warm_start(model, train_set, cfg, 3)
