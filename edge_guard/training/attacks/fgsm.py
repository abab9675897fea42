"""FGSM: one signed-gradient step of size eps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edge_guard.errors import InputError, expected_got
from edge_guard.training.attacks.base import Attack


def check_eps(value: float, what: str = "eps") -> float:
    """A perturbation budget in [0, 1] units (8/255 is eight 8-bit grey levels)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InputError(expected_got(what, "a number in [0, 1] (in [0,1] image units, e.g. 8/255)", repr(value)))
    return float(value)


class FGSM(Attack):
    r"""FGSM from 'Explaining and Harnessing Adversarial Examples' (Goodfellow, Shlens, Szegedy,
    ICLR 2015) [https://arxiv.org/abs/1412.6572].

    Distance measure: Linf. adv = clip(x + eps * sign(grad_x CE(model(x), y)), 0, 1).

    Arguments:
        model (nn.Module): float32 images in [0, 1] -> logits.
        eps (float): maximum perturbation per pixel, in [0, 1] units. (Default: 8/255)

    Shape:
        - images: (N, C, H, W) float32 in [0, 1].
        - labels: (N,) int64 true class ids.
        - output: (N, C, H, W) float32 in [0, 1].

    Example::
        >>> attack = FGSM(model, eps=8/255)
        >>> adv_images = attack(images, labels)
    """

    name = "FGSM"

    def __init__(self, model: nn.Module, eps: float = 8 / 255) -> None:
        super().__init__(model)
        self.eps = check_eps(eps)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        x = images.clone().requires_grad_(True)
        loss = F.cross_entropy(self.get_logits(x), labels)  # mean over the batch, as torchattacks
        grad = torch.autograd.grad(loss, x)[0]
        return torch.clamp(images + self.eps * grad.sign(), 0, 1)
