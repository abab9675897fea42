"""Dataset layouts on disk: detection, indexing and decoding (used by `edge_guard.training.data`).

Supported: GTSRB official (Final_Training/Images/000NN/GT-000NN.csv + .ppm, test GT-final_test.csv),
GTSRB Kaggle (Train.csv / Test.csv), CIFAR-10 python batches, and one folder per class.
A `Plan` names the files that key the decoded-array cache (cheap to stat) and builds the image list
(parses the annotations) only when the cache misses. Decoding gives uint8 RGB (H, W, 3) images,
optionally cropped to the GTSRB ROI (scaled by on-disk size / CSV size), resized with INTER_AREA.
"""

from __future__ import annotations

import csv
import math
import os
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from edge_guard.errors import DataError, expected_got

SUPPORTED_LAYOUTS = (
    "gtsrb (official: Final_Training/Images/000NN/GT-000NN.csv + .ppm; test: GT-final_test.csv)",
    "gtsrb-kaggle (Train.csv / Test.csv with Path, ClassId, Roi.* columns)",
    "cifar10 (cifar-10-batches-py: data_batch_1..5, test_batch, batches.meta)",
    "folders (root/<class_name>/*.png|jpg|jpeg|ppm|bmp, optionally under root/train and root/test)",
)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".ppm", ".bmp")

GTSRB_CLASS_NAMES = (
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)", "End of speed limit (80km/h)",
    "Speed limit (100km/h)", "Speed limit (120km/h)", "No passing",
    "No passing for vehicles over 3.5 metric tons", "Right-of-way at the next intersection",
    "Priority road", "Yield", "Stop", "No vehicles", "Vehicles over 3.5 metric tons prohibited",
    "No entry", "General caution", "Dangerous curve to the left", "Dangerous curve to the right",
    "Double curve", "Bumpy road", "Slippery road", "Road narrows on the right", "Road work",
    "Traffic signals", "Pedestrians", "Children crossing", "Bicycles crossing", "Beware of ice/snow",
    "Wild animals crossing", "End of all speed and passing limits", "Turn right ahead",
    "Turn left ahead", "Ahead only", "Go straight or right", "Go straight or left", "Keep right",
    "Keep left", "Roundabout mandatory", "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)  # fmt: skip


class Entry(NamedTuple):
    path: str
    label: int
    track: int
    roi: tuple[int, int, int, int] | None  # x1, y1, x2 (exclusive), y2 (exclusive) in CSV pixel units
    csv_size: tuple[int, int] | None  # (width, height) the ROI refers to


@dataclass(frozen=True)
class Plan:
    """A detected layout: what keys the cache (cheap) and how to list the images (parses the index)."""

    layout: str
    root: Path
    index_files: list[Path]  # files/dirs whose path + mtime + size key the cache
    build: Callable[[], tuple[list[Entry], tuple[str, ...]]]  # -> (entries, class names)


# ---------------------------------------------------------------------------------------------
# layout detection and indexing


def detect(root: Path, split: str) -> Plan:
    if (root / f"{split.capitalize()}.csv").is_file() or (root / "Train.csv").is_file():
        return _plan_kaggle(root, split)
    train_dir = _gtsrb_train_dir(root)
    test_csv = _gtsrb_test_csv(root)
    if split == "train" and train_dir is not None:
        return _plan_gtsrb_train(train_dir)
    if split == "test" and test_csv is not None:
        return _plan_gtsrb_test(root, test_csv)
    if train_dir is not None or test_csv is not None:
        raise DataError(expected_got(
            f"GTSRB {split} split under {root}",
            "Final_Training/Images/000NN/GT-000NN.csv" if split == "train" else "GT-final_test.csv (with ClassId)",
            "only the other split", "point --data at a folder holding this split."))
    if _is_class_folders(root / split):
        return _plan_folders(root / split)
    if split == "test" and _is_class_folders(root):  # one set of class folders is the training set
        raise DataError(expected_got(f"test split of the class folders at {root}", f"{root / 'test'}/<class>/...",
                                     "only one set of class folders (the training images)",
                                     "put test images in test/<class>/ beside train/<class>/."))
    if _is_class_folders(root):
        return _plan_folders(root)
    raise DataError(expected_got(f"dataset layout at {root}", "one of: " + "; ".join(SUPPORTED_LAYOUTS),
                                 "none of them"))


