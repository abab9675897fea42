"""Model registry and the classifiers EdgeGuard trains.

Every model takes float32 NCHW images in [0, 1] and returns logits (N, num_classes). Per-channel
normalization ((x - mean) / std) is a layer inside the model, with mean/std as buffers, so an exported
ONNX graph is self-contained (the bundle manifest then says mean=0, std=1, scale=1/255).

    model = create_model("compact_cnn", num_classes=43, mean=(0.34, 0.31, 0.32), std=(0.28, 0.26, 0.27))
    list_models()  # ["compact_cnn", "resnet14", "resnet_small"]

Checkpoints (`edge_guard.training.checkpoint.load_checkpoint`) rebuild their model through this registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from edge_guard.errors import ConfigError, expected_got

# GTSRB training-set statistics (RGB, [0, 1]); training passes the statistics of its own data.
DEFAULT_MEAN = (0.340, 0.312, 0.321)
DEFAULT_STD = (0.276, 0.265, 0.271)

_MODELS: dict[str, Callable[..., nn.Module]] = {}
M = TypeVar("M", bound=Callable[..., nn.Module])


def register_model(name: str) -> Callable[[M], M]:
    """Decorator: register a model factory `fn(num_classes, **kwargs) -> nn.Module` under `name`."""

    def wrap(fn: M) -> M:
        if name in _MODELS:
            raise ConfigError(f"model name {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered model. Input float32 (N, 3, H, W) in [0, 1]; output logits (N, num_classes)."""
    if name not in _MODELS:
        raise ConfigError(expected_got("model", "one of " + ", ".join(list_models()), repr(name)))
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(expected_got("num_classes", "an integer >= 2", num_classes))
    try:
        return _MODELS[name](num_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: bad options {sorted(kwargs)}: {exc}") from None


class Normalize(nn.Module):
    """(x - mean) / std per channel; x float32 (N, 3, H, W) in [0, 1]. mean/std are buffers (exported)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError(expected_got("mean/std", "3 values each, std > 0", f"mean={mean}, std={std}"))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias: BN follows), batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class CompactCNN(nn.Module):
    """Small VGG-style CNN for 32x32 signs, sized for a Raspberry-Pi-class CPU.

    One stage per entry of `widths` (default 32-64-128): `convs` 3x3 conv-BN-ReLU layers and a 2x2
    max-pool each (32 -> 16 -> 8 -> 4 px). Head "flatten" keeps where things are in the sign (the
    digits of speed limits) with one linear layer on the 4x4x128 map; head "gap" averages over space
    (any input size). Default: ~0.18M parameters, ~10M multiply-adds per 32x32 image; one training
    epoch over 31k GTSRB images takes ~53 s of CPU time on one core.
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 128), convs: int = 1,
                 head: str = "flatten", input_size: Sequence[int] = (32, 32), dropout: float = 0.3,
                 mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD):
        super().__init__()
        down = 2 ** len(widths)
        h, w = int(input_size[0]), int(input_size[1])
        if head not in ("flatten", "gap"):
            raise ConfigError(expected_got("compact_cnn head", '"flatten" or "gap"', repr(head)))
        if h % down or w % down:
            raise ConfigError(expected_got("compact_cnn input_size", f"multiples of {down}", (h, w)))
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        cin = 3
        for width in widths:
            for _ in range(convs):
                layers.append(conv_bn_relu(cin, width))
                cin = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool: nn.Module = nn.AdaptiveAvgPool2d(1) if head == "gap" else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin if head == "gap" else cin * (h // down) * (w // down), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv shortcut when the shape changes (plain ops, exports to ONNX)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNetSmall(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): depth = 6n + 2 (20 -> 3 blocks per stage), widths 16-32-64.

    ResNet-20: ~0.27M parameters, ~41M multiply-adds per 32x32 image.
    """

    def __init__(self, num_classes: int, depth: int = 20, width: int = 16, mean: Sequence[float] = DEFAULT_MEAN,
                 std: Sequence[float] = DEFAULT_STD):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(expected_got("resnet_small depth", "6n + 2 (8, 14, 20, 32, ...)", depth))
        n = (depth - 2) // 6
        self.normalize = Normalize(mean, std)
        self.stem = conv_bn_relu(3, width)
        blocks: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model("compact_cnn")
def compact_cnn(num_classes: int, **kwargs: Any) -> nn.Module:
    return CompactCNN(num_classes, **kwargs)


@register_model("resnet_small")
def resnet_small(num_classes: int, **kwargs: Any) -> nn.Module:
    return ResNetSmall(num_classes, **kwargs)


@register_model("resnet14")
def resnet14(num_classes: int, **kwargs: Any) -> nn.Module:
    """ResNet-14 (2 blocks per stage): ~0.17M parameters, ~27M multiply-adds per 32x32 image; on GTSRB
    its vaccinated ensemble is within 0.1 point of ResNet-20's at about 2/3 of the training time."""
    return ResNetSmall(num_classes, **{"depth": 14, **kwargs})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

