"""Training batches: uint8 images -> augmented float32 tensors, with the vaccination step (a BatchTransform:
the runtime's own JPEG codec on uint8 NHWC, after augmentation) and the low-res downscale; BatchLoss, the
shape of a training loss that goes with a transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edge_guard import jpeg
from edge_guard.training.augment import AugmentConfig, augment_batch, to_tensor, to_uint8
from edge_guard.training.config import TrainConfig

# A batch transform applied AFTER augmentation on uint8 NHWC images (the JPEG step of vaccination):
# fn(images uint8 (N, H, W, 3), rng) -> uint8 (N, H, W, 3).
BatchTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]

# A training loss over one batch: fn(model, x float32 (R, 3, H, W), y int64 (N,)) -> (scalar loss, logits (N, K)
# of the batch's N labelled images). R = N unless the transform adds rows (TRADES: N clean + k adversarial).
BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def route_per_image(images: np.ndarray, choice: np.ndarray, steps: Sequence[BatchTransform],
                    rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
    """Write steps[choice[i]](images[i]) into out[i], one batched call per step, in step order (so the
    steps draw from `rng` reproducibly). Images whose choice is outside 0..len(steps)-1 keep out's value.
    images and out: uint8 (N, H, W, 3); choice: int (N,)."""
    for i, step in enumerate(steps):
        idx = np.flatnonzero(choice == i)
        if len(idx):
            out[idx] = step(images[idx], rng)
    return out


def jpeg_augment_transform(qualities: tuple[int, ...], p: float, subsampling: str = "420",
                           backend: str = "auto") -> BatchTransform:
    """A BatchTransform that JPEG round-trips each image with probability p at a quality drawn uniformly
    from `qualities` (the runtime codec and settings); the other images pass unchanged. uint8 NHWC in/out."""
    steps = [lambda x, rng, q=q: jpeg.roundtrip(x, q, subsampling=subsampling, backend=backend)
             for q in sorted(set(int(q) for q in qualities))]

    def transform(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        picked = rng.integers(len(steps), size=len(images))
        hit = rng.random(len(images)) < p
        return route_per_image(images, np.where(hit, picked, -1), steps, rng, out=images.copy())

    return transform


def make_batch(images: np.ndarray, config: TrainConfig, aug: AugmentConfig | None, gen: torch.Generator,
               transform: BatchTransform | None, rng: np.random.Generator, side: int | None = None) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW [0, 1]: augment (torch), then the vaccination transform on uint8, then
    (side smaller than the images) an antialiased bilinear downscale to side x side."""
    x = to_tensor(images)
    if aug is not None:
        x = augment_batch(x, gen, aug)
    if transform is not None:
        x = to_tensor(transform(to_uint8(x), rng))
    if side is not None and side != x.shape[-1]:
        x = downscale(x, side)
    return x.contiguous(memory_format=torch.channels_last) if config.channels_last else x.contiguous()


def downscale(x: torch.Tensor, side: int) -> torch.Tensor:
    """float32 (N, 3, H, W) -> (N, 3, side, side), antialiased bilinear: the low-res epochs' images."""
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def mixed_transform(steps: Sequence[BatchTransform]) -> BatchTransform:
    """A BatchTransform that passes each image through one of `steps`, drawn uniformly per image from the
    batch's rng. uint8 NHWC in/out."""

    def transform(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pick = rng.integers(len(steps), size=len(x))
        return route_per_image(x, pick, steps, rng, out=np.empty_like(x))

    return transform
