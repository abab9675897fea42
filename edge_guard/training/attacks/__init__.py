"""Adversarial attacks (one per module, torchattacks-style) and the adaptive-attack plumbing.

All attacks take float32 (N, C, H, W) images in [0, 1] and int64 labels (N,), and return
adversarial images of the same shape in [0, 1]. Budgets (eps, alpha) are in [0, 1] units:
eight 8-bit grey levels is 8/255.

    from edge_guard.training.attacks import create_attack, attack_metrics, predict
    attack = create_attack("pgd", model, eps=8/255)
    adv = attack(images, labels)
    metrics = attack_metrics(labels, predict(model, images), predict(model, adv), images, adv)

Adaptive attacks on the JPEG defenses: wrap the members with `jpeg_defended`, `ensemble_defended`
or `slq_defended` (BPDA through the real codec, EOT over SLQ's randomness) and attack the result.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from edge_guard.errors import ConfigError, expected_got
from edge_guard.training.attacks.apgd import APGD, APGDCE, APGDDLR, dlr_loss
from edge_guard.training.attacks.base import Attack
from edge_guard.training.attacks.bpda import BPDAJPEG, BPDASLQ, bpda
from edge_guard.training.attacks.cw import CW
from edge_guard.training.attacks.deepfool import DeepFool
from edge_guard.training.attacks.defended import (
    DefendedModel,
    ensemble_defended,
    jpeg_defended,
    make_defense,
    slq_defended,
    vote,
)
from edge_guard.training.attacks.eot import EOT
from edge_guard.training.attacks.fgsm import FGSM
from edge_guard.training.attacks.metrics import AttackMetrics, attack_metrics, perturbation_norms, predict
from edge_guard.training.attacks.pgd import PGD
from edge_guard.training.attacks.rp2 import RP2, PhysicalTransforms, apply_sticker, physical_views, sticker_mask

ATTACKS: dict[str, type[Attack]] = {"fgsm": FGSM, "pgd": PGD, "apgd-ce": APGDCE, "apgd-dlr": APGDDLR,
                                    "deepfool": DeepFool, "cw": CW}


def list_attacks() -> list[str]:
    """Registered attack names, e.g. ['apgd-ce', 'apgd-dlr', 'cw', 'deepfool', 'fgsm', 'pgd']."""
    return sorted(ATTACKS)


def create_attack(name: str, model: nn.Module, **kwargs: Any) -> Attack:
    """Build a registered attack by name (case-insensitive) with its keyword hyperparameters.

    Example:
        >>> attack = create_attack("fgsm", model, eps=4/255)
    """
    cls = ATTACKS.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(expected_got("attack", f"one of {', '.join(list_attacks())}", repr(name)))
    try:
        return cls(model, **kwargs)
    except TypeError as exc:  # unknown keyword
        raise ConfigError(f"attack {name!r}: {exc}. See help({cls.__name__}) for its arguments.") from None


__all__ = [
    "APGD", "APGDCE", "APGDDLR", "ATTACKS", "Attack", "AttackMetrics", "BPDAJPEG", "BPDASLQ", "CW", "DeepFool",
    "DefendedModel", "EOT", "PhysicalTransforms", "RP2", "apply_sticker", "physical_views", "sticker_mask",
    "FGSM", "PGD", "attack_metrics", "bpda", "create_attack", "dlr_loss", "ensemble_defended", "jpeg_defended",
    "list_attacks", "make_defense", "perturbation_norms", "predict", "slq_defended", "vote",
]
