"""Adversarial vaccination: train a member on adversarial images made against itself, through its own JPEG.

Plain vaccination teaches a member to read JPEG-compressed images; it does not teach it to ignore the
part of an adversarial perturbation that survives the compression. Adversarial vaccination replaces
a share of every training batch by images attacked against the member itself, differentiated through
its real JPEG step with BPDA (identity backward). Three attacks (`AdversarialConfig.method`):

  fgsm    one FGSM step from a random start ("fast adversarial training", Wong, Rice, Kolter, 'Fast is
          better than free: Revisiting adversarial training', ICLR 2020 [https://arxiv.org/abs/2001.03994]).
  pgd     k PGD steps from a random start (Madry et al., 'Towards Deep Learning Models Resistant to
          Adversarial Attacks', ICLR 2018 [https://arxiv.org/abs/1706.06083]); the member trains on
          cross-entropy as in plain vaccination.
  trades  k steps that maximise KL(member(clean) || member(x')) from a small random start, and the
          TRADES loss CE(clean) + beta * KL(clean || adversarial) (Zhang et al., 'Theoretically Principled
          Trade-off between Robustness and Accuracy', ICML 2019 [https://arxiv.org/abs/1901.08573]):
          beta trades clean accuracy for robustness.

FGSM and PGD label the attack with the member's own predictions, not the true labels, so the
perturbation carries no label information the member could learn to read back ("label leaking",
Kurakin, Goodfellow, Bengio, 'Adversarial Machine Learning at Scale', ICLR 2017
[https://arxiv.org/abs/1611.01236]); TRADES needs no labels. PGD and TRADES draw each member's attack
randomness from its own stream (`stream`, vaccinate passes one per member name), so members trained
on the same shuffled batches still meet different perturbations: one more source of diversity beside
their JPEG qualities, so a perturbation that fools one member transfers less to the next.

The attacker in the loop is the one the runtime faces: it perturbs the camera image (8-bit pixels,
before the defense) and the member then sees the JPEG of that image, as deployed.

    transform = adversarial_transform(model, AdversarialConfig(eps=8 / 255), quality=40)
    x_member = transform(x_uint8_nhwc, rng)   # what `fit` trains on (BatchTransform contract)
    loss = adversarial_loss(config)           # None (cross-entropy) unless method == "trades"

Cost per step, on `fraction` of each batch: FGSM one forward (predicted labels) and one forward+backward
plus a second JPEG pass, 1.23x the wall time of plain vaccination for a GTSRB q40 member at fraction 0.5
(benchmarks/vaccination_tradeoff.py); PGD-k and TRADES-k k forward+backward passes and k JPEG passes,
and TRADES trains on the clean and the adversarial images together (1 + fraction times the images).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edge_guard import jpeg
from edge_guard.errors import ConfigError, expected_got
from edge_guard.training.attacks.bpda import BPDAJPEG, BPDASLQ
from edge_guard.training.attacks.pgd import PGD
from edge_guard.training.augment import to_tensor, to_uint8
from edge_guard.training.choices import AdversarialMethod
from edge_guard.training.transforms import BatchLoss, BatchTransform

METHODS = AdversarialMethod.values()
_RECORD_NAMES = {"fgsm": "fgsm-random-start", "pgd": "pgd", "trades": "trades"}  # to_dict's "attack"
TRADES_START = 0.001  # std of TRADES' Gaussian start, [0, 1] units (Zhang et al.'s 0.001)


@dataclass(frozen=True)
class AdversarialConfig:
    """Adversarial vaccination settings. eps is in [0, 1] image units (8/255 = 8 grey levels), the step a
    multiple of eps (None: the method's default, 1.25 for FGSM as in Wong et al. 2020, 2.5 / steps for
    PGD and TRADES as in Madry et al. 2018)."""

    eps: float = 8 / 255  # Linf budget of the training attack
    fraction: float = 0.5  # share of each batch replaced by adversarial images (the rest stays clean)
    step: float | None = None  # step size as a multiple of eps
    method: str = "fgsm"  # "fgsm" | "pgd" | "trades"
    steps: int = 1  # attack iterations (1 for fgsm)
    beta: float = 6.0  # TRADES: weight of the KL term (0: cross-entropy on the clean images only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", str(self.method))  # a CLI enum member records as its plain value
        if self.method not in METHODS:
            raise ConfigError(expected_got("adversarial method", " | ".join(METHODS), repr(self.method)))
        if not 0 < self.eps <= 32 / 255:
            raise ConfigError(expected_got("adversarial eps", "a budget in (0, 32/255] (CLI: 1..32 in 1/255 units)",
                                           f"{self.eps * 255:.3g}/255"))
        if not 0 < self.fraction <= 1:
            raise ConfigError(expected_got("adversarial fraction", "a share of each batch in (0, 1]", self.fraction))
        if self.step is not None and not 0 < self.step <= 2:
            raise ConfigError(expected_got("adversarial step", "a multiple of eps in (0, 2]", self.step))
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 50:
            raise ConfigError(expected_got("adversarial steps", "an integer in 1..50", repr(self.steps)))
        if self.method == "fgsm" and self.steps != 1:
            raise ConfigError(expected_got("adversarial steps", "1 with fgsm", self.steps,
                                           "use --adversarial pgd for a multi-step attack."))
        if not 0 <= self.beta <= 100:
            raise ConfigError(expected_got("TRADES beta", "a weight in [0, 100]", self.beta))

        if self.step is None:  # resolved once, so the record and equality see the step actually used
            object.__setattr__(self, "step", 1.25 if self.method == "fgsm" else 2.5 / self.steps)

    @property
    def step_size(self) -> float:
        """The step in [0, 1] units (capped at 1)."""
        return min(1.0, float(self.step or 0) * self.eps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for checkpoints and manifests (eps in 1/255 units, as on the command line).
        FGSM's record is the one runs made before PGD and TRADES existed, so they still --resume."""
        record: dict[str, Any] = {"attack": _RECORD_NAMES[self.method], "eps_255": round(self.eps * 255, 4),
                                  "fraction": self.fraction, "step": self.step}
        if self.method != "fgsm":
            record["steps"] = self.steps
        if self.method == "trades":
            record["beta"] = self.beta
        record.update(labels="none (KL to the clean prediction)" if self.method == "trades" else "predicted",
                      backward="identity")
        if self.method != "fgsm":
            record["streams"] = "per member"
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> AdversarialConfig:
        """The config back from `to_dict`'s record (ensemble.json, a checkpoint's vaccination entry)."""
        methods = {name: method for method, name in _RECORD_NAMES.items()}
        if record.get("attack") not in methods:
            raise ConfigError(expected_got("adversarial record's attack", list(methods), record.get("attack")))
        method = methods[record["attack"]]
        return cls(eps=float(record["eps_255"]) / 255, fraction=float(record["fraction"]),
                   step=float(record["step"]), method=method, steps=int(record.get("steps", 1)),
                   beta=float(record.get("beta", cls.beta)))


