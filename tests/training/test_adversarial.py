from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from edge_guard import jpeg
from edge_guard.cli import app
from edge_guard.errors import ConfigError
from edge_guard.training.adversarial import AdversarialConfig, adversarial_transform, attack_images
from edge_guard.training.attacks.bpda import BPDAJPEG
from edge_guard.training.attacks.fgsm import FGSM
from edge_guard.training.augment import to_tensor, to_uint8
from edge_guard.training.checkpoint import load_checkpoint
from edge_guard.training.config import TrainConfig
from edge_guard.training.train import TrainResult, train
from edge_guard.training.vaccinate import vaccinate
from tests.training.synthetic import make_dataset

torch.set_num_threads(1)
Q = 30
EPS = 8 / 255


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("adv") / "base"
    cfg = TrainConfig(epochs=6, batch_size=8, lr=3e-3, augment=False, num_threads=1, out_dir=str(out),
                      eval_qualities=(Q,), slq_qualities=(20, 40))
    return train(cfg, make_dataset(n_per_class=40, seed=0), progress=False)


def _loss(model: torch.nn.Module, images: np.ndarray, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(to_tensor(jpeg.roundtrip(images, Q))), labels))


def test_attack_images_stay_in_budget_and_raise_the_loss_more_than_noise(base: TrainResult) -> None:
    model, _ = load_checkpoint(base.best_checkpoint)
    model.train()  # the training loop calls the transform in train mode
    images = make_dataset(n_per_class=16, seed=7).images
    adv = attack_images(model, images, AdversarialConfig(eps=EPS), BPDAJPEG(Q), np.random.default_rng(0))
    assert adv.dtype == np.uint8 and adv.shape == images.shape
    assert np.abs(adv.astype(int) - images).max() <= 8
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    labels = model(to_tensor(jpeg.roundtrip(images, Q))).argmax(1)  # the attack uses predicted labels
    noise = np.random.default_rng(1).choice([-8, 8], images.shape)
    noisy = (images.astype(int) + noise).clip(0, 255).astype(np.uint8)
    clean, random, attacked = (_loss(model, x, labels) for x in (images, noisy, adv))
    # seed 0: clean 0.52, random signs 0.53, attack 0.68
    assert attacked > clean + 0.1 and attacked - clean > 5 * abs(random - clean), (clean, random, attacked)


def test_transform_attacks_a_share_of_the_batch_then_applies_the_defense(base: TrainResult) -> None:
    model, _ = load_checkpoint(base.best_checkpoint)
    images = make_dataset(n_per_class=4, seed=3).images  # 16 images
    transform = adversarial_transform(model, AdversarialConfig(eps=EPS, fraction=0.25), quality=Q)
    out = transform(images, np.random.default_rng(5))
    assert out.shape == images.shape and out.dtype == np.uint8
    plain = jpeg.roundtrip(images, Q)
    np.testing.assert_array_equal(out[4:], plain[4:])  # the clean share: exactly plain vaccination
    assert all(not np.array_equal(out[i], plain[i]) for i in range(4))  # the attacked share
    np.testing.assert_array_equal(out, transform(images, np.random.default_rng(5)))  # seeded: reproducible
    assert not np.array_equal(out[:4], transform(images, np.random.default_rng(6))[:4])
    slq = adversarial_transform(model, AdversarialConfig(eps=EPS, fraction=0.25), slq_qualities=(20, 40))
    assert slq(images, np.random.default_rng(5)).shape == images.shape


def test_adversarial_vaccination_resists_fgsm_through_its_jpeg_better(base: TrainResult, tmp_path: Path) -> None:
    data = make_dataset(n_per_class=40, seed=0)
    runs = {name: vaccinate(base.best_checkpoint, dataset=data, qualities=(Q,), slq=False, epochs=6, lr=3e-3,
                            adversarial=adv, num_threads=1, out_dir=tmp_path / name, progress=False)
            for name, adv in (("plain", None), ("adv", AdversarialConfig(eps=EPS, fraction=1.0)))}
    # adaptive: FGSM against each member through its real JPEG step (BPDA), on held-out images
    test = make_dataset(n_per_class=60, seed=42)
    x, y = to_tensor(test.images), torch.from_numpy(test.labels)
    success = {}
    for name, run in runs.items():
        member, ckpt = load_checkpoint(run.members[f"q{Q}"].best_checkpoint)
        defended = torch.nn.Sequential(BPDAJPEG(Q), member)
        adv = to_uint8(FGSM(defended, eps=EPS)(x, y))
        with torch.no_grad():
            ok = member(to_tensor(jpeg.roundtrip(test.images, Q))).argmax(1) == y
            fooled = member(to_tensor(jpeg.roundtrip(adv, Q))).argmax(1) != y
        success[name] = float((ok & fooled).sum() / ok.sum())
    assert success["adv"] < success["plain"] - 0.08, success  # seed 0: 0.20 vs 0.33
    spec = json.loads((tmp_path / "adv" / "ensemble.json").read_text())
    assert spec["adversarial"] == AdversarialConfig(eps=EPS, fraction=1.0).to_dict()
    assert spec["adversarial"]["eps_255"] == 8
    assert ckpt["vaccination"]["adversarial"] == spec["adversarial"]
    assert json.loads((tmp_path / "plain" / "ensemble.json").read_text())["adversarial"] is None
    # resuming the adversarial run as a plain one would mix two recipes in one member: refused
    with pytest.raises(ConfigError, match="vaccination.adversarial"):
        vaccinate(base.best_checkpoint, dataset=data, qualities=(Q,), slq=False, epochs=6, lr=3e-3, num_threads=1,
                  out_dir=tmp_path / "adv", resume=True, progress=False)


@pytest.mark.parametrize("kwargs, match", [({"eps": 0.0}, "eps"), ({"eps": 40 / 255}, "eps"),
                                           ({"fraction": 0.0}, "fraction"), ({"fraction": 1.5}, "fraction"),
                                           ({"step": 3.0}, "step")])
def test_bad_settings_are_config_errors(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AdversarialConfig(**kwargs)


def test_transform_needs_exactly_one_defense(base: TrainResult) -> None:
    model, _ = load_checkpoint(base.best_checkpoint)
    with pytest.raises(ConfigError, match="exactly one"):
        adversarial_transform(model, AdversarialConfig(), quality=None)
    with pytest.raises(ConfigError, match="exactly one"):
        adversarial_transform(model, AdversarialConfig(), quality=20, slq_qualities=(20, 40))


def test_cli_rejects_an_out_of_range_budget(base: TrainResult, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["vaccinate", "--base", str(base.best_checkpoint), "--adversarial-eps", "64",
                                      "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "adversarial eps" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "e").exists()
