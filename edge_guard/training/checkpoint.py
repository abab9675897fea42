"""Training checkpoints: one torch .pt dict that carries everything needed to rebuild the model.

Contract (keys always present):
    model          state_dict
    model_name     registry name, e.g. "compact_cnn"
    model_kwargs   kwargs for create_model (includes the normalization mean/std)
    classes        [class name, ...] (index = class id)
    input_size     [H, W]
    vaccination    {"kind": "none"|"jpeg"|"slq", "quality": int|None, "qualities": [int]|None,
                    "subsampling": "420", "backend": str, "codec_version": str,
                    "adversarial": None | AdversarialConfig.to_dict() (edge_guard.training.adversarial)}
    run_config     the resolved run configuration (dict)
    epoch          completed epochs
    optimizer      optimizer state_dict (last.pt), None in best.pt (inference / fine-tuning only)
    metrics        dict of measured numbers
last.pt adds "scheduler", "best_val_accuracy" and "history" for resuming.
Files are written atomically (temp file + rename) and read with torch.load(weights_only=True).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_guard.errors import ConfigError, expected_got
from edge_guard.spec import Vaccination
from edge_guard.training.models import create_model

REQUIRED_KEYS = ("model", "model_name", "model_kwargs", "classes", "input_size", "vaccination", "run_config",
                 "epoch", "optimizer", "metrics")
VACCINATION_KINDS = Vaccination.values()


def make_vaccination(kind: str, quality: int | None, qualities: list[int] | None, codec: dict[str, Any],
                     subsampling: str = "420", adversarial: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint's "vaccination" entry; `codec` is edge_guard.jpeg.codec_info(), `adversarial` the
    adversarial-vaccination record (None: plain vaccination)."""
    if kind not in VACCINATION_KINDS:
        raise ConfigError(expected_got("vaccination kind", VACCINATION_KINDS, repr(kind)))
    return {"kind": str(kind), "quality": quality, "qualities": list(qualities) if qualities is not None else None,
            "subsampling": str(subsampling), "backend": str(codec.get("backend", "")),
            "codec_version": str(codec.get("version", "")), "adversarial": adversarial}


def build_checkpoint(model: nn.Module, *, model_name: str, model_kwargs: dict[str, Any], classes: list[str],
                     input_size: tuple[int, int], vaccination: dict[str, Any], run_config: dict[str, Any],
                     epoch: int, optimizer: dict[str, Any] | None, metrics: dict[str, Any],
                     **extra: Any) -> dict[str, Any]:
    """Assemble a checkpoint dict following the contract above (plus `extra` keys)."""
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}  # loads anywhere
    return {"model": state, "model_name": model_name, "model_kwargs": dict(model_kwargs), "classes": list(classes),
            "input_size": [int(input_size[0]), int(input_size[1])], "vaccination": dict(vaccination),
            "run_config": dict(run_config), "epoch": int(epoch), "optimizer": optimizer, "metrics": dict(metrics),
            **extra}


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> Path:
    """Write atomically, so an interrupted save never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint dict (no model built). ConfigError if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(expected_got("checkpoint", "an existing .pt file", str(path),
                                       "train one with `edgeguard train` first."))
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise ConfigError(expected_got(f"checkpoint {path}", "a .pt file written by edgeguard train or vaccinate",
                                       f"a file torch cannot read ({exc.__class__.__name__})",
                                       "Pass the run's best.pt, e.g. runs/gtsrb-base/best.pt.")) from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ConfigError(expected_got(f"checkpoint {path}", f"keys {list(REQUIRED_KEYS)}", f"missing {missing}"))
    if ckpt["vaccination"].get("kind") not in VACCINATION_KINDS:
        raise ConfigError(expected_got(f"checkpoint {path} vaccination.kind", VACCINATION_KINDS,
                                       ckpt["vaccination"].get("kind")))
    return ckpt


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the checkpoint's model with its weights, in eval mode. Returns (model, checkpoint dict)."""
    ckpt = read_checkpoint(path, map_location)
    model = create_model(ckpt["model_name"], len(ckpt["classes"]), **ckpt["model_kwargs"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint {path}: weights do not fit model {ckpt['model_name']!r}: {exc}") from None
    return model.eval(), ckpt