def adversarial_transform(model: nn.Module, config: AdversarialConfig, *, quality: int | None = None,
                          slq_qualities: Sequence[int] | None = None, subsampling: str = "420",
                          backend: str = "auto", stream: int = 0) -> BatchTransform:
    """The vaccination BatchTransform with adversarial images: fn(uint8 (N, H, W, 3), rng) -> uint8 rows.

    The first k = round(fraction * N) images of each (already shuffled and augmented) batch are attacked
    against `model` through its defense (JPEG at `quality`, or SLQ over `slq_qualities` when quality
    is None); then every image goes through the defense, as in plain vaccination. FGSM and PGD return
    N rows (the attacked share replaced); TRADES returns N + k rows: the N clean images, then the k
    attacked ones, which `adversarial_loss` splits again. All randomness (random start, SLQ block
    choices) comes from `rng` (for PGD and TRADES mixed with `stream`), so runs are reproducible and resumable.
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
        attack_rng = rng if config.method == "fgsm" else np.random.default_rng([int(rng.integers(2**62)), stream])
        adv = attack_images(model, images[:k], config, defense(attack_rng), attack_rng)
        if config.method == "trades":
            return apply(np.concatenate([images, adv]), rng)
        return apply(np.concatenate([adv, images[k:]]), rng)

    return transform


def member_stream(name: str) -> int:
    """A member's attack-randomness stream, stable across runs: the CRC-32 of its name ("q40", "slq")."""
    return zlib.crc32(name.encode())


