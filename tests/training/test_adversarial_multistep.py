"""Multi-step adversarial vaccination: PGD-k and TRADES through the member's real JPEG step (BPDA)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from edge_guard import jpeg
from edge_guard.cli import app
from edge_guard.errors import ConfigError
from edge_guard.training.adversarial import (
    AdversarialConfig,
    adversarial_loss,
    adversarial_transform,
    attack_images,
    member_stream,
    trades_attack,
    trades_loss,
)
from edge_guard.training.attacks.bpda import BPDAJPEG
from edge_guard.training.augment import to_tensor
from edge_guard.training.checkpoint import read_checkpoint
from edge_guard.training.config import TrainConfig
from edge_guard.training.train import TrainResult, train
from edge_guard.training.vaccinate import vaccinate
from tests.training.synthetic import make_dataset

torch.set_num_threads(1)
Q = 30
EPS = 8 / 255


def tiny_model(seed: int = 0, steps: int = 60) -> nn.Module:
    """A 4-class conv net small enough to attack in milliseconds (no batch norm: train and eval agree),
    fitted for `steps` Adam steps to the synthetic shapes behind JPEG, so its gradients mean something."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 15 * 15, 4))
    data = make_dataset(n_per_class=16, seed=seed + 100)
    x, y = to_tensor(jpeg.roundtrip(data.images, Q)), torch.from_numpy(data.labels)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _jpeg_loss(model: nn.Module, images: np.ndarray, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(to_tensor(jpeg.roundtrip(images, Q))), labels))


def test_pgd_raises_the_loss_through_jpeg_and_stays_in_the_budget() -> None:
    model = tiny_model()
    images = make_dataset(n_per_class=8, seed=7).images  # 32 images, some pixels at 0 and 255
    with torch.no_grad():
        labels = model(to_tensor(jpeg.roundtrip(images, Q))).argmax(1)  # the attack's predicted labels
    losses = {}
    for steps in (1, 5):  # PGD-1 (a 2.5-eps step, clipped: FGSM from a random start) and PGD-5
        cfg = AdversarialConfig(eps=EPS, method="pgd", steps=steps)
        adv = attack_images(model, images, cfg, BPDAJPEG(Q), np.random.default_rng(0))
        assert adv.dtype == np.uint8 and adv.shape == images.shape  # uint8: inside [0, 255] by construction
        assert np.abs(adv.astype(int) - images).max() <= 8  # the Linf ball, in grey levels
        losses[steps] = _jpeg_loss(model, adv, labels)
    noise = np.random.default_rng(1).choice([-8, 8], images.shape)
    noisy = (images.astype(int) + noise).clip(0, 255).astype(np.uint8)
    clean, random = _jpeg_loss(model, images, labels), _jpeg_loss(model, noisy, labels)
    # seed 0: clean 0.35, random signs 0.36, PGD-1 1.80, PGD-5 1.78
    for loss in losses.values():
        assert loss > clean + 0.1 and loss - clean > 5 * abs(random - clean), (clean, random, losses)


def test_trades_attack_raises_the_kl_inside_the_ball_and_the_unit_range() -> None:
    model = tiny_model(1)
    x = to_tensor(make_dataset(n_per_class=4, seed=3).images)
    x[:, :, :4] = 0.0  # pixels at both ends of the range: the projection must clip them
    x[:, :, -4:] = 1.0
    adv = trades_attack(model, x, EPS, EPS / 2, 5, torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= EPS + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    noise = (x + EPS * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(2)))).clamp(0, 1)
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        kl = {name: float(F.kl_div(F.log_softmax(model(z), 1), p, reduction="batchmean"))
              for name, z in (("attack", adv), ("noise", noise))}
    assert kl["attack"] > 3 * kl["noise"], kl


def test_trades_loss_is_clean_cross_entropy_at_beta_zero_and_adds_the_kl_above() -> None:
    model = tiny_model(2)
    x = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # 8 clean rows + 4 adversarial
    y = torch.tensor([0, 1, 2, 3] * 2)
    ce = F.cross_entropy(model(x[:8]), y, label_smoothing=0.1)
    loss, logits = trades_loss(0.0, label_smoothing=0.1)(model, x, y)
    assert logits.shape == (8, 4)
    torch.testing.assert_close(loss, ce)
    loss6, _ = trades_loss(6.0, label_smoothing=0.1)(model, x, y)
    with torch.no_grad():
        kl = F.kl_div(F.log_softmax(model(x[8:]), 1), F.softmax(model(x[:4]), 1), reduction="batchmean")
    torch.testing.assert_close(loss6, ce + 6.0 * kl)
    assert float(kl) > 0
    assert adversarial_loss(AdversarialConfig(method="pgd", steps=3)) is None  # PGD trains on cross-entropy
    assert adversarial_loss(None) is None


