"""EOT: average a randomised model over several draws, so attacks follow the expected gradient.

Expectation over Transformation (Athalye, Engstrom, Ilyas, Kwok, 'Synthesizing Robust
Adversarial Examples', ICML 2018 [https://arxiv.org/abs/1707.07397]; used against randomised
defenses in Athalye, Carlini, Wagner, ICML 2018). Wrapping a model whose preprocessing is random
(SLQ draws a block choice per image per call) gives a deterministic-looking model whose output is
the average over `samples` independent draws; its gradient is the average of the per-draw
gradients of the logits (reduce="logits") or of the probabilities' log-mean (reduce="probs").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from edge_guard.errors import InputError, expected_got


class EOT(nn.Module):
    """Average `model` over `samples` random draws per image, in one batched forward pass.

    Arguments:
        model (nn.Module): a randomised model, float32 (N, 3, H, W) in [0, 1] -> logits (N, K);
            each image of a batch must get its own independent draw (true for BPDASLQ/DiffSLQ).
        samples (int): draws per image, K in EOT's average. (Default: 8)
        reduce (str): "logits": mean logits; "probs": log of the mean softmax (a soft vote over
            draws; cross-entropy on it is -log E[p_y]). (Default: "logits")

    Shape: (N, 3, H, W) float32 in [0, 1] -> (N, K) float32. Runs the model on N * samples images.
    `predict(x)` is the wrapped model's own single-draw prediction (what the deployed system does).

    Example:
        >>> eot = EOT(DefendedModel(members, BPDASLQ(backward="diffjpeg")), samples=8)
        >>> adv = PGD(eot, eps=8/255)(images, labels)
    """

    def __init__(self, model: nn.Module, samples: int = 8, reduce: str = "logits") -> None:
        super().__init__()
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise InputError(expected_got("samples", "an integer >= 1", repr(samples)))
        if reduce not in ("logits", "probs"):
            raise InputError(expected_got("reduce", "'logits' or 'probs'", repr(reduce)))
        self.model = model
        self.samples = samples
        self.reduce = reduce

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        out = self.model(x.repeat(self.samples, 1, 1, 1)).view(self.samples, n, -1)  # draw-major
        if self.reduce == "logits":
            return out.mean(dim=0)
        return torch.logsumexp(out.log_softmax(dim=-1), dim=0) - math.log(self.samples)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """(N,) int64 class ids from one draw, with the wrapped model's vote rule."""
        predict = getattr(self.model, "predict", None)
        return predict(x) if predict is not None else self.model(x).argmax(dim=1)
