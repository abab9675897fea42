"""Training loop and base-model training. No module-level state: everything a run needs is passed in,
so a DDP wrapper can call `fit` per rank.

    cfg = TrainConfig(data="data/gtsrb", epochs=15, out_dir="runs/base")
    result = train(cfg)            # loads + splits the data, trains, writes the run folder
    result.metrics["clean"], result.best_checkpoint

A run folder holds last.pt (every epoch, for --resume), best.pt (best val accuracy), config.json
(resolved run config), metrics.json (val accuracy clean, per JPEG quality 10..90 and under SLQ) and
train.log. Every epoch draws its shuffle, augmentation and dropout randomness from (seed, epoch)
(dropout through torch's global generator, re-seeded at each epoch start), so a resumed run
continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn import functional as F

from edge_guard import jpeg
from edge_guard.errors import ConfigError, expected_got
from edge_guard.training.augment import AugmentConfig, augment_batch, to_tensor, to_uint8
from edge_guard.training.checkpoint import build_checkpoint, make_vaccination, read_checkpoint, save_checkpoint
from edge_guard.training.data import Dataset, load_dataset, split_by_track
from edge_guard.training.models import count_parameters, create_model

# A batch transform applied AFTER augmentation on uint8 NHWC images (the JPEG step of vaccination):
# fn(images uint8 (N, H, W, 3), rng) -> uint8 (N, H, W, 3).
BatchTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
EVAL_QUALITIES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
DEVICE_NAMES = "auto, cpu, cuda or cuda:N"  # --device values; see resolve_device
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
            (all(1 <= q <= 100 for q in self.eval_qualities + self.slq_qualities), "JPEG qualities", "1..100",
             self.eval_qualities + self.slq_qualities),
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


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    metrics: dict[str, Any]
    epochs_completed: int
    # the best weights' logits float32 (N, C) on the validation views they were measured on
    val_logits: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


class RunLog:
    """Appends timestamped lines to <run>/train.log and optionally echoes them to a console."""

    def __init__(self, path: Path, echo: Callable[[str], None] | None = None) -> None:
        self.path, self.echo = path, echo
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        if self.echo is not None:
            self.echo(message)


# ---------------------------------------------------------------------------------------------
# base training


def train(config: TrainConfig, dataset: Dataset | None = None, *, progress: bool = True,
          echo: Callable[[str], None] | None = None,
          on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
    """Train a base model (no vaccination): load + split the data, fit, measure JPEG/SLQ robustness.

    dataset: an already loaded Dataset (then config.data is only recorded). Returns a TrainResult;
    see the module docstring for the files written to config.out_dir.
    """
    _set_threads(config)
    if dataset is None:
        if not config.data:
            raise ConfigError(expected_got("data", "a dataset folder (--data PATH)", "nothing"))
        dataset = load_dataset(config.data, "train", config.size, skip_bad=config.skip_bad, limit=config.limit,
                               seed=config.seed)
    train_set, val_set = split_by_track(dataset, config.val_fraction, config.seed)
    mean, std = channel_stats(train_set.images)
    model_kwargs = {"mean": mean, "std": std, **config.model_kwargs}
    if config.model == "compact_cnn":
        model_kwargs.setdefault("input_size", list(train_set.size))
    torch.manual_seed(config.seed)  # weight init
    model = create_model(config.model, train_set.num_classes, **model_kwargs)
    views = robustness_views(val_set.images, config)
    codec = _codec_info(config)
    transform = (jpeg_augment_transform(config.jpeg_augment, config.jpeg_p, config.subsampling, config.backend)
                 if config.jpeg_augment and config.jpeg_p > 0 else None)
    return fit(model, train_set, val_set, config, model_kwargs=model_kwargs,
               vaccination=make_vaccination("none", None, None, codec, config.subsampling),
               val_view="clean", views=views, train_transform=transform, progress=progress, echo=echo,
               on_epoch_end=on_epoch_end)


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


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NHWC images, in [0, 1] units (rounded, for readable configs)."""
    sample = images[:: max(1, len(images) // 10000)].reshape(-1, 3).astype(np.float64) / 255.0
    mean, std = sample.mean(0), np.maximum(sample.std(0), 1e-3)
    return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in std]


# ---------------------------------------------------------------------------------------------
# the loop


def fit(model: nn.Module, train_set: Dataset, val_set: Dataset, config: TrainConfig, *,
        model_kwargs: dict[str, Any], vaccination: dict[str, Any], val_view: str,
        views: dict[str, np.ndarray], train_transform: BatchTransform | None = None, progress: bool = True,
        echo: Callable[[str], None] | None = None,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
        start: WarmStart | None = None) -> TrainResult:
    """Train `model` on train_set, pick the best validated epoch (config.val_every) by accuracy on
    views[val_view], write the run folder.

    views: name -> uint8 (N, H, W, 3) versions of val_set.images ("clean", "jpeg_10", ..., "slq"),
    see `robustness_views`. train_transform: the vaccination step, applied to each (augmented) batch.
    start: continue config's schedule after the epochs `warm_start` trained (model must hold its weights).
    """
    out = Path(config.out_dir)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if last_path.exists() and not config.resume:
        raise ConfigError(expected_got(f"output folder {out}", "a new folder", "a folder with a run (last.pt)",
                                       "pass --resume to continue it, or choose another --out."))
    log = RunLog(out / "train.log", echo)
    device, steps, optimizer, scheduler = _prepare(model, train_set, config)
    run_config = _resolved_config(config, model, model_kwargs, train_set, val_set, vaccination, device)
    state: dict[str, Any] = {"epoch": 0, "best": -1.0, "history": []}
    if config.resume and last_path.exists():
        state = _resume(last_path, model, optimizer, scheduler, config, vaccination, log)
    else:
        if config.resume:
            log(f"resume: no {last_path}, starting a new run")
        if start is not None:
            optimizer.load_state_dict(copy.deepcopy(start.optimizer))  # Adam's moments update in place
            scheduler.load_state_dict(start.scheduler)
            state["epoch"] = start.epochs
    (out / "config.json").write_text(json.dumps(run_config, indent=2) + "\n")

    t_start = time.perf_counter()
    log(f"train {config.model} ({count_parameters(model)} params) on {len(train_set)} images, "
        f"val {len(val_set)} ({val_view}), epochs {state['epoch'] + 1}..{config.epochs}, "
        f"vaccination {vaccination['kind']}"
        + (f" {vaccination.get('quality') or vaccination.get('qualities')}" if vaccination["kind"] != "none" else "")
        + (", low-res epochs first: " + ", ".join(f"{n} at {side} px" for side, n in config.low_res)
           if config.low_res else ""))
    val_images, val_labels = views[val_view], val_set.labels
    best_logits: dict[str, np.ndarray] = {}  # the best epoch's logits on views[val_view], reused at the end
    for epoch in range(state["epoch"], config.epochs):
        t0 = time.perf_counter()
        loss, acc = _train_epoch(model, optimizer, scheduler, train_set, config, epoch, steps, train_transform,
                                 progress)
        side = config.side_at(epoch)  # a low-res epoch is not validated: it is not the model's input size
        validate = ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs) and side == config.size
        epoch_logits = predict_logits(model, val_images, device=device) if validate else None
        val_acc = logits_accuracy(epoch_logits, val_labels) if epoch_logits is not None else None
        record = {"epoch": epoch + 1, "train_loss": round(loss, 5), "train_accuracy": round(acc, 5),
                  "val_accuracy": round(val_acc, 5) if val_acc is not None else None,
                  "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 2)}
        state["history"].append(record)
        is_best = val_acc is not None and val_acc > state["best"]
        if is_best:
            state["best"], best_logits = val_acc, {val_view: epoch_logits}
        meta = dict(model_name=config.model, model_kwargs=model_kwargs, classes=list(train_set.classes),
                    input_size=train_set.size, vaccination=vaccination, run_config=run_config)
        _save_epoch(model, optimizer, scheduler, state, record, meta, out, is_best)
        log(f"{_epoch_label(config, epoch)} loss {loss:.4f} train acc {acc:.4f} val acc "
            + (f"{val_acc:.4f}{' (best)' if is_best else ''}" if val_acc is not None else "not measured")
            + f" {record['seconds']:.1f} s")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)

    metrics, logits = _final_metrics(best_path, model, val_set, views, val_view, state, config, device, best_logits)
    metrics.update(train_images=len(train_set), seconds=round(time.perf_counter() - t_start, 1))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    jpeg_accs = " ".join(f"q{q}={a:.3f}" for q, a in metrics["jpeg"].items())
    log(f"best val acc {metrics['val_accuracy']:.4f} ({val_view}); clean {metrics['clean']:.4f}, "
        + (f"jpeg {jpeg_accs}, " if jpeg_accs else "") + f"slq {metrics['slq']:.4f}")
    return TrainResult(out, best_path, last_path, metrics, config.epochs, logits)


