"""APGD: step-size-free PGD with momentum and checkpoints (the core of AutoAttack)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edge_guard.errors import InputError, expected_got
from edge_guard.training.attacks.base import Attack
from edge_guard.training.attacks.fgsm import check_eps

LOSSES = ("ce", "dlr")


def dlr_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, eq. 6), per image (N,); larger = closer to wrong.

    DLR(x, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), with z sorted decreasingly; shift- and
    scale-invariant in the logits, so it does not vanish when a model saturates its softmax.
    Needs at least 3 classes.
    """
    z_sorted, idx = logits.sort(dim=1)
    top_is_y = (idx[:, -1] == labels).float()
    z_y = logits.gather(1, labels[:, None])[:, 0]
    z_other = z_sorted[:, -2] * top_is_y + z_sorted[:, -1] * (1 - top_is_y)  # the best wrong logit
    return -(z_y - z_other) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD may halve its step: w_j = ceil(p_j * steps) with p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein 2020, section 3.2)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(q * steps, 6)) for q in p if 0 < q <= 1})  # round: 0.41 + 0.16 is 0.57


class APGD(Attack):
    r"""APGD from 'Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks' (Croce, Hein, ICML 2020) [https://arxiv.org/abs/2003.01690].

    Distance measure: Linf. Start at a random point of the eps ball, step size 2 eps, momentum
    alpha = 0.75: z = P(x_k + eta_k sign(grad)), x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1})).
    At each checkpoint (`checkpoints`) the step size of an image is halved, and it restarts from its
    best point, when (1) the loss rose in fewer than rho of the steps since the last checkpoint, or
    (2) the step was not halved at the last checkpoint and the best loss has not improved since.
    Returns, per image, the first misclassified point found (over all restarts), else the point of
    highest loss. Restarts only attack the images still classified correctly.

    Arguments:
        model (nn.Module): float32 images in [0, 1] -> logits.
        eps (float): maximum perturbation per pixel, in [0, 1] units. (Default: 8/255)
        steps (int): iterations per restart (N_iter). (Default: 100, as in AutoAttack)
        n_restarts (int): random restarts. (Default: 1)
        loss (str): "ce" (cross-entropy, APGD-CE) or "dlr" (APGD-DLR). (Default: "ce")
        rho (float): condition (1)'s fraction. (Default: 0.75)
        momentum (float): alpha. (Default: 0.75)
        seed (int): seeds the random starts (a generator of its own; torch's global RNG is untouched).

    Shape:
        - images: (N, C, H, W) float32 in [0, 1].
        - labels: (N,) int64 true class ids.
        - output: (N, C, H, W) float32 in [0, 1], within eps of images in Linf.

    Example::
        >>> attack = APGD(model, eps=8/255, steps=100, n_restarts=1, loss="dlr")
        >>> adv_images = attack(images, labels)
    """

    name = "APGD"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, steps: int = 100, n_restarts: int = 1,
                 loss: str = "ce", rho: float = 0.75, momentum: float = 0.75, seed: int = 0) -> None:
        super().__init__(model)
        self.eps = check_eps(eps)
        for what, value in (("steps", steps), ("n_restarts", n_restarts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(expected_got(what, "an integer >= 1", repr(value)))
        if loss not in LOSSES:
            raise InputError(expected_got("loss", "'ce' or 'dlr'", repr(loss)))
        self.steps, self.n_restarts, self.loss = steps, n_restarts, loss
        self.rho = check_eps(rho, "rho")
        self.momentum = check_eps(momentum, "momentum")
        self.seed = int(seed)

    def _loss(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(per-image loss (N,), its gradient wrt x, logits) at x."""
        x = x.detach().requires_grad_(True)
        logits = self.get_logits(x)
        per = F.cross_entropy(logits, labels, reduction="none") if self.loss == "ce" else dlr_loss(logits, labels)
        grad = torch.autograd.grad(per.sum(), x)[0]
        return per.detach(), grad.detach(), logits.detach()

    def _project(self, x: Tensor, images: Tensor) -> Tensor:
        return torch.clamp(torch.min(torch.max(x, images - self.eps), images + self.eps), 0, 1)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        adv = images.clone()
        with torch.no_grad():
            robust = self.get_logits(images).argmax(1) == labels
        best_loss = torch.full((len(labels),), -math.inf, device=images.device)
        for _ in range(self.n_restarts):
            idx = robust.nonzero()[:, 0]
            if idx.numel() == 0:
                break
            x_best, loss_best, fooled, x_fooled = self.single_run(images[idx], labels[idx], gen)
            # a fooled point wins; otherwise keep the highest loss over restarts
            better = ~fooled & (loss_best > best_loss[idx])
            adv[idx[better]] = x_best[better]
            best_loss[idx[better]] = loss_best[better]
            adv[idx[fooled]] = x_fooled[fooled]
            robust[idx[fooled]] = False
        return adv

    def single_run(self, images: Tensor, labels: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor,
                                                                                         Tensor]:
        """One restart: (x of highest loss, that loss, fooled mask, first fooled point) per image."""
        n = len(labels)
        t = (2 * torch.rand(images.shape, generator=gen) - 1).to(images.device)
        t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)  # a corner-touching start
        x = torch.clamp(images + self.eps * t, 0, 1)
        loss, grad, logits = self._loss(x, labels)
        fooled = logits.argmax(1) != labels
        x_fooled = x.clone()
        x_best, loss_best, grad_best = x.clone(), loss.clone(), grad.clone()
        step = torch.full((n, 1, 1, 1), 2 * self.eps, device=images.device)
        x_prev = x.clone()
        marks = checkpoints(self.steps)
        last_mark, increases = 0, torch.zeros(n, device=images.device)
        loss_at_mark, reduced_at_mark = loss_best.clone(), torch.ones(n, dtype=torch.bool, device=images.device)
        prev_loss = loss.clone()
        for k in range(self.steps):
            with torch.no_grad():
                alpha = self.momentum if k > 0 else 1.0
                z = self._project(x + step * grad.sign(), images)
                x_new = self._project(x + alpha * (z - x) + (1 - alpha) * (x - x_prev), images)
                x_prev, x = x, x_new
            loss, grad, logits = self._loss(x, labels)
            with torch.no_grad():
                now_fooled = (logits.argmax(1) != labels) & ~fooled
                x_fooled[now_fooled] = x[now_fooled]
                fooled |= now_fooled
                increases += (loss > prev_loss).float()
                prev_loss = loss
                up = loss > loss_best
                x_best[up], grad_best[up], loss_best[up] = x[up], grad[up], loss[up]
                if k + 1 in marks:
                    span = k + 1 - last_mark
                    cond1 = increases < self.rho * span
                    cond2 = ~reduced_at_mark & (loss_best <= loss_at_mark)
                    halve = cond1 | cond2
                    step[halve] /= 2
                    x[halve], grad[halve] = x_best[halve], grad_best[halve]  # restart from the best point
                    reduced_at_mark, loss_at_mark = halve, loss_best.clone()
                    last_mark, increases = k + 1, torch.zeros_like(increases)
        return x_best, loss_best, fooled, x_fooled


class APGDCE(APGD):
    """APGD with the cross-entropy loss (APGD-CE, AutoAttack's first attack). Arguments as `APGD`, without `loss`.

    Example::
        >>> adv_images = APGDCE(model, eps=8/255, steps=100)(images, labels)
    """

    name = "APGD-CE"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, steps: int = 100, n_restarts: int = 1,
                 rho: float = 0.75, momentum: float = 0.75, seed: int = 0) -> None:
        super().__init__(model, eps, steps, n_restarts, "ce", rho, momentum, seed)


class APGDDLR(APGD):
    """APGD with the DLR loss (APGD-DLR): robust to logit rescaling. Arguments as `APGD`, without `loss`.

    Example::
        >>> adv_images = APGDDLR(model, eps=8/255, steps=100)(images, labels)
    """

    name = "APGD-DLR"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, steps: int = 100, n_restarts: int = 1,
                 rho: float = 0.75, momentum: float = 0.75, seed: int = 0) -> None:
        super().__init__(model, eps, steps, n_restarts, "dlr", rho, momentum, seed)
