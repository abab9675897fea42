"""The small base class every attack derives from (torchattacks-style).

An attack is built once around a model and called on batches:

    attack = PGD(model, eps=8/255)
    adv = attack(images, labels)        # float32 (N, 3, H, W) in [0, 1]

`Attack.__call__` checks the inputs, puts the model in eval mode for the attack (so batch norm
uses its running statistics and dropout is off), enables gradients even inside `torch.no_grad()`,
and afterwards restores every submodule's own train/eval flag. Gradients are taken with
`torch.autograd.grad` with respect to the images only, so the model's `.grad` fields are untouched.

Docstring template of an attack (keep it for new attacks):
    <Name> from '<paper title>' (<authors>, <venue year>) [<arXiv link>].
    Distance measure: <Linf | L2>.
    Arguments: model, then each hyperparameter with its unit and default.
    Shape: images (N, C, H, W) float32 in [0, 1]; labels (N,) int64 class ids;
           output (N, C, H, W) float32 in [0, 1].
    Example: >>> attack = <Name>(model, ...); adv = attack(images, labels)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edge_guard.errors import InputError, expected_got


class Attack:
    """Base class: subclasses implement `forward(images, labels) -> adv_images`.

    Arguments:
        model (nn.Module): maps float32 (N, C, H, W) images in [0, 1] to logits (N, K).
            Normalization, if any, lives inside the model.
    """

    name = "Attack"

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(expected_got("model", "a torch.nn.Module", type(model).__name__))
        self.model = model

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def get_logits(self, images: Tensor) -> Tensor:
        """The model's logits (N, K) for float32 images (N, C, H, W) in [0, 1]."""
        return self.model(images)

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        images, labels = check_batch(images, labels)
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            with torch.enable_grad():
                adv = self.forward(images, labels)
        finally:
            for module, training in modes:
                module.training = training
        return adv.detach()

    def hyperparameters(self) -> dict[str, object]:
        """The attack's settings (public attributes other than the model), for reports."""
        return {k: v for k, v in vars(self).items() if k != "model" and not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


def check_batch(images: object, labels: object) -> tuple[Tensor, Tensor]:
    """Validate an attack's inputs; return (images float32 detached, labels int64 on images' device)."""
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise InputError(expected_got("images", "a float tensor (N, C, H, W) in [0, 1]", got))
    if images.numel() == 0:
        raise InputError(expected_got("images", "a non-empty batch", tuple(images.shape)))
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
        raise InputError(
            expected_got("image values", "the range [0, 1]", f"[{lo:.4g}, {hi:.4g}]",
                         "Divide uint8 images by 255; normalization belongs inside the model.")
        )
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise InputError(expected_got("labels", f"an integer tensor of shape ({images.shape[0]},)", got))
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(expected_got("labels dtype", "an integer dtype (class ids)", labels.dtype))
    return images.detach().float(), labels.detach().to(images.device, torch.int64)
