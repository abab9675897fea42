"""DeepFool (L2), vectorised over the batch.

Per step, for the still-correct samples only: one forward pass, then one backward pass per
candidate class over the whole sub-batch (k backward passes in all, not k per sample), the
linearised distance to every candidate boundary, and a step to the nearest one. Samples that are
misclassified are frozen and drop out of the batch. No per-sample Python loop.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edge_guard.errors import InputError, expected_got
from edge_guard.training.attacks.base import Attack


class DeepFool(Attack):
    r"""DeepFool from 'DeepFool: a simple and accurate method to fool deep neural networks'
    (Moosavi-Dezfooli, Fawzi, Frossard, CVPR 2016) [https://arxiv.org/abs/1511.04599].

    Distance measure: L2. Linearises the classifier around the current point and steps onto the
    nearest linearised decision boundary among the `candidates` top classes of the clean image,
    accumulating r_tot; the adversarial image is clip(x + (1 + overshoot) * r_tot, 0, 1)
    (as the authors' reference code, including its 1e-4 step padding).

    Arguments:
        model (nn.Module): float32 images in [0, 1] -> logits.
        steps (int): maximum number of linearisation steps per sample. (Default: 50)
        overshoot (float): relative overshoot past the boundary, unitless. (Default: 0.02)
        candidates (int): classes considered: the true class plus the k-1 highest-scoring others
            on the clean image; capped at the number of classes. (Default: 10)

    Shape:
        - images: (N, C, H, W) float32 in [0, 1].
        - labels: (N,) int64 true class ids. Samples the model already misclassifies are returned unchanged.
        - output: (N, C, H, W) float32 in [0, 1].

    Example::
        >>> attack = DeepFool(model, steps=50, overshoot=0.02, candidates=10)
        >>> adv_images = attack(images, labels)
    """

    name = "DeepFool"

    def __init__(self, model: nn.Module, steps: int = 50, overshoot: float = 0.02, candidates: int = 10) -> None:
        super().__init__(model)
        for what, value, low in (("steps", steps, 1), ("candidates", candidates, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(expected_got(what, f"an integer >= {low}", repr(value)))
        if isinstance(overshoot, bool) or not isinstance(overshoot, (int, float)) or overshoot < 0:
            raise InputError(expected_got("overshoot", "a number >= 0 (e.g. 0.02)", repr(overshoot)))
        self.steps = steps
        self.overshoot = float(overshoot)
        self.candidates = candidates

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        with torch.no_grad():
            logits = self.get_logits(images)
        k = min(self.candidates, logits.shape[1])
        if k < 2:
            raise InputError(expected_got("model outputs", "logits for at least 2 classes", logits.shape[1]))
        # candidate classes: the true class first, then the k-1 best-scoring other classes
        others = logits.scatter(1, labels[:, None], float("-inf")).topk(k - 1, dim=1).indices
        cands = torch.cat([labels[:, None], others], dim=1)  # (N, k)
        active = logits.argmax(dim=1) == labels  # misclassified samples need no perturbation
        r_tot = torch.zeros_like(images)
        adv = images.clone()
        for _ in range(self.steps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x = adv[idx].clone().requires_grad_(True)
            out = self.get_logits(x)
            still = out.argmax(dim=1) == labels[idx]
            active[idx[~still]] = False  # crossed the boundary: freeze at the current point
            if not still.any():
                break
            r_step = self._step(x, out, cands[idx])  # (B, C, H, W)
            keep = idx[still]
            r_tot[keep] += r_step[still]
            adv[keep] = torch.clamp(images[keep] + (1 + self.overshoot) * r_tot[keep], 0, 1)
        return adv

    @staticmethod
    def _step(x: Tensor, out: Tensor, cands: Tensor) -> Tensor:
        """Minimal L2 step to the nearest linearised boundary, for each sample of the sub-batch.

        x: (B, C, H, W) with grad; out: (B, K) logits of x; cands: (B, k) classes, true class first.
        Samples are independent (eval mode), so the gradient of sum_b out[b, cands[b, j]] gives
        every sample's own gradient of its j-th candidate logit in one backward pass.
        """
        k = cands.shape[1]
        grads = torch.stack([
            torch.autograd.grad(out.gather(1, cands[:, j : j + 1]).sum(), x, retain_graph=j < k - 1)[0]
            for j in range(k)
        ], dim=1).flatten(2)  # (B, k, D)
        f = out.detach().gather(1, cands)  # (B, k)
        f_diff = f[:, 1:] - f[:, :1]  # (B, k-1): other minus true logit (negative while correct)
        w_diff = grads[:, 1:] - grads[:, :1]  # (B, k-1, D)
        w_norm = w_diff.norm(dim=2).clamp_min(1e-12)
        dist = f_diff.abs() / w_norm  # linearised L2 distance to each boundary
        best = dist.argmin(dim=1)  # (B,)
        rows = torch.arange(len(best), device=best.device)
        w = w_diff[rows, best]  # (B, D)
        scale = (dist[rows, best] + 1e-4) / w_norm[rows, best]
        return (scale[:, None] * w).view_as(x)