def test_trades_transform_returns_the_clean_batch_then_its_attacked_share() -> None:
    model = tiny_model()
    images = make_dataset(n_per_class=4, seed=3).images  # 16 images
    transform = adversarial_transform(model, AdversarialConfig(method="trades", steps=2, fraction=0.25), quality=Q)
    out = transform(images, np.random.default_rng(5))
    assert out.shape == (20, 32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:16], jpeg.roundtrip(images, Q))  # every clean image, compressed
    assert all(not np.array_equal(out[16 + i], out[i]) for i in range(4))  # the attacked share, after them


def test_members_draw_their_attack_randomness_from_their_own_stream() -> None:
    model = tiny_model()
    images = make_dataset(n_per_class=4, seed=3).images
    cfg = AdversarialConfig(method="pgd", steps=2, fraction=0.5)
    out = {s: adversarial_transform(model, cfg, quality=Q, stream=s)(images, np.random.default_rng(5))
           for s in (member_stream("q40"), member_stream("q60"))}
    again = adversarial_transform(model, cfg, quality=Q, stream=member_stream("q40"))(images, np.random.default_rng(5))
    np.testing.assert_array_equal(out[member_stream("q40")], again)  # reproducible per member
    a, b = out.values()
    assert not np.array_equal(a[:8], b[:8]) and np.array_equal(a[8:], b[8:])  # only the attacked share differs
    assert member_stream("q40") != member_stream("q60")


@pytest.mark.parametrize("cfg", [AdversarialConfig(), AdversarialConfig(eps=4 / 255, fraction=1.0),
                                 AdversarialConfig(method="pgd", steps=3), AdversarialConfig(method="pgd", step=0.5),
                                 AdversarialConfig(method="trades", steps=4, beta=2.5, fraction=0.75)])
def test_config_round_trips_through_its_json_record(cfg: AdversarialConfig) -> None:
    record = json.loads(json.dumps(cfg.to_dict()))
    assert AdversarialConfig.from_dict(record) == cfg
    assert record["step"] * cfg.eps == pytest.approx(cfg.step_size)


def test_the_fgsm_record_is_unchanged_so_earlier_runs_still_resume() -> None:
    assert AdversarialConfig().to_dict() == {"attack": "fgsm-random-start", "eps_255": 8.0, "fraction": 0.5,
                                             "step": 1.25, "labels": "predicted", "backward": "identity"}
    pgd = AdversarialConfig(method="pgd", steps=4)
    assert pgd.step_size == pytest.approx(2.5 / 4 * 8 / 255) and pgd.to_dict()["steps"] == 4


@pytest.mark.parametrize("kwargs, match", [({"method": "cw"}, "method"), ({"steps": 3}, "1 with fgsm"),
                                           ({"method": "pgd", "steps": 0}, "steps"),
                                           ({"method": "trades", "beta": -1.0}, "beta"),
                                           ({"method": "pgd", "step": 2.5}, "step")])
def test_bad_settings_are_config_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AdversarialConfig(**kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("multistep") / "base"
    cfg = TrainConfig(epochs=2, batch_size=8, augment=False, num_threads=1, out_dir=str(out), eval_qualities=(),
                      slq_qualities=(20, 40))
    return train(cfg, make_dataset(n_per_class=10, seed=0), progress=False)


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_vaccinate_records_the_recipe_and_resume_checks_it(base: TrainResult, tmp_path: Path, method: str) -> None:
    data = make_dataset(n_per_class=10, seed=0)
    adv = AdversarialConfig(method=method, steps=2)
    kw = dict(dataset=data, qualities=(Q,), slq=False, epochs=1, num_threads=1, progress=False, eval_qualities=())
    run = vaccinate(base.best_checkpoint, **kw, adversarial=adv, out_dir=tmp_path / "e")
    spec = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    assert AdversarialConfig.from_dict(spec["adversarial"]) == adv
    ckpt = read_checkpoint(run.members[f"q{Q}"].best_checkpoint)
    assert ckpt["vaccination"]["adversarial"] == spec["adversarial"]
    # finished members resume as they are; another step count is another recipe: refused
    again = vaccinate(base.best_checkpoint, **kw, adversarial=adv, out_dir=tmp_path / "e", resume=True)
    assert again.metrics["members"] == run.metrics["members"]
    with pytest.raises(ConfigError, match="vaccination.adversarial"):
        vaccinate(base.best_checkpoint, **kw, adversarial=AdversarialConfig(method=method, steps=3),
                  out_dir=tmp_path / "e", resume=True)


def test_cli_builds_the_multi_step_recipe_and_rejects_a_bad_method(base: TrainResult, tmp_path: Path) -> None:
    bad = CliRunner().invoke(app, ["vaccinate", "--base", str(base.best_checkpoint), "--adversarial-eps", "8",
                                   "--adversarial", "cw", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "cw" in bad.output and "Traceback" not in bad.output
    fgsm_steps = CliRunner().invoke(app, ["vaccinate", "--base", str(base.best_checkpoint), "--adversarial-eps", "8",
                                          "--adversarial-steps", "3", "--out", str(tmp_path / "f")])
    assert fgsm_steps.exit_code == 2 and "1 with fgsm" in fgsm_steps.output
