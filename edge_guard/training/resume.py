"""--resume: continue an interrupted run from its last.pt, refusing one whose settings changed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_guard.errors import ConfigError, expected_got
from edge_guard.training.checkpoint import read_checkpoint
from edge_guard.training.config import TrainConfig

# run-config keys that must match for --resume (they shape the schedule, the split or the model)
_RESUME_KEYS = ("model", "epochs", "batch_size", "lr", "optimizer", "schedule", "seed", "val_fraction", "limit",
                "size", "jpeg_augment", "jpeg_p")
_RESUME_VACCINATION = ("kind", "quality", "qualities", "subsampling", "adversarial")


def resume_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 config: TrainConfig, vaccination: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Load last.pt into model, optimizer and scheduler after checking the run's settings did not change;
    returns the loop state (epoch, best val accuracy, history)."""
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
