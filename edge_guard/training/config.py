"""TrainConfig: one training run's settings, validated on construction (frozen; written to config.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_guard import jpeg
from edge_guard.errors import ConfigError, expected_got
from edge_guard.training.augment import AugmentConfig
from edge_guard.training.device import DEVICE_NAMES, is_device_name

EVAL_QUALITIES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


SLQ_QUALITIES = jpeg.DEFAULT_SLQ_QUALITIES  # SHIELD's set, as the runtime's SLQ uses


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults: the compact CNN on GTSRB (31k training images): 15 epochs; one epoch
    costs ~53 s of CPU time on one core (~30-35 s wall on 2 free cores)."""

    data: str = ""  # dataset folder (train() loads it unless a Dataset is passed)
    model: str = "compact_cnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    size: int = 32  # input side, pixels
    epochs: int = 15
    batch_size: int = 128
    lr: float = 3e-3  # peak learning rate
    weight_decay: float = 5e-2  # decoupled (AdamW) / L2 (SGD: use ~5e-4)
    optimizer: str = "adamw"  # "adamw" | "sgd" (momentum 0.9, nesterov)
    schedule: str = "onecycle"  # "onecycle" (30% warm-up) | "cosine" (no warm-up, for fine-tuning)
    seed: int = 0
    label_smoothing: float = 0.1
    augment: bool = True
    rotate_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    translate_px: float = 2.0
    brightness: float = 0.2
    contrast: float = 0.2
    num_threads: int = 2  # torch intra-op threads; 0 keeps torch's default
    device: str = "auto"  # "auto" (a CUDA GPU when torch sees one, else the CPU) | "cpu" | "cuda" | "cuda:N"
    val_fraction: float = 0.2  # split by GTSRB track
    limit: int | None = None  # load at most this many images (quick runs)
    skip_bad: bool = False
    out_dir: str = "runs/base"
    resume: bool = False
    # validate after every N-th epoch and after the last; best.pt is the best validated epoch. One pass over
    # GTSRB's 7,830 validation images costs ~7 s for ResNet-14 on 2 cores, ~10% of a training epoch
    val_every: int = 1
    eval_qualities: tuple[int, ...] = EVAL_QUALITIES
    slq_qualities: tuple[int, ...] = SLQ_QUALITIES
    # JPEG augmentation of the base: each training image is round-tripped with probability jpeg_p at a
    # quality drawn from jpeg_augment (empty: off). The base then reads JPEG nearly as well as vaccinated
    # members do, but perturbations crafted on it survive JPEG, so members fine-tuned from it lose most
    # of the gray-box defense (docs/gtsrb-experiments.md, "A JPEG-aware base"); off for bases to vaccinate.
    jpeg_augment: tuple[int, ...] = ()
    jpeg_p: float = 0.5
    subsampling: str = "420"
    backend: str = "auto"
    channels_last: bool = True  # 10-20% faster training steps on the CPU (benchmarks/training_speed.py)
    # progressive resizing: (side px, epochs) stages trained first on images downscaled (antialiased) to
    # `side`, then the remaining epochs at full size, where the model adapts to it (fast.ai's progressive
    # resizing; Touvron et al. 2019, "FixRes"). A ResNet-14 step at 16 px costs ~0.3x one at 32 px, at
    # 24 px ~0.6x (benchmarks/training_speed.py). Low-res epochs are not validated: not the model's input size
    low_res: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs", ">= 1", self.epochs),
            (self.val_every >= 1, "val_every", ">= 1 (epochs between validations)", self.val_every),
            (self.batch_size >= 2, "batch_size", ">= 2", self.batch_size),
            (self.lr > 0, "lr", "> 0", self.lr),
            (self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay),
            (self.optimizer in ("adamw", "sgd"), "optimizer", '"adamw" or "sgd"', self.optimizer),
            (self.schedule in ("onecycle", "cosine"), "schedule", '"onecycle" or "cosine"', self.schedule),
            (0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)", self.label_smoothing),
            (0 < self.val_fraction < 1, "val_fraction", "in (0, 1)", self.val_fraction),
            (self.size >= 8, "size", ">= 8", self.size),
            (self.num_threads >= 0, "num_threads", ">= 0", self.num_threads),
            (is_device_name(self.device), "device", DEVICE_NAMES, self.device),
            (all(1 <= q <= 100 for q in self.eval_qualities), "eval_qualities (--eval-qualities)",
             "JPEG qualities in 1..100", self.eval_qualities),
            (all(1 <= q <= 100 for q in self.slq_qualities), "slq_qualities", "JPEG qualities in 1..100",
             self.slq_qualities),
            (all(1 <= q <= 100 for q in self.jpeg_augment), "jpeg_augment", "JPEG qualities in 1..100",
             self.jpeg_augment),
            (0 <= self.jpeg_p <= 1, "jpeg_p", "in [0, 1]", self.jpeg_p),
            (all(isinstance(stage, (tuple, list)) and len(stage) == 2 and 8 <= stage[0] < self.size
                 and stage[1] >= 1 for stage in self.low_res), "low_res",
             f"(side, epochs) stages with side in 8..{self.size - 1} and epochs >= 1", self.low_res),
        ]
        for ok, what, expected, got in checks:
            if not ok:
                raise ConfigError(expected_got(what, expected, got))
        if sum(epochs for _, epochs in self.low_res) >= self.epochs:  # the stages are well-formed by now
            raise ConfigError(expected_got("low_res", f"fewer low-res epochs than epochs ({self.epochs}), so the "
                                           "model ends at full size", self.low_res))
        self.augmentation()  # validates the jitter ranges

    def side_at(self, epoch: int) -> int:
        """Training image side, pixels, for 0-based `epoch` (config.size once the low_res stages are done)."""
        end = 0
        for side, epochs in self.low_res:
            end += epochs
            if epoch < end:
                return side
        return self.size

    def augmentation(self) -> AugmentConfig:
        return AugmentConfig(self.rotate_deg, tuple(self.scale_range), self.translate_px,  # type: ignore[arg-type]
                             self.brightness, self.contrast)
