"""A training run reopened: an ensemble folder (ensemble.json), a run folder (best.pt) or one checkpoint,
as torch members with their specs, the typed run configuration, and the run's own data.

    run = Run.open("runs/shield")        # ensemble.json -> one member per entry (+ the base model)
    run = Run.open("runs/base")          # best.pt -> a 1-member run
    run = Run.open("runs/base/best.pt")  # a checkpoint file -> a 1-member run
    data = run.dataset(limit=2000)       # its held-out validation tracks (split="test": the official test set)

A Run can also be built in memory (tests, notebooks) and passed to `export_run` or `evaluate`.

The validation images are the ones training held out: the dataset at `data` (else the path in the
run's config), split by track with the run's seed and val_fraction (`split_by_track`), then capped
at `limit` images (a seeded random subset). split="test" takes the dataset's official test set
instead (GTSRB `GT-final_test.csv`, Kaggle `Test.csv`, CIFAR-10 `test_batch`), never seen in
training or tuning. int8 calibration uses a few hundred images from the training side of the split.
Without any data path only random-input parity runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np
from torch import nn

from edge_guard import jpeg
from edge_guard.errors import ConfigError, DataError, expected_got
from edge_guard.schema import decode
from edge_guard.spec import (
    DEFAULT_SLQ_QUALITIES,
    CodecBackend,
    CodecSpec,
    MemberSpec,
    NonEmptyStr,
    Positive,
    Quality,
    Spec,
    Subsampling,
    Vaccination,
    member_spec,
)
from edge_guard.training.choices import Split
from edge_guard.training.config import TrainConfig

ENSEMBLE_FILE = "ensemble.json"
CHECKPOINT_FILE = "best.pt"
CONFIG_FILE = "config.json"
DEFAULT_LIMIT = 2000
SPLITS = Split.values()


# ----------------------------------------------------------------------------- ensemble.json schema


class EnsembleMember(MemberSpec, kw_only=True):
    """A member as ensemble.json lists it: its spec and its checkpoint, relative to the ensemble folder."""

    checkpoint: NonEmptyStr


class EnsembleFile(Spec, kw_only=True):
    """ensemble.json, written by `edgeguard vaccinate`."""

    classes: Annotated[tuple[NonEmptyStr, ...], msgspec.Meta(min_length=1)]
    input_size: tuple[Positive, Positive]
    subsampling: Subsampling = Subsampling.S420
    backend: CodecBackend | None = None  # the codec that vaccinated the members
    codec_version: str = ""
    slq_qualities: tuple[Quality, ...] = DEFAULT_SLQ_QUALITIES
    base: str | None = None  # the base checkpoint, relative to the ensemble folder
    epochs: int | None = None
    shared_epochs: int = 0
    lr: float | None = None
    adversarial: dict[str, Any] | None = None  # AdversarialConfig.to_dict(), None: plain vaccination
    members: Annotated[tuple[EnsembleMember, ...], msgspec.Meta(min_length=1)]


def train_config(run_config: dict[str, Any], where: str = "run config") -> TrainConfig:
    """TrainConfig from a config.json / checkpoint run_config, validated by its dataclass schema (types by
    key path, then TrainConfig's own range checks). The "resolved" record is left out; keys of another
    version are ignored, so runs from older releases reopen."""
    fields = {k: v for k, v in run_config.items() if k != "resolved"}
    return decode(fields, TrainConfig, error=ConfigError, root=where)


@dataclass(frozen=True)
class RunMember:
    """One member: its spec and its float32 [N,3,H,W] in [0,1] -> logits [N,C] torch model."""

    spec: MemberSpec
    model: nn.Module
    checkpoint: str | None = None  # where it was loaded from, for the report

    name = property(lambda self: self.spec.name)
    vaccination = property(lambda self: self.spec.vaccination)
    quality = property(lambda self: self.spec.quality)


@dataclass(frozen=True)
class Run:
    """A run's members and what they were trained with. `config` is the training configuration (its
    data, seed, val_fraction, limit and skip_bad reproduce the split); `base` is the unvaccinated model,
    if known, used to craft gray-box attacks."""

    classes: tuple[str, ...]
    input_size: tuple[int, int]  # (H, W)
    members: tuple[RunMember, ...]
    subsampling: Subsampling = Subsampling.S420
    codec: CodecSpec | None = None  # the codec that vaccinated the members (None: unknown, this machine's)
    slq_qualities: tuple[int, ...] = jpeg.DEFAULT_SLQ_QUALITIES
    base: nn.Module | None = None
    config: TrainConfig = field(default_factory=TrainConfig)
    root: Path | None = None
    kind: str = "memory"  # "ensemble" | "single" | "memory"

    @property
    def member_specs(self) -> tuple[MemberSpec, ...]:
        return tuple(m.spec for m in self.members)

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """Load an ensemble directory (ensemble.json), a run directory (best.pt) or a .pt checkpoint."""
        return open_run(path)

    def dataset(self, data: str | Path | None = None, *, limit: int = DEFAULT_LIMIT, calibration: int = 256,
                split: str = "val", roi: str = "auto") -> EvalData:
        """The run's validation split (or split="test") and calibration images; see `load_eval_data`."""
        return load_eval_data(self, data, limit=limit, calibration=calibration, split=split, roi=roi)

    def vaccinating_codec(self) -> CodecSpec:
        """The codec recorded for the members, else the one this machine runs."""
        return self.codec or _codec({})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(expected_got(str(path), "a JSON object", type(data).__name__))
    return data


