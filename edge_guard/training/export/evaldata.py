"""The images a run is measured on: its own held-out validation split (or the official test set),
and calibration images.

The validation images are the ones training held out: the dataset at `--data` (else the path in the
run's config.json), split by track with the run's seed and val_fraction (`split_by_track`), then
capped at `limit` images (a seeded random subset). split="test" takes the dataset's official test
set instead (GTSRB `GT-final_test.csv`, Kaggle `Test.csv`, CIFAR-10 `test_batch`), never seen in
training or tuning. int8 calibration uses a few hundred images from the training side of the
split. Without any data path only random-input parity runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_guard.errors import ConfigError, DataError, expected_got
from edge_guard.training.export.source import RunSource

DEFAULT_LIMIT = 2000
DEFAULT_VAL_FRACTION = 0.2  # used when the run's config does not record one
SPLITS = ("val", "test")


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


def _dataset_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """Loading options the training run recorded (ROI handling, a subset limit, skipped files) so the
    loaded set, and with it the split, matches training (edgeguard train: limit is drawn with its seed)."""
    kwargs: dict[str, Any] = {}
    if config.get("roi") in ("auto", "crop", "none"):
        kwargs["roi"] = config["roi"]
    if isinstance(config.get("skip_bad"), bool):
        kwargs["skip_bad"] = config["skip_bad"]
    if isinstance(config.get("limit"), int) and config["limit"] > 0:
        kwargs["limit"] = config["limit"]
        kwargs["seed"] = int(config.get("seed", 0))
    return kwargs


def load_eval_data(run: RunSource, data: str | Path | None = None, *, limit: int = DEFAULT_LIMIT,
                   calibration: int = 256, split: str = "val", roi: str | None = None) -> EvalData:
    """Load the run's validation split (or, split="test", the dataset's official test set) and
    calibration images from `data` or the run's config. roi: how images are cropped to their annotated
    box ("auto", "crop", "none"; see load_dataset); None: the run's recorded setting, else "auto"."""
    from edge_guard.training.data import load_dataset, split_by_track

    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(expected_got("--limit", "a positive number of validation images", repr(limit)))
    if split not in SPLITS:
        raise ConfigError(expected_got("--split", " or ".join(SPLITS), repr(split)))
    source, origin = (data, "--data") if data is not None else (run.config.get("data"), "run config.json")
    if not source:
        return EvalData(info={"source": None, "n": 0, "note": "no validation data: no --data and no data path in "
                              "the run's config.json; only random-input parity was checked, no accuracy measured"})
    if not Path(source).is_dir():
        raise DataError(expected_got(f"dataset folder ({origin})", "an existing directory", str(source),
                                     "Pass --data PATH to the dataset the run was trained on."))
    seed = int(run.config.get("seed", 0))
    val_fraction = float(run.config.get("val_fraction", DEFAULT_VAL_FRACTION))
    kwargs = _dataset_kwargs(run.config)
    if split == "test":  # the whole official test set: the training run's subset limit does not apply
        kwargs.pop("limit", None)
        kwargs.pop("seed", None)
    if roi:
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