@dataclass(frozen=True)
class WarmStart:
    """The first `epochs` epochs of a schedule, trained once: optimizer and scheduler state to continue from."""

    epochs: int
    optimizer: dict[str, Any] = field(repr=False)
    scheduler: dict[str, Any] = field(repr=False)


def warm_start(model: nn.Module, train_set: Dataset, config: TrainConfig, epochs: int,
               transform: BatchTransform | None = None, progress: bool = True) -> WarmStart:
    """Train `model` in place for the first `epochs` epochs of config's schedule (no validation, no files).

    `fit(..., start=result)` on a copy of the model then trains the remaining epochs exactly as an
    uninterrupted run would (same learning rates, same per-epoch randomness)."""
    if not 0 < epochs < config.epochs:
        raise ConfigError(expected_got("warm-start epochs", f"1..{config.epochs - 1} (fewer than --epochs)", epochs))
    _, steps, optimizer, scheduler = _prepare(model, train_set, config)
    for epoch in range(epochs):
        _train_epoch(model, optimizer, scheduler, train_set, config, epoch, steps, transform, progress)
    return WarmStart(epochs, copy.deepcopy(optimizer.state_dict()), scheduler.state_dict())


def _prepare(model: nn.Module, train_set: Dataset, config: TrainConfig) -> tuple[torch.device, int, Any, Any]:
    """Threads, device and memory format for training; returns (device, steps per epoch, optimizer, scheduler)."""
    _set_threads(config)
    device = resolve_device(config.device)
    model.to(device)
    _check_low_res(model, config, device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    steps = max(1, len(train_set) // config.batch_size)
    return (device, steps, *_make_optimizer(model, config, steps))


def _check_low_res(model: nn.Module, config: TrainConfig, device: torch.device) -> None:
    """Fail before training when the model cannot take a low_res stage's side (e.g. a flatten head)."""
    for side, _ in config.low_res:
        if not accepts_side(model, side, device):
            raise ConfigError(expected_got(
                "low_res", f"a model that takes {side}x{side} images", f"{config.model}, which does not",
                "use a model with global pooling (resnet14, resnet_small, compact_cnn with head gap) "
                "or train without low-res epochs."))


def accepts_side(model: nn.Module, side: int, device: torch.device | str = "cpu") -> bool:
    """Whether `model` runs on float32 (1, 3, side, side) inputs (a flatten head takes one input size only).
    The probe runs in eval mode (no batch-norm statistics change) and restores the model's mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, side, side, device=device))
        return True
    except RuntimeError:
        return False
    finally:
        model.train(was_training)


def _save_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, state: dict[str, Any],
                record: dict[str, Any], meta: dict[str, Any], out: Path, is_best: bool) -> None:
    """best.pt (weights only, when val accuracy improved) and last.pt (plus optimizer/scheduler/history)."""
    ckpt = build_checkpoint(model, **meta, epoch=record["epoch"], optimizer=None, metrics=record)
    if is_best:
        save_checkpoint(ckpt, out / "best.pt")
    save_checkpoint({**ckpt, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "best_val_accuracy": state["best"], "history": state["history"]}, out / "last.pt")


def _train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, data: Dataset,
                 config: TrainConfig, epoch: int, steps: int, transform: BatchTransform | None,
                 progress: bool) -> tuple[float, float]:
    """One pass over `steps` full batches (the remainder is dropped; the shuffle differs every epoch)."""
    device = next(model.parameters()).device
    rng = np.random.default_rng([config.seed, epoch])  # shuffle + vaccination randomness
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))  # augmentation
    torch.manual_seed(int(rng.integers(2**62)))  # dropout (the only user of the global torch RNG)
    order = rng.permutation(len(data))
    aug = config.augmentation()
    side = config.side_at(epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    columns = (TextColumn(_epoch_label(config, epoch)), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn())
    console = Console()
    with Progress(*columns, console=console, disable=not (progress and console.is_terminal), transient=True) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))
        for step in range(steps):
            idx = np.sort(order[step * config.batch_size:(step + 1) * config.batch_size])
            x = make_batch(data.images[idx], config, aug if config.augment else None, gen, transform, rng, side)
            y = torch.from_numpy(data.labels[idx]).to(device)
            logits = model(x.to(device))
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            bar.update(task, advance=1, loss=total_loss / seen)
    return total_loss / seen, correct / seen


def _epoch_label(config: TrainConfig, epoch: int) -> str:
    """'epoch 3/15', plus the side during low-res epochs: 'epoch 3/15 (16 px)'."""
    side = config.side_at(epoch)
    return f"epoch {epoch + 1}/{config.epochs}" + (f" ({side} px)" if side != config.size else "")


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
    if len(labels) == 0:
        return float("nan")
    return float((logits.argmax(1) == labels).mean())


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


# ---------------------------------------------------------------------------------------------
# helpers


def is_device_name(name: object) -> bool:
    """Whether `name` is a --device value (DEVICE_NAMES); resolve_device checks that it exists."""
    return isinstance(name, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", name) is not None


def resolve_device(name: str) -> torch.device:
    """The torch device for --device: "auto" is the first CUDA GPU when torch sees one, else the CPU;
    "cuda"/"cuda:N" must exist (a clear error instead of a crash at the first batch)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= count:
        got = (f"{count} CUDA device(s)" if count else
               f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})")
        raise ConfigError(expected_got("--device", f"CUDA device {index}", got,
                                       "pass --device cpu (or auto), or install a CUDA build of torch."))
    return torch.device(name)


def _set_threads(config: TrainConfig) -> None:
    if config.num_threads > 0 and torch.get_num_threads() != config.num_threads:
        torch.set_num_threads(config.num_threads)


def _codec_info(config: TrainConfig) -> dict[str, Any]:
    return dict(jpeg.codec_info(config.backend, config.subsampling))


def _make_optimizer(model: nn.Module, config: TrainConfig, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    # no weight decay on biases and batch-norm parameters (1-D tensors)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=config.lr)
    else:
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    total = steps * config.epochs
    if config.schedule == "onecycle":
        sched: Any = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total, pct_start=0.3)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=config.lr * 0.01)
    return opt, sched


