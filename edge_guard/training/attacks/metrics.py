"""How well an attack did: misclassification success rate and perturbation sizes.

Success rate follows Das et al. (2017): of the images the model classified correctly, the
fraction the attack made it misclassify. Perturbation norms are in [0, 1] image units
(Linf 8/255 ~ 0.0314), over the images the attack flipped (the perturbation it needed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from edge_guard.errors import InputError, expected_got


@dataclass(frozen=True)
class AttackMetrics:
    """Summary of one attack on one batch or data set (norms: NaN when nothing was flipped)."""

    n: int  # images attacked
    n_correct: int  # classified correctly before the attack
    n_flipped: int  # correct before, wrong after
    clean_accuracy: float  # n_correct / n
    adv_accuracy: float  # correct after the attack / n
    success_rate: float  # n_flipped / n_correct (NaN if n_correct == 0)
    l2_mean: float
    l2_median: float
    linf_mean: float
    linf_median: float

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-friendly dict (NaN becomes None)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def perturbation_norms(images: Tensor, adv_images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image (L2, Linf) norms (N,) of adv_images - images, both (N, C, H, W) in [0, 1]."""
    if images.shape != adv_images.shape:
        raise InputError(expected_got("adv_images shape", tuple(images.shape), tuple(adv_images.shape)))
    delta = (adv_images.detach() - images.detach()).flatten(1).float()
    return delta.norm(p=2, dim=1), delta.abs().amax(dim=1)


def _stat(values: Tensor, fn: str) -> float:
    if values.numel() == 0:
        return math.nan
    return float(values.mean() if fn == "mean" else values.median())


def attack_metrics(labels: Tensor, clean_pred: Tensor, adv_pred: Tensor, images: Tensor,
                   adv_images: Tensor) -> AttackMetrics:
    """Score an attack from labels and predictions (N,) before/after and the images (N, C, H, W).

    Example:
        >>> m = attack_metrics(y, model(x).argmax(1), model(adv).argmax(1), x, adv)
        >>> m.success_rate, m.l2_median
    """
    n = labels.shape[0]
    if not (clean_pred.shape == adv_pred.shape == labels.shape) or images.shape[0] != n:
        raise InputError(expected_got("labels/predictions/images", f"{n} items each",
                                      (tuple(clean_pred.shape), tuple(adv_pred.shape), images.shape[0])))
    correct = clean_pred.cpu() == labels.cpu()
    flipped = correct & (adv_pred.cpu() != labels.cpu())
    l2, linf = perturbation_norms(images, adv_images)
    l2, linf = l2.cpu()[flipped], linf.cpu()[flipped]
    n_correct, n_flipped = int(correct.sum()), int(flipped.sum())
    return AttackMetrics(
        n=n, n_correct=n_correct, n_flipped=n_flipped,
        clean_accuracy=n_correct / n if n else math.nan,
        adv_accuracy=int((adv_pred.cpu() == labels.cpu()).sum()) / n if n else math.nan,
        success_rate=n_flipped / n_correct if n_correct else math.nan,
        l2_mean=_stat(l2, "mean"), l2_median=_stat(l2, "median"),
        linf_mean=_stat(linf, "mean"), linf_median=_stat(linf, "median"),
    )


@torch.no_grad()
def predict(model: torch.nn.Module, images: Tensor) -> Tensor:
    """(N,) class ids: `model.predict(images)` when the model has a vote rule, else argmax of logits."""
    fn = getattr(model, "predict", None)
    return fn(images) if callable(fn) else model(images).argmax(dim=1)