def _load(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    from edge_guard.training.checkpoint import load_checkpoint

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


def _config(root: Path, *ckpts: dict[str, Any]) -> TrainConfig:
    """The run's config.json, else the run_config stored in the first checkpoint that has one."""
    if (root / CONFIG_FILE).is_file():
        return train_config(_read_json(root / CONFIG_FILE), str(root / CONFIG_FILE))
    for ckpt in ckpts:
        if isinstance(ckpt.get("run_config"), dict) and ckpt["run_config"]:
            return train_config(ckpt["run_config"])
    return TrainConfig()


def _load_single(path: Path) -> Run:
    model, ckpt = _load(path)
    vac = ckpt.get("vaccination") or {}
    spec = member_spec(vac.get("kind", "none"), vac.get("quality"))
    qualities = tuple(vac.get("qualities") or jpeg.DEFAULT_SLQ_QUALITIES)
    return Run(
        classes=tuple(ckpt["classes"]), input_size=tuple(ckpt["input_size"]),  # type: ignore[arg-type]
        members=(RunMember(spec, model, str(path)),),
        subsampling=Subsampling(vac.get("subsampling") or "420"), codec=_codec(vac), slq_qualities=qualities,
        base=model if spec.vaccination == Vaccination.NONE else None, config=_config(path.parent, ckpt),
        root=path.parent, kind="single",
    )


def _load_ensemble(root: Path) -> Run:
    path = root / ENSEMBLE_FILE
    spec = decode(_read_json(path), EnsembleFile, error=ConfigError, fix="Re-run edgeguard vaccinate to rewrite it.",
                  root=str(path))
    members, ckpts = [], []
    for entry in spec.members:
        model, ckpt = _load(root / entry.checkpoint)
        member = MemberSpec(name=entry.name, vaccination=entry.vaccination, quality=entry.quality)
        members.append(RunMember(member, model, str(root / entry.checkpoint)))
        ckpts.append(ckpt)
    base = None
    if spec.base:
        base, base_ckpt = _load(root / spec.base)
        ckpts.insert(0, base_ckpt)
    codec = CodecSpec(backend=spec.backend, version=spec.codec_version) if spec.backend and spec.codec_version else None
    return Run(classes=spec.classes, input_size=spec.input_size, members=tuple(members), subsampling=spec.subsampling,
               codec=codec, slq_qualities=spec.slq_qualities, base=base, config=_config(root, *ckpts), root=root,
               kind="ensemble")


def open_run(path: str | Path) -> Run:
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


@dataclass(frozen=True)
class EvalData:
    """Validation images uint8 (N, H, W, 3) RGB with labels int64 (N,), calibration images uint8
    (K, H, W, 3); all None when no data was available. `info` is recorded in the manifest."""

    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    calibration: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.images is not None and len(self.images) > 0


def _subset(n: int, k: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of min(n, k) of range(n)."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def _dataset_kwargs(config: TrainConfig) -> dict[str, Any]:
    """Loading options the training run used (a subset limit, skipped files) so the loaded set, and with
    it the split, matches training (edgeguard train: limit is drawn with its seed)."""
    kwargs: dict[str, Any] = {"skip_bad": config.skip_bad}
    if config.limit:
        kwargs.update(limit=config.limit, seed=config.seed)
    return kwargs


def load_eval_data(run: Run, data: str | Path | None = None, *, limit: int = DEFAULT_LIMIT,
                   calibration: int = 256, split: str = "val", roi: str = "auto") -> EvalData:
    """Load the run's validation split (or, split="test", the dataset's official test set) and
    calibration images from `data` or the run's config. roi: how images are cropped to their annotated
    box ("auto", "crop", "none"; see load_dataset)."""
    from edge_guard.training.data import load_dataset, split_by_track

    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(expected_got("--limit", "a positive number of validation images", repr(limit)))
    if split not in SPLITS:
        raise ConfigError(expected_got("--split", " or ".join(SPLITS), repr(split)))
    source, origin = (data, "--data") if data is not None else (run.config.data, "run config.json")
    if not source:
        return EvalData(info={"source": None, "n": 0, "note": "no validation data: no --data and no data path in "
                              "the run's config.json; only random-input parity was checked, no accuracy measured"})
    if not Path(source).is_dir():
        raise DataError(expected_got(f"dataset folder ({origin})", "an existing directory", str(source),
                                     "Pass --data PATH to the dataset the run was trained on."))
    seed, val_fraction = run.config.seed, run.config.val_fraction
    kwargs = _dataset_kwargs(run.config)
    if split == "test":  # the whole official test set: the training run's subset limit does not apply
        kwargs.pop("limit", None)
        kwargs.pop("seed", None)
    kwargs["roi"] = roi
    dataset = load_dataset(Path(source), "train" if split == "val" else "test", size=run.input_size, **kwargs)
    if tuple(dataset.classes) != tuple(run.classes):
        diff = next((i for i, (a, b) in enumerate(zip(dataset.classes, run.classes)) if a != b), None)
        got = (f"{dataset.num_classes} classes" if diff is None else
               f"class {diff} named {dataset.classes[diff]!r} instead of {run.classes[diff]!r}")
        raise DataError(expected_got(f"classes of the dataset at {source}",
                                     f"the model's {len(run.classes)} classes in the same order", got,
                                     "Pass the dataset the run was trained on."))
    if split == "test":
        train, val = dataset.subset(np.arange(0)), dataset  # no training images in a test set
    else:
        train, val = split_by_track(dataset, val_fraction, seed)
    keep = _subset(len(val), limit, seed)
    calib = _subset(len(train), calibration, seed + 1)
    info = {"source": str(source), "from": origin, "split": split, "val_fraction": val_fraction, "seed": seed,
            "n": int(len(keep)), "n_val_total": len(val), "limit": limit, "n_calibration": int(len(calib)),
            "layout": dataset.report.layout, "roi": dataset.report.roi}
    return EvalData(val.images[keep], val.labels[keep], train.images[calib], info)
