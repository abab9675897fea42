"""What gets exported: a vaccinated ensemble directory or a single training run, as torch models.

    run = load_run("runs/shield")        # ensemble.json -> one member per entry (+ the base model)
    run = load_run("runs/base")          # best.pt -> a 1-member run
    run = load_run("runs/base/best.pt")  # a checkpoint file -> a 1-member run

A RunSource can also be built in memory (tests, notebooks) and passed to `export_run`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from edge_guard import jpeg
from edge_guard.errors import ConfigError, expected_got
from edge_guard.spec import CodecSpec, MemberSpec, Subsampling, Vaccination, member_spec

ENSEMBLE_FILE = "ensemble.json"
CHECKPOINT_FILE = "best.pt"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class MemberSource:
    """One member: its spec and its float32 [N,3,H,W] in [0,1] -> logits [N,C] torch model."""

    spec: MemberSpec
    model: nn.Module
    checkpoint: str | None = None  # where it was loaded from, for the report

    name = property(lambda self: self.spec.name)
    vaccination = property(lambda self: self.spec.vaccination)
    quality = property(lambda self: self.spec.quality)


@dataclass(frozen=True)
class RunSource:
    """Everything the exporter needs from a run. `config` is the training run configuration
    (keys used: "data", "seed", "val_fraction"); `base` is the unvaccinated model, if known,
    used to craft the gray-box FGSM images."""

    classes: tuple[str, ...]
    input_size: tuple[int, int]  # (H, W)
    members: tuple[MemberSource, ...]
    subsampling: Subsampling = Subsampling.S420
    codec: CodecSpec | None = None  # the codec that vaccinated the members (None: unknown, this machine's)
    slq_qualities: tuple[int, ...] = jpeg.DEFAULT_SLQ_QUALITIES
    base: nn.Module | None = None
    config: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None
    kind: str = "memory"  # "ensemble" | "single" | "memory"

    @property
    def member_specs(self) -> tuple[MemberSpec, ...]:
        return tuple(m.spec for m in self.members)

    def vaccinating_codec(self) -> CodecSpec:
        """The codec recorded for the members, else the one this machine runs."""
        return self.codec or _codec({})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(expected_got(str(path), "a JSON object", type(data).__name__))
    return data


def _load(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    from edge_guard.training.models import load_checkpoint

    if not path.is_file():
        raise ConfigError(expected_got("checkpoint", "an existing .pt file", str(path),
                                       "Check the run directory (train / vaccinate write best.pt)."))
    model, ckpt = load_checkpoint(path)
    return model.eval(), ckpt


def _codec(meta: dict[str, Any]) -> CodecSpec:
    """The vaccinating codec recorded in a run, else the one this machine would use."""
    if meta.get("backend") in jpeg.BACKENDS and meta.get("codec_version"):
        return CodecSpec(backend=meta["backend"], version=str(meta["codec_version"]))
    info = jpeg.codec_info()
    return CodecSpec(backend=info["backend"], version=info["version"])


def _config(root: Path, *ckpts: dict[str, Any]) -> dict[str, Any]:
    """The run's config.json, else the run_config stored in the first checkpoint that has one."""
    if (root / CONFIG_FILE).is_file():
        return _read_json(root / CONFIG_FILE)
    for ckpt in ckpts:
        if isinstance(ckpt.get("run_config"), dict) and ckpt["run_config"]:
            return dict(ckpt["run_config"])
    return {}


def _load_single(path: Path) -> RunSource:
    model, ckpt = _load(path)
    vac = ckpt.get("vaccination") or {}
    spec = member_spec(vac.get("kind", "none"), vac.get("quality"))
    qualities = tuple(vac.get("qualities") or jpeg.DEFAULT_SLQ_QUALITIES)
    return RunSource(
        classes=tuple(ckpt["classes"]), input_size=tuple(ckpt["input_size"]),  # type: ignore[arg-type]
        members=(MemberSource(spec, model, str(path)),),
        subsampling=Subsampling(vac.get("subsampling") or "420"), codec=_codec(vac), slq_qualities=qualities,
        base=model if spec.vaccination == Vaccination.NONE else None, config=_config(path.parent, ckpt),
        root=path.parent, kind="single",
    )


def _load_ensemble(root: Path) -> RunSource:
    spec = _read_json(root / ENSEMBLE_FILE)
    for key in ("classes", "input_size", "members"):
        if key not in spec:
            raise ConfigError(expected_got(f"{root / ENSEMBLE_FILE}", f"a {key!r} entry", "none",
                                           "Re-run edgeguard vaccinate to rewrite it."))
    members, ckpts = [], []
    for i, entry in enumerate(spec["members"]):
        model, ckpt = _load(root / entry["checkpoint"])
        vaccination = Vaccination(entry.get("vaccination", "none"))
        quality = entry.get("quality") if vaccination == Vaccination.JPEG else None
        member = MemberSpec(name=entry.get("name") or f"m{i}", vaccination=vaccination,
                            quality=None if quality is None else int(quality))
        members.append(MemberSource(member, model, str(root / entry["checkpoint"])))
        ckpts.append(ckpt)
    if not members:
        raise ConfigError(expected_got(f"{root / ENSEMBLE_FILE} members", "at least one member", "[]"))
    base = None
    if spec.get("base"):
        base, base_ckpt = _load(root / spec["base"])
        ckpts.insert(0, base_ckpt)
    return RunSource(
        classes=tuple(spec["classes"]), input_size=tuple(spec["input_size"]),  # type: ignore[arg-type]
        members=tuple(members), subsampling=Subsampling(spec.get("subsampling") or "420"), codec=_codec(spec),
        slq_qualities=tuple(spec.get("slq_qualities") or jpeg.DEFAULT_SLQ_QUALITIES),
        base=base, config=_config(root, *ckpts), root=root, kind="ensemble",
    )


def load_run(path: str | Path) -> RunSource:
    """Load an ensemble directory (ensemble.json), a run directory (best.pt) or a .pt checkpoint."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".pt":
        return _load_single(p)
    if (p / ENSEMBLE_FILE).is_file():
        return _load_ensemble(p)
    if (p / CHECKPOINT_FILE).is_file():
        return _load_single(p / CHECKPOINT_FILE)
    raise ConfigError(expected_got("RUN_DIR", f"a directory with {ENSEMBLE_FILE} (edgeguard vaccinate) or "
                                   f"{CHECKPOINT_FILE} (edgeguard train), or a .pt checkpoint", str(p)))
