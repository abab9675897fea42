"""Batch augmentation for traffic signs, in torch, seeded by an explicit generator.

Small random affine warp (rotation, scale, translation) plus brightness/contrast jitter. No
horizontal flip: a mirrored "keep left" is "keep right", and mirrored digits are not digits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edge_guard.errors import ConfigError, expected_got


@dataclass(frozen=True)
class AugmentConfig:
    rotate_deg: float = 10.0  # rotation uniform in [-rotate_deg, +rotate_deg] degrees
    scale: tuple[float, float] = (0.9, 1.1)  # zoom factor range (>1 enlarges the sign)
    translate_px: float = 2.0  # shift uniform in [-translate_px, +translate_px] pixels, x and y
    brightness: float = 0.2  # multiply by a factor uniform in [1 - b, 1 + b]
    contrast: float = 0.2  # scale deviations from the image mean by [1 - c, 1 + c]

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi or self.rotate_deg < 0 or self.translate_px < 0:
            raise ConfigError(expected_got("augmentation", "0 < scale_lo <= scale_hi, rotate >= 0, translate >= 0",
                                           self))
        if not (0 <= self.brightness < 1 and 0 <= self.contrast < 1):
            raise ConfigError(expected_got("brightness/contrast jitter", "values in [0, 1)", self))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC (N, H, W, 3) -> float32 NCHW in [0, 1] (a channels-last view, no copy of layout)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [0, 1] -> uint8 NHWC (rounded), the inverse of `to_tensor`."""
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def augment_batch(x: torch.Tensor, generator: torch.Generator, config: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """Randomly warp and jitter a batch. x: float32 (N, 3, H, W) in [0, 1]; returns the same shape, in [0, 1]."""
    n, _, h, w = x.shape

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    angle = uniform(-config.rotate_deg, config.rotate_deg) * (math.pi / 180.0)
    scale = uniform(*config.scale)
    # affine_grid maps OUTPUT coordinates to INPUT coordinates in [-1, 1] units, so the matrix is the
    # inverse warp: rotate by -angle, divide by scale; 1 px = 2 / size normalized units.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    tx = uniform(-config.translate_px, config.translate_px) * (2.0 / w)
    ty = uniform(-config.translate_px, config.translate_px) * (2.0 / h)
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    contrast = uniform(1 - config.contrast, 1 + config.contrast).view(n, 1, 1, 1)
    brightness = uniform(1 - config.brightness, 1 + config.brightness).view(n, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean).mul(brightness).clamp(0.0, 1.0)