def _gtsrb_train_dir(root: Path) -> Path | None:
    """The folder holding 000NN/GT-000NN.csv: root/Final_Training/Images, root/Images, or root."""
    for cand in (root / "Final_Training" / "Images", root / "GTSRB" / "Final_Training" / "Images",
                 root / "Images", root):
        if cand.is_dir() and any(cand.glob("[0-9][0-9][0-9][0-9][0-9]/GT-*.csv")):
            return cand
    return None


def _gtsrb_test_csv(root: Path) -> Path | None:
    for cand in (root / "GT-final_test.csv", root / "Final_Test" / "Images" / "GT-final_test.csv",
                 root / "GTSRB" / "Final_Test" / "Images" / "GT-final_test.csv",
                 root / "Images" / "GT-final_test.csv"):
        if cand.is_file():
            return cand
    return None


def _read_csv(path: Path, delimiter: str) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f, delimiter=delimiter))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read annotation file {path}: {exc}") from None


def _gtsrb_entries(rows: list[dict[str, str]], folder: Path, csv_file: Path, tracks: bool) -> list[Entry]:
    """Entries from GTSRB annotation rows; `folder` + row path is the image file."""
    out, base = [], str(folder)
    for line, row in enumerate(rows, start=2):
        name = row.get("Filename") or row.get("Path") or ""
        try:
            label = int(row["ClassId"])
            roi = (int(row["Roi.X1"]), int(row["Roi.Y1"]), int(row["Roi.X2"]), int(row["Roi.Y2"]))
            csv_size = (int(row["Width"]), int(row["Height"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(expected_got(
                f"{csv_file} line {line}", "integer ClassId, Width, Height, Roi.X1..Roi.Y2 columns",
                f"{exc.__class__.__name__}: {exc}")) from None
        track = _track_of(name, label) if tracks else -1
        out.append(Entry(os.path.join(base, name), label, track, roi, csv_size))
    return out


def _track_of(name: str, label: int) -> int:
    """TTTTT_IIIII.ppm (official) or CC_TTTTT_IIIII.png (Kaggle) -> class * 100000 + track; else -1."""
    parts = os.path.splitext(os.path.basename(name))[0].split("_")
    if len(parts) < 2 or not parts[-2].isdigit():
        return -1
    return label * 100_000 + int(parts[-2])


def _plan_gtsrb_train(images_dir: Path) -> Plan:
    csvs = sorted(images_dir.glob("[0-9][0-9][0-9][0-9][0-9]/GT-*.csv"))

    def build() -> tuple[list[Entry], tuple[str, ...]]:
        entries = [e for c in csvs for e in _gtsrb_entries(_read_csv(c, ";"), c.parent, c, tracks=True)]
        return entries, _gtsrb_classes(images_dir, entries)

    # a class dir's mtime changes when files come or go
    index_files = csvs + [c.parent for c in csvs] + _signnames_files(images_dir)
    return Plan("gtsrb", images_dir, index_files, build)


def _plan_gtsrb_test(root: Path, csv_file: Path) -> Plan:
    def build() -> tuple[list[Entry], tuple[str, ...]]:
        rows = _read_csv(csv_file, ";")
        if rows and "ClassId" not in rows[0]:
            raise DataError(expected_got(f"{csv_file}", "a ClassId column (GT-final_test.csv from the GT zip)",
                                         f"columns {list(rows[0])}"))
        first = rows[0].get("Filename", "") if rows else ""
        image_dir = csv_file.parent
        for cand in (csv_file.parent, root / "Final_Test" / "Images", root / "GTSRB" / "Final_Test" / "Images",
                     root / "Images", root):
            if (cand / first).is_file():
                image_dir = cand
                break
        entries = _gtsrb_entries(rows, image_dir, csv_file, tracks=False)
        return entries, _gtsrb_classes(root, entries)

    return Plan("gtsrb", root, [csv_file, *_signnames_files(root)], build)


def _plan_kaggle(root: Path, split: str) -> Plan:
    csv_file = root / f"{split.capitalize()}.csv"
    if not csv_file.is_file():
        raise DataError(expected_got("GTSRB Kaggle layout", f"{csv_file.name} in {root}", "no such file"))

    def build() -> tuple[list[Entry], tuple[str, ...]]:
        entries = _gtsrb_entries(_read_csv(csv_file, ","), root, csv_file, tracks=split == "train")
        return entries, _gtsrb_classes(root, entries)

    return Plan("gtsrb-kaggle", root, [csv_file, *_signnames_files(root)], build)


def _signnames_files(start: Path) -> list[Path]:
    """signnames.csv in `start` or up to 3 folders above (the nearest one wins)."""
    folders = [start, *list(start.resolve().parents)[:3]]
    return [f / "signnames.csv" for f in folders if (f / "signnames.csv").is_file()][:1]


def _gtsrb_classes(start: Path, entries: Sequence[Entry]) -> tuple[str, ...]:
    """Names from the nearest signnames.csv (ClassId,SignName), else the built-in 43 GTSRB names."""
    top = max((e.label for e in entries), default=-1)
    names: tuple[str, ...] = GTSRB_CLASS_NAMES
    source = "built-in GTSRB class names"
    for path in _signnames_files(start):
        rows = _read_csv(path, ",")
        try:
            table = {int(r["ClassId"]): r["SignName"] for r in rows}
        except (KeyError, TypeError, ValueError):
            raise DataError(expected_got(f"{path}", "columns ClassId,SignName",
                                         f"columns {list(rows[0]) if rows else []}")) from None
        if sorted(table) != list(range(len(table))):
            raise DataError(expected_got(f"{path}", "ClassId 0..K-1 without gaps", sorted(table)))
        names, source = tuple(table[i] for i in range(len(table))), str(path)
    if top >= len(names):
        raise DataError(expected_got("class ids", f"0..{len(names) - 1} (from {source})", f"ClassId {top}"))
    return names


def _is_class_folders(root: Path) -> bool:
    if not root.is_dir():
        return False
    return any(d.is_dir() and any(f.suffix.lower() in IMAGE_EXTS for f in d.iterdir()) for d in root.iterdir())


def _plan_folders(root: Path) -> Plan:
    dirs = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.name)
    if dirs and all(d.name.isdigit() for d in dirs):
        dirs.sort(key=lambda d: int(d.name))  # "2" before "10"

    def build() -> tuple[list[Entry], tuple[str, ...]]:
        entries = []
        for label, d in enumerate(dirs):
            files = sorted(f.name for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTS)
            entries += [Entry(os.path.join(d, f), label, -1, None, None) for f in files]
        return entries, tuple(d.name for d in dirs)

    # a folder's mtime changes when images are added or removed (in-place edits are not seen)
    return Plan("folders", root, list(dirs), build)


def limit_entries(entries: list[Entry], limit: int | None, seed: int) -> list[Entry]:
    if limit is None or limit >= len(entries):
        return entries
    keep = np.sort(np.random.default_rng(seed).choice(len(entries), size=limit, replace=False))
    return [entries[i] for i in keep]


# ---------------------------------------------------------------------------------------------
# decoding


class _BadFile(Exception):
    pass


def _decode_one(entry: Entry, hw: tuple[int, int], roi: str) -> tuple[np.ndarray, bool]:
    """Read, decode (BGR -> RGB), optionally crop the ROI, resize. Returns (image, cropped)."""
    try:
        raw = np.fromfile(entry.path, dtype=np.uint8)
    except OSError as exc:
        raise _BadFile(f"{entry.path}: cannot read ({exc.strerror or exc})") from None
    img = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
    if img is None:
        raise _BadFile(f"{entry.path}: not a decodable image ({raw.size} bytes)")
    h, w = img.shape[:2]
    crop = entry.roi is not None and (roi == "crop" or (roi == "auto" and (h, w) != hw))
    if crop:
        img = _crop_roi(img, entry)
    if img.shape[:2] != hw:
        img = cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img[:, :, ::-1]), crop


def _crop_roi(img: np.ndarray, entry: Entry) -> np.ndarray:
    """Crop the ROI, scaled by (on-disk size / CSV size) for rescaled copies of GTSRB."""
    if entry.roi is None or entry.csv_size is None:
        return img
    h, w = img.shape[:2]
    sx, sy = w / max(entry.csv_size[0], 1), h / max(entry.csv_size[1], 1)
    x1, y1, x2, y2 = entry.roi
    x1, y1 = max(0, math.floor(x1 * sx)), max(0, math.floor(y1 * sy))
    x2, y2 = min(w, math.ceil(x2 * sx)), min(h, math.ceil(y2 * sy))
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise _BadFile(f"{entry.path}: ROI {entry.roi} is empty after scaling to {w}x{h}")
    return img[y1:y2, x1:x2]


def decode_all(
    entries: list[Entry], hw: tuple[int, int], roi: str, skip_bad: bool, workers: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], int]:
    """Decode every entry with `workers` threads -> (images uint8 (N, H, W, 3) RGB, labels, tracks,
    bad-file messages, number cropped). A bad file raises DataError naming it unless skip_bad."""
    if not entries:
        raise DataError("dataset index lists no images: expected at least one image file.")

    def work(e: Entry) -> tuple[np.ndarray, bool] | str:
        try:
            return _decode_one(e, hw, roi)
        except _BadFile as exc:
            return str(exc)

    # cv2 releases the GIL while decoding, so threads overlap file I/O and decoding.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(work, entries, chunksize=256))
    bad = [r for r in results if isinstance(r, str)]
    if bad and not skip_bad:
        raise DataError(f"bad image file {bad[0]} ({len(bad)} bad in total). "
                        "Fix or remove it, or pass skip_bad=True (--skip-bad) to skip and count bad files.")
    good = [(r, e) for r, e in zip(results, entries) if not isinstance(r, str)]
    if not good:
        raise DataError(f"every image failed to load; first: {bad[0]}")
    images = np.stack([r[0] for r, _ in good])
    labels = np.array([e.label for _, e in good], dtype=np.int64)
    tracks = np.array([e.track for _, e in good], dtype=np.int64)
    return images, labels, tracks, bad, sum(int(r[1]) for r, _ in good)


