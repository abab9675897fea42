"""Datasets: GTSRB (official and Kaggle layouts), CIFAR-10 python batches, and class-per-folder images.

`load_dataset(path, split="train", size=32)` detects the layout, decodes every image to uint8 RGB,
optionally crops the annotated sign ROI, resizes to `size` and returns a `Dataset`:

    images  uint8  (N, H, W, 3)  RGB, 0..255
    labels  int64  (N,)          class ids, index into `classes`
    tracks  int64  (N,)          GTSRB physical-sign track id (class_id * 100000 + track), -1 if unknown

Decoded arrays are cached as .npy files (default ~/.cache/edgeguard/datasets) keyed by the path,
the mtime/size of the index files (annotation CSVs, class folders) and the load options, so a
second load of the 39k GTSRB images takes about half a second. Missing or corrupt files raise
`DataError` naming the file, unless `skip_bad=True`, which skips them and counts them in
`dataset.report` (never a silent partial set).

`split_by_track(dataset, val_fraction, seed)` splits GTSRB by physical track (never one track on both
sides; stratified per class), and falls back to a stratified random split when there are no tracks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_guard.errors import ConfigError, DataError, expected_got
from edge_guard.training.choices import RoiMode
from edge_guard.training.layouts import (
    GTSRB_CLASS_NAMES,
    SUPPORTED_LAYOUTS,
    Plan,
    cifar_dir,
    decode_all,
    detect,
    limit_entries,
    load_cifar,
    roi_text,
)

CACHE_VERSION = 1  # bump when decoding changes, to invalidate old caches
__all__ = ["GTSRB_CLASS_NAMES", "SUPPORTED_LAYOUTS", "Dataset", "LoadReport", "default_cache_dir", "load_dataset",
           "split_by_track"]


@dataclass(frozen=True)
class LoadReport:
    """What was loaded, from where, and what was skipped or cropped."""

    layout: str
    root: str
    split: str
    count: int
    skipped: int = 0
    skipped_files: tuple[str, ...] = ()  # the first few skipped files, with the reason
    roi: str = "n/a"  # e.g. "auto: cropped 0, kept 39209 (already 32x32)"
    cache: str = "off"  # "hit" | "miss (written ...)" | "off" | "miss (not written: ...)"
    seconds: float = 0.0
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        lines = [
            f"{self.layout} {self.split} from {self.root}: {self.count} images"
            f" ({self.skipped} skipped) in {self.seconds:.2f} s, cache {self.cache}",
            f"roi: {self.roi}",
        ]
        lines += [f"skipped: {f}" for f in self.skipped_files]
        lines += list(self.notes)
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images uint8 (N,H,W,3) RGB, labels int64 (N,), tracks int64 (N,) (-1: none), class names."""

    images: np.ndarray
    labels: np.ndarray
    tracks: np.ndarray
    classes: tuple[str, ...]
    report: LoadReport = field(default_factory=lambda: LoadReport("memory", "", "", 0))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the images."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def subset(self, indices: np.ndarray, note: str | None = None) -> Dataset:
        """A new Dataset with the rows `indices` (int array or bool mask); `note` is added to the report."""
        idx = np.asarray(indices)
        notes = self.report.notes + ((note,) if note else ())
        report = dataclasses.replace(self.report, count=int(self.labels[idx].shape[0]), notes=notes)
        return Dataset(self.images[idx], self.labels[idx], self.tracks[idx], self.classes, report)


# ---------------------------------------------------------------------------------------------
# public entry points


def load_dataset(
    path: str | Path,
    split: str = "train",
    size: int | tuple[int, int] = 32,
    *,
    roi: str = "auto",
    skip_bad: bool = False,
    limit: int | None = None,
    seed: int = 0,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    workers: int = 8,
) -> Dataset:
    """Load a dataset from `path`, auto-detecting its layout (see SUPPORTED_LAYOUTS).

    split: "train" or "test". size: output side (or (H, W)); images are resized with INTER_AREA.
    roi: "auto" crops the GTSRB ROI unless the image on disk already has the target size,
    "crop" always crops (ROI scaled by on-disk size / CSV size), "none" never crops.
    limit: keep a seeded random subset of at most `limit` images (for quick runs).
    Returns a Dataset with uint8 RGB images (N, H, W, 3); see the module docstring.
    """
    t0 = time.perf_counter()
    root = Path(path).expanduser()
    if split not in ("train", "test"):
        raise ConfigError(expected_got("split", '"train" or "test"', repr(split)))
    if roi not in RoiMode.values():
        raise ConfigError(expected_got("roi", " or ".join(repr(r) for r in RoiMode.values()), repr(roi)))
    if limit is not None and limit < 1:
        raise ConfigError(expected_got("limit", "a positive number of images", limit))
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if not root.is_dir():
        raise DataError(expected_got("dataset path", "an existing directory", str(root)))

    cifar = cifar_dir(root)
    if cifar is not None:  # small: read straight from the pickles, no cache
        images, labels, classes, notes = load_cifar(cifar, split, hw, limit, seed)
        report = LoadReport("cifar10", str(cifar), split, len(labels), seconds=time.perf_counter() - t0, notes=notes)
        return Dataset(images, labels, np.full(len(labels), -1, np.int64), classes, report)
    plan = detect(root, split)
    # the seed picks the --limit subset and nothing else: without a limit, every seed shares one cache
    options = {"split": split, "size": hw, "roi": roi, "skip_bad": skip_bad, "limit": limit,
               "seed": seed if limit is not None else None}
    cache_path = _cache_path(plan, options, cache_dir) if cache else None
    if cache_path is not None:
        hit = _read_cache(cache_path)
        if hit is not None:
            return dataclasses.replace(hit, report=dataclasses.replace(
                hit.report, cache=f"hit ({cache_path})", seconds=time.perf_counter() - t0))

    all_entries, classes = plan.build()
    entries = limit_entries(all_entries, limit, seed)
    images, labels, tracks, bad, cropped = decode_all(entries, hw, roi, skip_bad, workers)
    report = LoadReport(
        layout=plan.layout, root=str(plan.root), split=split, count=len(labels), skipped=len(bad),
        skipped_files=tuple(bad[:20]), roi=roi_text(roi, cropped, len(labels), hw, any(e.roi for e in entries)),
        notes=(f"limit: kept {len(entries)} of {len(all_entries)} images (seed {seed})",) if limit else (),
    )
    data = Dataset(images, labels, tracks, classes, report)
    cache_text = _write_cache(cache_path, data) if cache_path is not None else "off"
    return dataclasses.replace(data, report=dataclasses.replace(
        report, cache=cache_text, seconds=time.perf_counter() - t0))