# run-config keys that must match for --resume (they shape the schedule, the split or the model)
_RESUME_KEYS = ("model", "epochs", "batch_size", "lr", "optimizer", "schedule", "seed", "val_fraction", "limit",
                "size", "jpeg_augment", "jpeg_p")
_RESUME_VACCINATION = ("kind", "quality", "qualities", "subsampling", "adversarial")


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
            config: TrainConfig, vaccination: dict[str, Any], log: RunLog) -> dict[str, Any]:
    ckpt = read_checkpoint(path)
    old = ckpt["run_config"]
    # compared as JSON (tuples are lists there); a key an older run lacks counts as its default
    now, default = ({k: json.loads(json.dumps(getattr(c, k))) for k in _RESUME_KEYS} for c in (config, TrainConfig()))
    diff = {k: (old.get(k, default[k]), now[k]) for k in _RESUME_KEYS if old.get(k, default[k]) != now[k]}
    diff.update({f"vaccination.{k}": (ckpt["vaccination"].get(k), vaccination.get(k)) for k in _RESUME_VACCINATION
                 if ckpt["vaccination"].get(k) != vaccination.get(k)})
    if diff:
        raise ConfigError(expected_got(f"--resume of {path}", "the same settings as the interrupted run",
                                       "changes " + ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items())))
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    log(f"resumed from {path} after epoch {ckpt['epoch']}")
    return {"epoch": int(ckpt["epoch"]), "best": float(ckpt["best_val_accuracy"]), "history": list(ckpt["history"])}


