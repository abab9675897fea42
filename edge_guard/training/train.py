"""Training loop and base-model training. No module-level state: everything a run needs is passed in,
so a DDP wrapper can call `fit` per rank.
Under torchrun (`edgeguard train --distributed`, edge_guard.training.distributed) every rank runs `fit`: each
trains on its share of every batch through DistributedDataParallel and rank 0 alone validates and writes.

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_guard import jpeg
from edge_guard.errors import ConfigError, expected_got
from edge_guard.progress import progress_bar
from edge_guard.training import distributed
from edge_guard.training.checkpoint import build_checkpoint, make_vaccination, read_checkpoint, save_checkpoint
from edge_guard.training.config import TrainConfig
from edge_guard.training.data import Dataset, load_dataset, split_by_track
from edge_guard.training.device import resolve_device, set_threads
from edge_guard.training.models import count_parameters, create_model
from edge_guard.training.predict import logits_accuracy, predict_logits, robustness_views
from edge_guard.training.resume import resume_state
from edge_guard.training.transforms import BatchLoss, BatchTransform, jpeg_augment_transform, make_batch


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    metrics: dict[str, Any]
    epochs_completed: int
    # the best weights' logits float32 (N, C) on the validation views they were measured on
    val_logits: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def summary(self) -> list[str]:
        """What `edgeguard train` prints: validation accuracy clean, per JPEG quality and under SLQ; files."""
        m = self.metrics
        parts = [f"{100 * m['clean']:.2f}% clean", *(f"q{q} {100 * a:.1f}%" for q, a in m["jpeg"].items()),
                 f"SLQ {100 * m['slq']:.2f}%"]
        return ["val accuracy " + ", ".join(parts), f"wrote {self.best_checkpoint}, {self.out_dir / 'metrics.json'}"]


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


def train(config: TrainConfig, dataset: Dataset | None = None, *, cache_dir: str | Path | None = None,
          progress: bool = True, echo: Callable[[str], None] | None = None,
          on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
    """Train a base model (no vaccination): load + split the data, fit, measure JPEG/SLQ robustness.

    dataset: an already loaded Dataset (then config.data is only recorded); else config.data is loaded
    (decoded arrays cached in cache_dir, default ~/.cache/edgeguard). Returns a TrainResult; see the
    module docstring for the files written to config.out_dir.
    """
    set_threads(config.num_threads)
    if config.resume and not (Path(config.out_dir) / "last.pt").is_file():
        raise ConfigError(expected_got("--resume", f"a run to continue in {config.out_dir} (last.pt)", "none",
                                       "Drop --resume to start a new run, or pass the --out of the run to continue."))
    if dataset is None:
        if not config.data:
            raise ConfigError(expected_got("data", "a dataset folder (--data PATH)", "nothing"))
        dataset = load_dataset(config.data, "train", config.size, skip_bad=config.skip_bad, limit=config.limit,
                               seed=config.seed, cache_dir=cache_dir)
        if echo is not None:
            echo(dataset.report.summary())
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
        start: WarmStart | None = None, train_loss: BatchLoss | None = None) -> TrainResult:
    """Train `model` on train_set, pick the best validated epoch (config.val_every) by accuracy on
    views[val_view], write the run folder.

    views: name -> uint8 (N, H, W, 3) versions of val_set.images ("clean", "jpeg_10", ..., "slq"),
    see `robustness_views`. train_transform: the vaccination step, applied to each (augmented) batch.
    start: continue config's schedule after the epochs `warm_start` trained (model must hold its weights).
    train_loss: the loss that goes with train_transform (None: cross-entropy with config.label_smoothing).
    """
    out = Path(config.out_dir)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if last_path.exists() and not config.resume:
        raise ConfigError(expected_got(f"output folder {out}", "a new folder", "a folder with a run (last.pt)",
                                       "pass --resume to continue it, or choose another --out."))
    w = distributed.world()  # rank 0 of 1 unless started by torchrun with --distributed
    distributed.check_batch(config.batch_size, w)
    log: Callable[[str], None] = RunLog(out / "train.log", echo) if w.main else (lambda _msg: None)
    progress = progress and w.main
    device, steps, optimizer, scheduler = _prepare(model, train_set, config)
    run_config = _resolved_config(config, model, model_kwargs, train_set, val_set, vaccination, device)
    state: dict[str, Any] = {"epoch": 0, "best": -1.0, "history": []}
    if config.resume and last_path.exists():
        state = resume_state(last_path, model, optimizer, scheduler, config, vaccination, log)
    else:
        if config.resume:
            log(f"resume: no {last_path}, starting a new run")
        if start is not None:
            optimizer.load_state_dict(copy.deepcopy(start.optimizer))  # Adam's moments update in place
            scheduler.load_state_dict(start.scheduler)
            state["epoch"] = start.epochs
    if w.main:
        (out / "config.json").write_text(json.dumps(run_config, indent=2) + "\n")
    forward = distributed.wrap(model, w)  # after loading: DDP starts every rank from rank 0's weights

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
        loss, acc = _train_epoch(forward, optimizer, scheduler, train_set, config, epoch, steps, train_transform,
                                 progress, train_loss)
        side = config.side_at(epoch)  # a low-res epoch is not validated: it is not the model's input size
        validate = ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs) and side == config.size \
            and w.main
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
        if w.main:
            _save_epoch(model, optimizer, scheduler, state, record, meta, out, is_best)
        log(f"{_epoch_label(config, epoch)} loss {loss:.4f} train acc {acc:.4f} val acc "
            + (f"{val_acc:.4f}{' (best)' if is_best else ''}" if val_acc is not None else "not measured")
            + f" {record['seconds']:.1f} s")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)

    if not w.main:  # rank 0 measures and writes; the others take its metrics
        return TrainResult(out, best_path, last_path, distributed.broadcast(None, w), config.epochs)
    metrics, logits = _final_metrics(best_path, model, val_set, views, val_view, state, config, device, best_logits)
    metrics.update(train_images=len(train_set), seconds=round(time.perf_counter() - t_start, 1))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    distributed.broadcast(metrics, w)
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
    w = distributed.world()
    distributed.check_batch(config.batch_size, w)
    _, steps, optimizer, scheduler = _prepare(model, train_set, config)
    forward = distributed.wrap(model, w)
    for epoch in range(epochs):
        _train_epoch(forward, optimizer, scheduler, train_set, config, epoch, steps, transform, progress and w.main)
    return WarmStart(epochs, copy.deepcopy(optimizer.state_dict()), scheduler.state_dict())


def _prepare(model: nn.Module, train_set: Dataset, config: TrainConfig) -> tuple[torch.device, int, Any, Any]:
    """Threads, device and memory format for training; returns (device, steps per epoch, optimizer, scheduler)."""
    set_threads(config.num_threads)
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
                 progress: bool, train_loss: BatchLoss | None = None) -> tuple[float, float]:
    """One pass over `steps` full batches (the remainder is dropped; the shuffle differs every epoch).
    model: the module to train through (DDP-wrapped under torchrun: then this rank's share of each batch).
    Returns the epoch's mean loss and accuracy over all ranks' images."""
    device = next(model.parameters()).device
    w = distributed.world()
    batches = distributed.EpochBatches(len(data), config.batch_size, config.seed, w)
    batches.set_epoch(epoch)  # the shuffle, the vaccination rng, the augmentation and dropout seeds
    rng = batches.rng
    gen = torch.Generator().manual_seed(batches.augment_seed)  # augmentation
    torch.manual_seed(batches.dropout_seed)  # dropout (the only user of the global torch RNG)
    aug = config.augmentation()
    side = config.side_at(epoch)
    loss_fn = train_loss or cross_entropy_loss(config.label_smoothing)
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    with progress_bar(enabled=progress, transient=True, fields=("loss {task.fields[loss]:.3f}",)) as bar:
        task = bar.add_task(_epoch_label(config, epoch), total=steps, loss=float("nan"))
        for idx in batches:
            x = make_batch(data.images[idx], config, aug if config.augment else None, gen, transform, rng, side)
            y = torch.from_numpy(data.labels[idx]).to(device)
            loss, logits = loss_fn(model, x.to(device), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            bar.update(task, advance=1, loss=total_loss / seen)
    total_loss, correct, seen = distributed.all_sum([total_loss, correct, seen], w)
    return total_loss / seen, correct / seen


def cross_entropy_loss(label_smoothing: float = 0.0) -> BatchLoss:
    """fit's default BatchLoss: cross-entropy (with label smoothing) on the model's logits for the batch."""
    ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return ce(logits, y), logits

    return loss


def _epoch_label(config: TrainConfig, epoch: int) -> str:
    """'epoch 3/15', plus the side during low-res epochs: 'epoch 3/15 (16 px)'."""
    side = config.side_at(epoch)
    return f"epoch {epoch + 1}/{config.epochs}" + (f" ({side} px)" if side != config.size else "")


# ---------------------------------------------------------------------------------------------
# helpers


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


def _resolved_config(config: TrainConfig, model: nn.Module, model_kwargs: dict[str, Any], train_set: Dataset,
                     val_set: Dataset, vaccination: dict[str, Any], device: torch.device) -> dict[str, Any]:
    cfg = dataclasses.asdict(config)
    cfg["model_kwargs"] = dict(model_kwargs)
    cfg["resolved"] = {
        "num_classes": train_set.num_classes, "classes": list(train_set.classes), "input_size": list(train_set.size),
        "parameters": count_parameters(model), "train_images": len(train_set), "val_images": len(val_set),
        "data": train_set.report.summary(), "vaccination": vaccination, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "device": str(device), "world_size": distributed.world().size,
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