def roi_text(roi: str, cropped: int, total: int, hw: tuple[int, int], has_roi: bool) -> str:
    if not has_roi:
        return "n/a (layout has no ROI annotations)"
    why = {"auto": f"skipped where the image already is {hw[0]}x{hw[1]}", "crop": "always", "none": "never"}[roi]
    return f"{roi}: cropped {cropped}, kept whole {total - cropped} ({why})"


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def cifar_dir(root: Path) -> Path | None:
    for cand in (root, root / "cifar-10-batches-py"):
        if (cand / "batches.meta").is_file() and ((cand / "data_batch_1").is_file() or (cand / "test_batch").is_file()):
            return cand
    return None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays and plain containers (CIFAR batches), nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"cannot read CIFAR batch {path}: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(expected_got(f"CIFAR batch {path}", "a dict", type(obj).__name__))
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def load_cifar(root: Path, split: str, hw: tuple[int, int], limit: int | None,
               seed: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """CIFAR-10 python batches -> (images uint8 (N, H, W, 3), labels int64 (N,), class names, notes)."""
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    present = [n for n in names if (root / n).is_file()]
    if not present:
        raise DataError(expected_got(f"CIFAR-10 {split} batches in {root}", ", ".join(names), "none"))
    notes: tuple[str, ...] = (f"batches: {', '.join(present)}",)
    if len(present) < len(names):
        notes += (f"missing batches: {', '.join(sorted(set(names) - set(present)))}",)
    meta = _unpickle(root / "batches.meta")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", []))
    xs, ys = [], []
    for n in present:
        batch = _unpickle(root / n)
        try:
            xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(batch["labels"], dtype=np.int64).reshape(-1))
        except (KeyError, ValueError) as exc:
            raise DataError(expected_got(f"CIFAR batch {root / n}", "data (N, 3072) uint8 and labels",
                                         f"{exc.__class__.__name__}: {exc}")) from None
    images, labels = np.concatenate(xs), np.concatenate(ys)
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(expected_got(f"CIFAR labels in {root}", f"0..{len(classes) - 1}", int(labels.max())))
    if limit is not None and limit < len(labels):
        notes += (f"limit: kept {limit} of {len(labels)} images (seed {seed})",)
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), size=limit, replace=False))
        images, labels = images[keep], labels[keep]
    if images.shape[1:3] != hw:
        images = np.stack([cv2.resize(im, (hw[1], hw[0]), interpolation=cv2.INTER_AREA) for im in images])
    return np.ascontiguousarray(images), labels, classes, notes
