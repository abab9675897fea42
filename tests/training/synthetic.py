"""Tiny synthetic datasets for the training tests: colored shapes on noisy backgrounds, written in the
GTSRB official, GTSRB Kaggle, CIFAR-10 python and class-folder layouts."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np

from edge_guard.training.data import Dataset

SHAPES = ("circle", "square", "triangle", "cross")


def draw(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One uint8 RGB (size, size, 3) image of shape `label` (0..3) with random color, place and noise."""
    bg = rng.integers(0, 256, 3)
    img = np.empty((size, size, 3), np.float64)
    img[:] = bg
    img += rng.normal(0, 12, img.shape)
    fg = tuple(int(v) for v in (255 - bg + rng.integers(-40, 40, 3)).clip(0, 255))
    c = size // 2 + rng.integers(-2, 3, 2)
    r = int(size * rng.uniform(0.25, 0.35))
    canvas = np.ascontiguousarray(img.clip(0, 255).astype(np.uint8))
    x, y = int(c[0]), int(c[1])
    if label == 0:
        cv2.circle(canvas, (x, y), r, fg, -1)
    elif label == 1:
        cv2.rectangle(canvas, (x - r, y - r), (x + r, y + r), fg, -1)
    elif label == 2:
        cv2.fillPoly(canvas, [np.array([(x, y - r), (x - r, y + r), (x + r, y + r)], np.int32)], fg)
    else:
        t = max(2, r // 3)
        cv2.rectangle(canvas, (x - r, y - t), (x + r, y + t), fg, -1)
        cv2.rectangle(canvas, (x - t, y - r), (x + t, y + r), fg, -1)
    return canvas


def make_dataset(n_per_class: int = 40, n_classes: int = 4, seed: int = 0, per_track: int = 5,
                 size: int = 32) -> Dataset:
    """In-memory Dataset; consecutive groups of `per_track` images of a class share a track id."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class).astype(np.int64)
    images = np.stack([draw(int(lb), rng, size) for lb in labels])
    tracks = labels * 100_000 + (np.arange(len(labels)) % n_per_class) // per_track
    return Dataset(images, labels, tracks.astype(np.int64), tuple(SHAPES[:n_classes]))


def write_ppm(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def write_gtsrb(root: Path, n_classes: int = 4, tracks: int = 3, per_track: int = 4, seed: int = 0,
                signnames: bool = True) -> dict[str, np.ndarray]:
    """Official training layout under root/Final_Training/Images. CSV Width/Height/ROI describe a
    'original' twice the size on disk (like the rescaled gtsrb32 copy). Returns the written images."""
    rng = np.random.default_rng(seed)
    written = {}
    for c in range(n_classes):
        folder = root / "Final_Training" / "Images" / f"{c:05d}"
        rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for t in range(tracks):
            for i in range(per_track):
                name = f"{t:05d}_{i:05d}.ppm"
                img = draw(c, rng)
                write_ppm(folder / name, img)
                written[f"{c:05d}/{name}"] = img
                rows.append(f"{name};64;64;4;4;60;60;{c}")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"GT-{c:05d}.csv").write_text("\n".join(rows) + "\n")
    if signnames:
        names = "\n".join(f"{c},{SHAPES[c]}" for c in range(n_classes))
        (root / "signnames.csv").write_text("ClassId,SignName\n" + names + "\n")
    return written


def write_cifar(root: Path, n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py with data_batch_1 and test_batch (pickled like the original, bytes keys)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, n)
    batch = {b"data": images.transpose(0, 3, 1, 2).reshape(n, -1), b"labels": labels.tolist(),
             b"batch_label": b"synthetic"}
    for name in ("data_batch_1", "test_batch"):
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"cat", b"dog", b"ship"]}, protocol=2))
    return images, labels


def tinted_squares(cls: int, n: int, rng: np.random.Generator, size: int = 16, tint: int = 110) -> np.ndarray:
    """uint8 (n, size, size, 3) for 4 colour classes: a noisy background tinted red/green/blue (classes
    0-2) or grey (3) by `tint` grey levels, with a random brighter 6x6 square. A faint tint (e.g. 30)
    leaves room for eps 8/255 attacks to flip predictions."""
    img = rng.integers(40, 100, (n, size, size, 3)).astype(np.int16)
    if cls < 3:
        img[..., cls] += tint
    else:
        img += tint // 2
    for k in range(n):
        y, x = rng.integers(0, size - 6, 2)
        img[k, y:y + 6, x:x + 6] += 40
    return np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)


def fit_full_batch(model, x: np.ndarray, y: np.ndarray, steps: int = 40):
    """A few full-batch Adam steps (lr 0.02) on uint8 NHWC images: enough for the colour classes above.
    Returns the model in eval mode."""
    import torch
    from torch import nn

    xt, yt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).float() / 255, torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()
