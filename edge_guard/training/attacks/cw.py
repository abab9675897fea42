"""Carlini & Wagner L2 attack, batched, with the per-sample binary search over c."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edge_guard.errors import InputError, expected_got
from edge_guard.training.attacks.base import Attack


class CW(Attack):
    r"""CW-L2 from 'Towards Evaluating the Robustness of Neural Networks' (Carlini, Wagner,
    IEEE S&P 2017) [https://arxiv.org/abs/1608.04644].

    Distance measure: L2. Minimises ||x' - x||_2^2 + c * max(Z_y - max_{i != y} Z_i, -kappa) over
    x' = (tanh(w) + 1) / 2 (tanh space keeps x' in [0, 1]) with Adam, for each of
    `binary_search_steps` values of c found by a per-sample binary search (x10 until the attack
    succeeds, then bisection), as the authors' l2_attack.py. Returns, per sample, the successful
    adversarial image with the smallest L2 distance, or the clean image if none was found.

    Arguments:
        model (nn.Module): float32 images in [0, 1] -> logits.
        c (float): initial trade-off constant, unitless. (Default: 1e-2)
        kappa (float): confidence margin in logits. (Default: 0)
        steps (int): Adam iterations per binary-search step. (Default: 100)
        lr (float): Adam learning rate in tanh space. (Default: 0.01)
        binary_search_steps (int): number of values of c tried per sample. (Default: 5)
        abort_early (bool): stop a search step when the batch loss has not fallen by 0.01%
            over steps // 10 iterations. (Default: True)

    Shape:
        - images: (N, C, H, W) float32 in [0, 1].
        - labels: (N,) int64 true class ids.
        - output: (N, C, H, W) float32 in [0, 1].

    Example::
        >>> attack = CW(model, c=1e-2, kappa=0, steps=100, lr=0.01, binary_search_steps=5)
        >>> adv_images = attack(images, labels)
    """

    name = "CW"

    def __init__(self, model: nn.Module, c: float = 1e-2, kappa: float = 0.0, steps: int = 100, lr: float = 0.01,
                 binary_search_steps: int = 5, abort_early: bool = True) -> None:
        super().__init__(model)
        for what, value in (("c", c), ("lr", lr)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InputError(expected_got(what, "a number > 0", repr(value)))
        if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or kappa < 0:
            raise InputError(expected_got("kappa", "a number >= 0 (logit margin)", repr(kappa)))
        for what, value in (("steps", steps), ("binary_search_steps", binary_search_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(expected_got(what, "an integer >= 1", repr(value)))
        self.c = float(c)
        self.kappa = float(kappa)
        self.steps = steps
        self.lr = float(lr)
        self.binary_search_steps = binary_search_steps
        self.abort_early = bool(abort_early)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        n = images.shape[0]
        w0 = torch.atanh((2 * images - 1) * (1 - 1e-6))  # tanh space; the factor keeps atanh finite
        const = torch.full((n,), self.c, device=images.device)
        lower = torch.zeros(n, device=images.device)
        upper = torch.full((n,), 1e10, device=images.device)
        best_l2 = torch.full((n,), math.inf, device=images.device)
        best_adv = images.clone()
        for _ in range(self.binary_search_steps):
            succeeded = self._optimise(images, labels, w0, const, best_l2, best_adv)
            # per-sample binary search on c (Carlini & Wagner's l2_attack.py)
            upper = torch.where(succeeded, torch.minimum(upper, const), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, const))
            bounded = upper < 1e9
            const = torch.where(bounded, (lower + upper) / 2, const * 10)
        return best_adv

    def _optimise(self, images: Tensor, labels: Tensor, w0: Tensor, const: Tensor, best_l2: Tensor,
                  best_adv: Tensor) -> Tensor:
        """One binary-search step: Adam from w0 for fixed c. Updates best_l2/best_adv in place.

        Returns (N,) bool: whether each sample was adversarial at some iteration.
        """
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        succeeded = torch.zeros_like(best_l2, dtype=torch.bool)
        prev = math.inf
        for it in range(self.steps):
            adv = (torch.tanh(w) + 1) / 2
            logits = self.get_logits(adv)
            onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
            l2 = (adv - images).pow(2).flatten(1).sum(1)  # squared L2, [0,1] units
            real = (logits * onehot).sum(1)
            other = (logits - 1e4 * onehot).max(1).values
            margin = torch.clamp(real - other, min=-self.kappa)
            loss = (l2 + const * margin).sum()
            with torch.no_grad():  # record the point the loss was evaluated at (before the step)
                success = (logits + self.kappa * onehot).argmax(1) != labels
                succeeded |= success
                better = success & (l2 < best_l2)
                best_l2[better] = l2[better]
                best_adv[better] = adv[better]
            w.grad = torch.autograd.grad(loss, w)[0]  # grad w.r.t. w only: model .grad untouched
            opt.step()
            if self.abort_early and it % max(self.steps // 10, 1) == 0:
                if loss.item() > prev * 0.9999:
                    break
                prev = loss.item()
        return succeeded
