"""Adversarial vaccination: train a member on adversarial images made against itself, through its own JPEG.

Plain vaccination teaches a member to read JPEG-compressed images; it does not teach it to ignore the
part of an adversarial perturbation that survives the compression. Adversarial vaccination replaces
a share of every training batch by images attacked with one FGSM step from a random start ("fast
adversarial training", Wong, Rice, Kolter, 'Fast is better than free: Revisiting adversarial
training', ICLR 2020 [https://arxiv.org/abs/2001.03994]) against the member itself, differentiated
through its real JPEG step with BPDA (identity backward). Labels for the attack are the member's own
predictions, not the true labels, so the perturbation carries no label information the member could
learn to read back ("label leaking", Kurakin, Goodfellow, Bengio, 'Adversarial Machine Learning at
Scale', ICLR 2017 [https://arxiv.org/abs/1611.01236]).

The attacker in the loop is the one the runtime faces: it perturbs the camera image (8-bit pixels,
before the defense) and the member then sees the JPEG of that image, as deployed.

    transform = adversarial_transform(model, AdversarialConfig(eps=8 / 255), quality=40)
    x_member = transform(x_uint8_nhwc, rng)   # what `fit` trains on (BatchTransform contract)

Cost: one extra forward (predicted labels) and one forward+backward (the attack) on `fraction` of
each batch, plus a second JPEG pass. Measured for a GTSRB q40 member at fraction 0.5 (2 epochs, end-of-run
metrics included): 1.23x the wall time of plain vaccination (benchmarks/vaccination_tradeoff.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_guard import jpeg
from edge_guard.errors import ConfigError, expected_got
from edge_guard.training.attacks.bpda import BPDAJPEG, BPDASLQ
from edge_guard.training.attacks.pgd import PGD
from edge_guard.training.augment import to_tensor, to_uint8
from edge_guard.training.transforms import BatchTransform


@dataclass(frozen=True)
class AdversarialConfig:
    """Adversarial vaccination settings. eps and the step are in [0, 1] image units (8/255 = 8 grey levels)."""

    eps: float = 8 / 255  # Linf budget of the training attack
    fraction: float = 0.5  # share of each batch replaced by adversarial images (the rest stays clean)
    step: float = 1.25  # FGSM step size as a multiple of eps (Wong et al. 2020's alpha = 1.25 eps)

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 32 / 255:
            raise ConfigError(expected_got("adversarial eps", "a budget in (0, 32/255] (CLI: 1..32 in 1/255 units)",
                                           f"{self.eps * 255:.3g}/255"))
        if not 0 < self.fraction <= 1:
            raise ConfigError(expected_got("adversarial fraction", "a share of each batch in (0, 1]", self.fraction))
        if not 0 < self.step <= 2:
            raise ConfigError(expected_got("adversarial step", "a multiple of eps in (0, 2]", self.step))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for checkpoints and manifests (eps in 1/255 units, as on the command line)."""
        return {"attack": "fgsm-random-start", "eps_255": round(self.eps * 255, 4), "fraction": self.fraction,
                "step": self.step, "labels": "predicted", "backward": "identity"}


def adversarial_transform(model: nn.Module, config: AdversarialConfig, *, quality: int | None = None,
                          slq_qualities: Sequence[int] | None = None, subsampling: str = "420",
                          backend: str = "auto") -> BatchTransform:
    """The vaccination BatchTransform with adversarial images: fn(uint8 (N, H, W, 3), rng) -> uint8 (N, H, W, 3).

    The first round(fraction * N) images of each (already shuffled and augmented) batch are attacked
    against `model` through its defense (JPEG at `quality`, or SLQ over `slq_qualities` when quality
    is None); then every image goes through the defense, as in plain vaccination. All randomness
    (random start, SLQ block choices) comes from `rng`, so runs are reproducible and resumable.
    """
    if (quality is None) == (slq_qualities is None):
        raise ConfigError(expected_got("adversarial vaccination defense", "exactly one of quality or slq_qualities",
                                       f"quality={quality}, slq_qualities={slq_qualities}"))

    def defense(rng: np.random.Generator) -> nn.Module:
        if quality is not None:
            return BPDAJPEG(quality, subsampling, backend)
        return BPDASLQ(tuple(slq_qualities or ()), subsampling, backend, rng=rng)

    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if quality is not None:
            return jpeg.roundtrip(images, quality, subsampling=subsampling, backend=backend)
        return jpeg.slq(images, tuple(slq_qualities or ()), rng=rng, subsampling=subsampling, backend=backend)

    def transform(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        k = int(round(config.fraction * len(images)))
        if k == 0:
            return apply(images, rng)
        adv = attack_images(model, images[:k], config, defense(rng), rng)
        return apply(np.concatenate([adv, images[k:]]), rng)

    return transform


def attack_images(model: nn.Module, images: np.ndarray, config: AdversarialConfig, defense: nn.Module,
                  rng: np.random.Generator) -> np.ndarray:
    """One FGSM step from a random start against `defense` -> `model`, on the model's predicted labels.

    images: uint8 (N, H, W, 3) RGB. defense: a BPDA module (float (N, 3, H, W) in [0, 1] -> same).
    Returns uint8 (N, H, W, 3): each pixel within round(eps * 255) grey levels of the input. The model's
    train/eval flags and its parameters' .grad are left as they were.
    """
    device = next(model.parameters()).device
    x = to_tensor(images).to(device)
    attacked = nn.Sequential(defense, model)
    labels = _predicted_labels(attacked, x)
    gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
    attack = PGD(attacked, eps=config.eps, alpha=min(1.0, config.step * config.eps), steps=1, random_start=True,
                 generator=gen)
    return to_uint8(attack(x, labels).cpu())


def _predicted_labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's own top-1 classes for x, in eval mode; every submodule's train/eval flag restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(x).argmax(1)
    finally:
        for module, training in modes:
            module.training = training
