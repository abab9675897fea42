"""Predictions and accuracy of a torch model on uint8 images, and the validation views the defenses make."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edge_guard import jpeg
from edge_guard.training.augment import to_tensor
from edge_guard.training.config import TrainConfig


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int = 128,
                   device: torch.device | str | None = None) -> np.ndarray:
    """Logits float32 (N, C) for uint8 (N, H, W, 3) images, computed on `device` (default: the model's);
    model in eval mode afterwards. Batches of 128 keep a CPU's activations in cache (512: 1.5-2x slower,
    benchmarks/training_speed.py)."""
    model.eval()
    device = next(model.parameters()).device if device is None else device
    outs = [model(to_tensor(images[i:i + batch_size]).to(device)).float().cpu().numpy()
            for i in range(0, len(images), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray,
             device: torch.device | str | None = None) -> float:
    """Top-1 accuracy in [0, 1] of `model` on uint8 (N, H, W, 3) images."""
    return logits_accuracy(predict_logits(model, images, device=device), labels)


def logits_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1] of logits (N, C) against int labels (N,); nan when N == 0."""
    return prediction_accuracy(logits.argmax(1) if len(labels) else logits, labels)


def prediction_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of class ids (N,) equal to the labels (N,), in [0, 1]; nan when N == 0."""
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(np.asarray(pred) == np.asarray(labels)))


def robustness_views(images: np.ndarray, config: TrainConfig, seed: int | None = None) -> dict[str, np.ndarray]:
    """The validation images as the defenses see them: "clean", "jpeg_<q>" for q in config.eval_qualities
    and "slq" (one seeded SLQ draw over config.slq_qualities). All uint8 (N, H, W, 3)."""
    views = {"clean": images}
    for q in sorted(set(config.eval_qualities)):
        views[f"jpeg_{q}"] = jpeg.roundtrip(images, q, subsampling=config.subsampling, backend=config.backend)
    rng = np.random.default_rng([config.seed if seed is None else seed, 1_000_003])
    views["slq"] = jpeg.slq(images, tuple(config.slq_qualities), rng=rng, subsampling=config.subsampling,
                            backend=config.backend)
    return views
