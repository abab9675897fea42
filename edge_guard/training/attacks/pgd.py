"""PGD: iterated signed-gradient steps projected onto the Linf ball (BIM / I-FGSM without random start)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edge_guard.errors import InputError, expected_got
from edge_guard.training.attacks.base import Attack
from edge_guard.training.attacks.fgsm import check_eps


class PGD(Attack):
    r"""PGD from 'Towards Deep Learning Models Resistant to Adversarial Attacks' (Madry et al.,
    ICLR 2018) [https://arxiv.org/abs/1706.06083]. With random_start=False it is the basic
    iterative method (I-FGSM / BIM) of Kurakin, Goodfellow, Bengio, 'Adversarial examples in the
    physical world' (ICLR workshop 2017) [https://arxiv.org/abs/1607.02533].

    Distance measure: Linf. Each step: x <- clip(Proj_eps(x + alpha * sign(grad)), 0, 1).

    Arguments:
        model (nn.Module): float32 images in [0, 1] -> logits.
        eps (float): maximum perturbation per pixel, in [0, 1] units. (Default: 8/255)
        alpha (float): step size per iteration, in [0, 1] units. (Default: 2/255)
        steps (int): number of iterations. (Default: 10)
        random_start (bool): start from a uniform random point in the eps ball. (Default: True)
        generator (torch.Generator | None): RNG for the random start; None uses torch's global RNG.

    Shape:
        - images: (N, C, H, W) float32 in [0, 1].
        - labels: (N,) int64 true class ids.
        - output: (N, C, H, W) float32 in [0, 1], within eps of images in Linf.

    Example::
        >>> attack = PGD(model, eps=8/255, alpha=2/255, steps=10, random_start=True)
        >>> adv_images = attack(images, labels)
    """

    name = "PGD"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 random_start: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__(model)
        self.eps = check_eps(eps)
        self.alpha = check_eps(alpha, "alpha")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(expected_got("steps", "an integer >= 1", repr(steps)))
        self.steps = steps
        self.random_start = bool(random_start)
        self._generator = generator

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        adv = images.clone()
        if self.random_start:
            gen = self._generator
            noise = torch.rand(images.shape, generator=gen, device=gen.device if gen is not None else images.device)
            adv = torch.clamp(adv + (2 * noise.to(images.device) - 1) * self.eps, 0, 1)  # uniform in the ball
        for _ in range(self.steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(self.get_logits(adv), labels)
            grad = torch.autograd.grad(loss, adv)[0]
            adv = adv.detach() + self.alpha * grad.sign()
            delta = torch.clamp(adv - images, -self.eps, self.eps)  # project onto the Linf ball
            adv = torch.clamp(images + delta, 0, 1)
        return adv
