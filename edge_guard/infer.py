"""Classify image files with a Guard, one JSON-ready record per prediction.

    stats = InferStats()
    for record in classify_files(guard, ["photos/"], rois=[(10, 20, 74, 84)], stats=stats):
        print(json.dumps(record))     # {"frame", "roi", "class_id", "class_name", "confidence", "votes", "timings_ms"}
    stats.summary()                   # "3 images, 3 predictions, 1 skipped, mean total 4.1 ms"
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_guard.frames import Box, iter_images, warn_skip
from edge_guard.guard import Guard


@dataclass
class InferStats:
    """Counters of one run: images classified, predictions, files skipped, total ms per image."""

    images: int = 0
    predictions: int = 0
    skipped: int = 0
    total_ms: list[float] = field(default_factory=list)

    @property
    def mean_total_ms(self) -> float:
        return sum(self.total_ms) / len(self.total_ms) if self.total_ms else 0.0

    def summary(self) -> str:
        return (f"{self.images} images, {self.predictions} predictions, {self.skipped} skipped, "
                f"mean total {self.mean_total_ms:.2f} ms per image")


def classify_files(guard: Guard, paths: Sequence[str | Path], *, rois: Sequence[Box] = (), recursive: bool = False,
                   stats: InferStats | None = None) -> Iterator[dict[str, Any]]:
    """Yield one record per prediction: each image whole (no rois) or each of `rois` in it, in order.

    Unreadable files are skipped (one warning line on stderr) and counted in `stats.skipped`.
    A path that does not exist raises InputError at the call, before any image is read; a box outside an
    image raises InputError from Guard.classify.
    """
    stats = stats if stats is not None else InferStats()

    def skip(frame_id: str, reason: str) -> None:
        stats.skipped += 1
        warn_skip(frame_id, reason)

    boxes = list(rois)
    images = iter_images(paths, recursive=recursive, on_skip=skip)  # checks the paths now

    def generate() -> Iterator[dict[str, Any]]:
        for frame_id, image in images:
            preds = guard.classify(image, boxes if boxes else None)
            stats.images += 1
            stats.predictions += len(preds)
            if preds:
                stats.total_ms.append(preds[0].timings_ms["total"])
            for box, pred in zip(boxes if boxes else [None], preds):
                yield {"frame": frame_id, "roi": list(box) if box is not None else None, **pred.to_dict()}

    return generate()