def split_by_track(dataset: Dataset, val_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split into (train, val) so that no track is on both sides; stratified per class.

    Images with track -1 count as their own one-image track, so a dataset without tracks gets a
    seeded, per-class stratified random split. A class with a single track stays in train.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(expected_got("val_fraction", "a number between 0 and 1 (exclusive)", val_fraction))
    n = len(dataset)
    groups = np.where(dataset.tracks >= 0, dataset.tracks, -(np.arange(n, dtype=np.int64) + 1))
    uniq, first = np.unique(groups, return_index=True)
    group_class = dataset.labels[first]
    rng = np.random.default_rng(seed)
    val_groups = []
    for c in np.unique(group_class):
        gs = rng.permutation(uniq[group_class == c])
        k = int(round(len(gs) * val_fraction))
        k = min(max(k, 1), len(gs) - 1) if len(gs) >= 2 else 0
        val_groups.append(gs[:k])
    val_mask = np.isin(groups, np.concatenate(val_groups) if val_groups else np.empty(0, np.int64))
    n_val, n_val_groups = int(val_mask.sum()), int(sum(len(g) for g in val_groups))
    if n_val == 0 or n_val == n:
        raise DataError(expected_got(
            "track split", "images on both sides", f"train {n - n_val}, val {n_val} from {n} images",
            "use more data or another val_fraction."))
    kind = "track" if (dataset.tracks >= 0).any() else "image (no tracks)"
    note = (f"split by {kind}: train {n - n_val} images ({len(uniq) - n_val_groups} groups), "
            f"val {n_val} images ({n_val_groups} groups), val_fraction {val_fraction}, seed {seed}")
    return dataset.subset(~val_mask, note), dataset.subset(val_mask, note)


# ---------------------------------------------------------------------------------------------
# cache


def default_cache_dir() -> Path:
    """$EDGEGUARD_CACHE_DIR, else $XDG_CACHE_HOME/edgeguard, else ~/.cache/edgeguard (plus /datasets)."""
    if os.environ.get("EDGEGUARD_CACHE_DIR"):
        return Path(os.environ["EDGEGUARD_CACHE_DIR"]).expanduser() / "datasets"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgeguard" / "datasets"


def _cache_path(plan: Plan, options: dict[str, object], cache_dir: str | Path | None) -> Path:
    """Cache folder for this plan + options: keyed by index files' path, mtime and size."""
    stats = []
    for f in plan.index_files:
        try:
            st = f.stat()
            stats.append((str(f.resolve()), st.st_mtime_ns, st.st_size))
        except OSError:
            stats.append((str(f), 0, 0))
    key = {"v": CACHE_VERSION, "root": str(plan.root.resolve()), "layout": plan.layout, "files": stats, **options}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / f"{plan.layout}-{options['split']}-{digest}"


def _write_cache(path: Path, data: Dataset) -> str:
    """Write images.npy, labels.npy, tracks.npy, meta.json into `path` (a folder), atomically."""
    meta = {"classes": list(data.classes), "report": dataclasses.asdict(data.report)}
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for name in ("images", "labels", "tracks"):
            np.save(tmp / f"{name}.npy", getattr(data, name))
        (tmp / "meta.json").write_text(json.dumps(meta))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)  # a concurrent reader never sees half a cache
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return f"miss (not written: {exc.strerror or exc})"
    return f"miss (written {path})"


def _read_cache(path: Path) -> Dataset | None:
    """The cached Dataset, or None when absent or unreadable (then it is rebuilt)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        arrays = [np.load(path / f"{n}.npy", allow_pickle=False) for n in ("images", "labels", "tracks")]
        report = meta["report"]
        report["skipped_files"], report["notes"] = tuple(report["skipped_files"]), tuple(report["notes"])
        return Dataset(*arrays, tuple(meta["classes"]), LoadReport(**report))
    except (OSError, ValueError, KeyError, TypeError):
        return None
