"""BPDA: the real JPEG defense on the forward pass, a differentiable stand-in on the backward pass.

Backward Pass Differentiable Approximation (Athalye, Carlini, Wagner, 'Obfuscated Gradients Give
a False Sense of Security', ICML 2018) [https://arxiv.org/abs/1802.00420]. The forward pass runs
exactly what the deployed system runs (`edge_guard.jpeg.roundtrip` / SLQ through libjpeg-turbo,
on 8-bit pixels); the backward pass is the identity (x ~ JPEG(x)) or the Jacobian of `DiffJPEG`
evaluated at the same input.

Both modules map float32 (N, 3, H, W) RGB in [0, 1] to the same shape, on the 8-bit grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edge_guard import jpeg
from edge_guard.errors import InputError, expected_got
from edge_guard.training.choices import BpdaBackward
from edge_guard.training.diffjpeg import DiffJPEG, DiffSLQ, check_images

BACKWARDS = BpdaBackward.values()


def to_uint8_nhwc(x: Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [0, 1] -> uint8 (N, H, W, 3) numpy, rounded to the nearest level."""
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8_nhwc(images: np.ndarray, like: Tensor) -> Tensor:
    """uint8 (N, H, W, 3) numpy -> float32 (N, 3, H, W) in [0, 1] on `like`'s device."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(like.device, torch.float32) / 255


class _BPDA(torch.autograd.Function):
    """y = real(x) forward; dL/dx = J_approx(x)^T dL/dy backward (identity when approx is None)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, real: Callable[[Tensor], Tensor],
                approx: Callable[[Tensor], Tensor] | None) -> Tensor:
        ctx.approx = approx
        ctx.save_for_backward(x)
        return real(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        if ctx.approx is None:
            return grad, None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            (gx,) = torch.autograd.grad(ctx.approx(xx), xx, grad)
        return gx, None, None


def bpda(x: Tensor, real: Callable[[Tensor], Tensor], approx: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Apply `real` on the forward pass and differentiate through `approx` (None: identity)."""
    return _BPDA.apply(x, real, approx)


def _check_backward(backward: str) -> str:
    if backward not in BACKWARDS:
        raise InputError(expected_got("backward", "'identity' or 'diffjpeg'", repr(backward)))
    return backward


class BPDAJPEG(nn.Module):
    """The real JPEG round trip at `quality`, differentiable by BPDA.

    Arguments:
        quality (int): JPEG quality 1..100.
        subsampling (str): "420" (default), "422" or "444", as the defense.
        backend (str): codec backend for `edge_guard.jpeg.roundtrip` ("auto", "turbojpeg", "opencv").
        backward (str): "identity" (default) or "diffjpeg" (Jacobian of DiffJPEG at the input).
        rounding (str): DiffJPEG's quantization gradient, "ste" or "cubic" (backward="diffjpeg" only).

    Shape: (N, 3, H, W) float32 in [0, 1] -> the same; forward output equals the codec's exactly.

    Example:
        >>> defense = BPDAJPEG(quality=50, backward="diffjpeg")
        >>> y = defense(x)   # y == roundtrip(x) bit for bit; y.backward() goes through DiffJPEG
    """

    def __init__(self, quality: int, subsampling: str = "420", backend: str = "auto", backward: str = "identity",
                 rounding: str = "ste") -> None:
        super().__init__()
        self.quality = jpeg.check_quality(quality)
        self.subsampling = jpeg.check_subsampling(subsampling)
        self.backend = jpeg.resolve_backend(backend)
        self.backward_mode = _check_backward(backward)
        self.approx = DiffJPEG(quality, subsampling, rounding) if backward == "diffjpeg" else None

    def real(self, x: Tensor) -> Tensor:
        out = jpeg.roundtrip(to_uint8_nhwc(x), self.quality, subsampling=self.subsampling, backend=self.backend)
        return from_uint8_nhwc(out, x)

    def forward(self, x: Tensor) -> Tensor:
        return bpda(check_images(x), self.real, self.approx)

    def extra_repr(self) -> str:
        return f"quality={self.quality}, subsampling={self.subsampling!r}, backward={self.backward_mode!r}"


class BPDASLQ(nn.Module):
    """SHIELD's SLQ through the real codec, a fresh random block choice per call, differentiable by BPDA.

    The forward pass is `edge_guard.jpeg.slq`'s definition built from its public parts: the real
    round trip at every quality, mixed per 8x8 block by `edge_guard.jpeg.slq_block_choice`. With
    backward="diffjpeg" the gradient goes through `DiffSLQ` using the SAME block choice.

    Arguments:
        qualities (Sequence[int]): the SLQ quality set. (Default: (20, 40, 60, 80))
        subsampling, backend, rounding: as in `BPDAJPEG`.
        backward (str): "identity" (default) or "diffjpeg".
        rng (np.random.Generator | int | None): source of the block choices (seed for reproducibility).

    Shape: (N, 3, H, W) float32 in [0, 1] -> the same.

    Example:
        >>> defense = BPDASLQ((20, 40, 60, 80), backward="diffjpeg", rng=0)
        >>> y = defense(x)
    """

    def __init__(self, qualities: Sequence[int] = jpeg.DEFAULT_SLQ_QUALITIES, subsampling: str = "420",
                 backend: str = "auto", backward: str = "identity", rounding: str = "ste",
                 rng: np.random.Generator | int | None = None) -> None:
        super().__init__()
        if isinstance(qualities, (str, bytes)) or not isinstance(qualities, Sequence) or not qualities:
            raise InputError(expected_got("qualities", "a non-empty sequence of integers 1..100", repr(qualities)))
        self.qualities = tuple(jpeg.check_quality(q, "each of qualities") for q in qualities)
        self.subsampling = jpeg.check_subsampling(subsampling)
        self.backend = jpeg.resolve_backend(backend)
        self.backward_mode = _check_backward(backward)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.approx = DiffSLQ(self.qualities, subsampling, rounding) if backward == "diffjpeg" else None

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = check_images(x).shape
        choice = jpeg.slq_block_choice((n, h, w), len(self.qualities), self.rng)  # (N, H, W) int64

        def real(t: Tensor) -> Tensor:
            batch = to_uint8_nhwc(t)
            versions = np.stack([jpeg.roundtrip(batch, q, subsampling=self.subsampling, backend=self.backend)
                                 for q in self.qualities])
            return from_uint8_nhwc(np.take_along_axis(versions, choice[None, ..., None], axis=0)[0], t)

        approx = None
        if self.approx is not None:
            torch_choice = torch.from_numpy(choice).to(x.device)
            approx = lambda t: self.approx(t, choice=torch_choice)  # noqa: E731
        return bpda(x, real, approx)

    def extra_repr(self) -> str:
        return f"qualities={self.qualities}, subsampling={self.subsampling!r}, backward={self.backward_mode!r}"
