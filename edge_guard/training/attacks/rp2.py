"""RP2-style physical stickers: one mask on the sign, its content optimised over physical transformations.

Robust Physical Perturbations (Eykholt, Evtimov, Fernandes, Li, Rahmati, Xiao, Prakash, Kohno, Song,
'Robust Physical-World Attacks on Deep Learning Visual Classification', CVPR 2018)
[https://arxiv.org/abs/1707.08945]: the perturbation lives only under a mask M on the sign (stickers),
is unbounded there (any colour), and is optimised in expectation over the ways a camera sees the sign
(EOT): x_adv = T(x * (1 - M) + M * P), T drawn from `PhysicalTransforms` (scale, rotation, perspective,
lighting, and a JPEG round trip through the real codec with identity BPDA). One sticker is learned for
a set of photos of one sign class (a universal sticker), and it is judged on other signs of that class
under fresh transformations. Not included: RP2's non-printability score (printer colours) and the
total-variation smoothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edge_guard.errors import InputError, expected_got
from edge_guard.training.attacks.base import Attack, check_batch
from edge_guard.training.attacks.bpda import BPDAJPEG


def sticker_mask(height: int, width: int, kind: str = "bars") -> Tensor:
    """(1, 1, H, W) float mask in {0, 1}: "bars", two horizontal strips across the sign's centre (RP2's
    'subtle' black-and-white stickers, ~10% of a tightly cropped sign), or "square", a centred patch of ~10%."""
    m = torch.zeros(1, 1, height, width)
    if kind == "bars":
        w0, w1 = round(0.25 * width), round(0.75 * width)
        for top in (0.34, 0.56):
            m[..., round(top * height):round((top + 0.1) * height), w0:w1] = 1
    elif kind == "square":
        s = max(1, round(math.sqrt(0.1 * height * width)))
        r, c = (height - s) // 2, (width - s) // 2
        m[..., r:r + s, c:c + s] = 1
    else:
        raise InputError(expected_got("mask kind", "'bars' or 'square'", repr(kind)))
    return m


@dataclass(frozen=True)
class PhysicalTransforms:
    """How a camera sees a sign: each draw is one random transformation per image.

    scale: zoom range; rotation: +-degrees; perspective: corner jitter as a share of the side; brightness:
    multiplicative range; contrast: range around the mean; jpeg: qualities one is drawn from per call
    (the camera's own compression; () for none).
    """

    scale: tuple[float, float] = (0.85, 1.1)
    rotation: float = 15.0
    perspective: float = 0.08
    brightness: tuple[float, float] = (0.7, 1.3)
    contrast: tuple[float, float] = (0.8, 1.2)
    jpeg: tuple[int, ...] = (50, 70, 90)

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """(N, 3, H, W) in [0, 1] -> the same, each image transformed independently; differentiable (BPDA)."""
        n = x.shape[0]

        def u(lo: float, hi: float, *shape: int) -> Tensor:
            return (lo + (hi - lo) * torch.rand(n, *shape, generator=gen)).to(x.device)

        s, a = u(*self.scale), u(-self.rotation, self.rotation) * math.pi / 180
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(s)], 1),
                             torch.stack([sin, cos, torch.zeros_like(s)], 1)], 1)  # (N, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # perspective: a smooth bilinear displacement of the corners (a homography's first-order effect)
        corners = u(-self.perspective, self.perspective, 4, 2) * 2  # in [-1, 1] grid units
        gy, gx = grid[..., 1:2], grid[..., 0:1]
        wts = torch.cat([(1 - gx) * (1 - gy), (1 + gx) * (1 - gy), (1 - gx) * (1 + gy), (1 + gx) * (1 + gy)], -1) / 4
        grid = grid + torch.einsum("nhwk,nkc->nhwc", wts, corners)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * u(*self.contrast, 1, 1, 1) + mean
        out = (out * u(*self.brightness, 1, 1, 1)).clamp(0, 1)
        if self.jpeg:
            q = self.jpeg[int(torch.randint(len(self.jpeg), (1,), generator=gen))]
            out = BPDAJPEG(q)(out)
        return out


def apply_sticker(images: Tensor, sticker: Tensor, mask: Tensor) -> Tensor:
    """x * (1 - M) + M * P for images (N, 3, H, W), sticker (1, 3, H, W) and mask (1, 1, H, W)."""
    return images * (1 - mask) + mask * sticker


class RP2(Attack):
    r"""RP2 from 'Robust Physical-World Attacks on Deep Learning Visual Classification' (Eykholt et al.,
    CVPR 2018) [https://arxiv.org/abs/1707.08945], as a universal sticker for the batch.

    Distance measure: none inside the mask (any colour), zero outside it. Minimises, with Adam over the
    sticker's logits (P = sigmoid(w)), the mean over the batch and `eot` transformations per step of
    -CE(model(T(x_st)), y) (untargeted) or CE(., target) (targeted).

    Arguments:
        model (nn.Module): float32 images in [0, 1] -> logits.
        mask (Tensor): (1, 1, H, W) in {0, 1}, e.g. `sticker_mask(32, 32)`.
        steps (int): Adam steps. (Default: 200)
        lr (float): Adam step size on the logits. (Default: 0.1)
        eot (int): transformations per image per step. (Default: 4)
        transforms (PhysicalTransforms): the distribution T is drawn from.
        target (int | None): targeted class (None: any wrong class).
        seed (int): seeds the initial sticker and the transformations.

    Shape: images (N, C, H, W) float32 in [0, 1] (photos of one sign); labels (N,); output: the images with
    the learned sticker (untransformed); the sticker itself is `self.sticker` (1, C, H, W) after a call.

    Example::
        >>> attack = RP2(model, sticker_mask(32, 32), steps=200)
        >>> stickered = attack(stop_signs, labels); sticker = attack.sticker
    """

    name = "RP2"

    def __init__(self, model: nn.Module, mask: Tensor, steps: int = 200, lr: float = 0.1, eot: int = 4,
                 transforms: PhysicalTransforms = PhysicalTransforms(), target: int | None = None,
                 seed: int = 0) -> None:
        super().__init__(model)
        if not isinstance(mask, Tensor) or mask.ndim != 4 or mask.shape[:2] != (1, 1):
            raise InputError(expected_got("mask", "a (1, 1, H, W) tensor", getattr(mask, "shape", type(mask))))
        for what, value in (("steps", steps), ("eot", eot)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(expected_got(what, "an integer >= 1", repr(value)))
        self.mask, self.steps, self.lr, self.eot = mask.float(), steps, float(lr), eot
        self.transforms, self.target, self.seed = transforms, target, int(seed)
        self.sticker: Tensor | None = None

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        mask = self.mask.to(images.device)
        w = (torch.rand(1, images.shape[1], *images.shape[2:], generator=gen) * 2 - 1).to(images.device)
        w.requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        x = images.repeat(self.eot, 1, 1, 1)
        y = labels.repeat(self.eot)
        for _ in range(self.steps):
            seen = self.transforms(apply_sticker(x, torch.sigmoid(w), mask), gen)
            logits = self.get_logits(seen)
            if self.target is None:
                loss = -F.cross_entropy(logits, y)
            else:
                loss = F.cross_entropy(logits, torch.full_like(y, self.target))
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.sticker = torch.sigmoid(w).detach()
        return apply_sticker(images, self.sticker, mask)


@torch.no_grad()
def physical_views(images: Tensor, transforms: PhysicalTransforms, draws: int, seed: int,
                   sticker: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """`draws` fresh transformations of each image (with the sticker applied first when given), for judging a
    sticker on held-out signs: (draws * N, 3, H, W), draw-major, on the 8-bit grid (what a camera delivers)."""
    images, _ = check_batch(images, torch.zeros(len(images), dtype=torch.int64))
    x = apply_sticker(images, sticker, mask) if sticker is not None and mask is not None else images
    gen = torch.Generator().manual_seed(seed)
    return (torch.cat([transforms(x, gen) for _ in range(draws)]) * 255).round() / 255