def _resolved_config(config: TrainConfig, model: nn.Module, model_kwargs: dict[str, Any], train_set: Dataset,
                     val_set: Dataset, vaccination: dict[str, Any], device: torch.device) -> dict[str, Any]:
    cfg = dataclasses.asdict(config)
    cfg["model_kwargs"] = dict(model_kwargs)
    cfg["resolved"] = {
        "num_classes": train_set.num_classes, "classes": list(train_set.classes), "input_size": list(train_set.size),
        "parameters": count_parameters(model), "train_images": len(train_set), "val_images": len(val_set),
        "data": train_set.report.summary(), "vaccination": vaccination, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    return json.loads(json.dumps(cfg, default=str))  # plain JSON types only (checkpoints load weights_only)


def _final_metrics(best_path: Path, model: nn.Module, val_set: Dataset, views: dict[str, np.ndarray],
                   val_view: str, state: dict[str, Any], config: TrainConfig, device: torch.device,
                   known: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Reload the best weights, measure val accuracy clean, per JPEG quality and under SLQ; store in best.pt.
    known: logits the best weights already gave this run (not predicted again). Returns the metrics and the
    logits per view."""
    ckpt = read_checkpoint(best_path)
    model.load_state_dict(ckpt["model"])
    names = {"clean", val_view, "slq", *(f"jpeg_{q}" for q in config.eval_qualities)}
    logits = {name: known[name] if name in known else predict_logits(model, views[name], device=device)
              for name in sorted(names)}
    acc = {name: round(logits_accuracy(lg, val_set.labels), 5) for name, lg in logits.items()}
    metrics = {
        "val_accuracy": acc[val_view], "val_preprocessing": val_view, "best_epoch": int(ckpt["epoch"]),
        "epochs": config.epochs, "clean": acc["clean"],
        "jpeg": {str(q): acc[f"jpeg_{q}"] for q in config.eval_qualities},
        "slq": acc["slq"], "slq_qualities": list(config.slq_qualities), "val_images": len(val_set),
    }
    save_checkpoint({**ckpt, "metrics": metrics}, best_path)
    return {**metrics, "history": state["history"]}, logits