def attack_images(model: nn.Module, images: np.ndarray, config: AdversarialConfig, defense: nn.Module,
                  rng: np.random.Generator) -> np.ndarray:
    """config's attack against `defense` -> `model`: FGSM or PGD on the model's predicted labels, or TRADES' KL.

    images: uint8 (N, H, W, 3) RGB. defense: a BPDA module (float (N, 3, H, W) in [0, 1] -> same).
    Returns uint8 (N, H, W, 3): each pixel within round(eps * 255) grey levels of the input. The model's
    train/eval flags and its parameters' .grad are left as they were.
    """
    device = next(model.parameters()).device
    x = to_tensor(images).to(device)
    attacked = nn.Sequential(defense, model)
    gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
    with eval_mode(attacked):
        if config.method == "trades":
            return to_uint8(trades_attack(attacked, x, config.eps, config.step_size, config.steps, gen).cpu())
        with torch.no_grad():
            labels = attacked(x).argmax(1)
    attack = PGD(attacked, eps=config.eps, alpha=config.step_size, steps=config.steps, random_start=True,
                 generator=gen)
    return to_uint8(attack(x, labels).cpu())


def trades_attack(model: nn.Module, x: Tensor, eps: float, alpha: float, steps: int,
                  generator: torch.Generator | None = None) -> Tensor:
    """TRADES' inner maximisation: `steps` signed-gradient steps of size alpha on KL(model(x) || model(x')),
    from x' = x + N(0, TRADES_START^2), projected onto the Linf eps ball and [0, 1].

    x: float32 (N, 3, H, W) in [0, 1]; returns the same, detached. Runs in the model's current mode."""
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    noise = torch.randn(x.shape, generator=generator, device=x.device if generator is None else generator.device)
    adv = (x + TRADES_START * noise.to(x.device)).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            kl = F.kl_div(F.log_softmax(model(adv), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def adversarial_loss(config: AdversarialConfig | None, label_smoothing: float = 0.0) -> BatchLoss | None:
    """The training loss that goes with config's transform: None (fit's cross-entropy) except for TRADES."""
    if config is None or config.method != "trades":
        return None
    return trades_loss(config.beta, label_smoothing)


def trades_loss(beta: float, label_smoothing: float = 0.0) -> BatchLoss:
    """TRADES' objective on a batch of N + k rows (N clean images, then adversarial versions of the first k):
    fn(model, x (N + k, 3, H, W), y (N,)) -> (CE(clean, y) + beta * KL(clean[:k] || adversarial), clean logits).
    The KL is averaged over the k attacked images; with beta = 0 the loss is the clean cross-entropy."""

    def loss(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        n = len(y)
        logits = model(x)  # one pass: batch-norm statistics over the clean and the adversarial rows together
        clean, adv = logits[:n], logits[n:]
        ce = F.cross_entropy(clean, y, label_smoothing=label_smoothing)
        if beta == 0 or len(adv) == 0:
            return ce, clean
        kl = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(clean[:len(adv)], dim=1), reduction="batchmean")
        return ce + beta * kl, clean

    return loss


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with `model` in eval mode; every submodule's own train/eval flag restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
