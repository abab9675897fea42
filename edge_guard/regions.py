"""Regions of a frame to classify: the centre square, fixed boxes, per-frame boxes from a file, or an ONNX detector.

Boxes are (x1, y1, x2, y2) in pixels of the full frame, x1/y1 inclusive and x2/y2 exclusive.

    Regions.center()                                   # the largest centred square of each frame
    Regions.fixed([(10, 20, 74, 84)])                  # the same boxes in every frame (`--roi`)
    Regions.from_file("boxes.jsonl")                   # {"frame": 12, "boxes": [[x1, y1, x2, y2], ...]} per line
    Regions.from_detector(Detector("yolo.onnx"))       # an upstream detector's boxes

A box that does not fit a frame is clipped to it; one that is empty after clipping is skipped and
counted by the caller, never the end of the run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edge_guard.errors import ConfigError, InputError, expected_got

if TYPE_CHECKING:  # pragma: no cover
    from edge_guard.detector import Detector

Box = tuple[int, int, int, int]


def parse_roi(text: str) -> Box:
    """Parse 'x1,y1,x2,y2' (pixels, x2/y2 exclusive) into a box; ConfigError if malformed or empty.

    Whether the box fits a frame is checked per frame (it is clipped, or skipped when nothing is left).
    """
    parts = [p.strip() for p in text.split(",")]
    try:
        x1, y1, x2, y2 = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(expected_got("--roi", "4 comma-separated integers x1,y1,x2,y2",
                                       f"{text!r} ({len(parts)} values)")) from None
    if min(x1, y1) < 0 or x2 <= x1 or y2 <= y1:
        raise ConfigError(expected_got("--roi", "0 <= x1 < x2 and 0 <= y1 < y2 (x2, y2 exclusive)", repr(text)))
    return x1, y1, x2, y2


def center_square(height: int, width: int) -> Box:
    """The largest square centred in a height x width frame."""
    side = min(height, width)
    x1, y1 = (width - side) // 2, (height - side) // 2
    return x1, y1, x1 + side, y1 + side


def clip_box(box: Sequence[float], height: int, width: int) -> Box | None:
    """The box clipped to the frame, rounded to whole pixels; None when it is malformed or empty after clipping."""
    try:
        x1, y1, x2, y2 = (float(c) for c in box)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(c) for c in (x1, y1, x2, y2)):
        return None
    x1, x2 = (int(round(min(max(c, 0.0), width))) for c in (x1, x2))
    y1, y2 = (int(round(min(max(c, 0.0), height))) for c in (y1, y2))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def _read_boxes_file(path: Path) -> dict[int, list[list[float]]]:
    """frame index -> boxes from a JSON-lines file: {"frame": <index>, "boxes": [[x1, y1, x2, y2], ...]}."""
    boxes: dict[int, list[list[float]]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(expected_got("--boxes", "a readable UTF-8 JSON-lines file", f"{path} ({exc})")) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            frame, entries = record["frame"], record["boxes"]
            if isinstance(frame, bool) or not isinstance(frame, int) or not isinstance(entries, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):  # ValueError: bad JSON, or an integer of thousands of digits
            raise InputError(expected_got(f"{path}:{number}", '{"frame": <index>, "boxes": [[x1, y1, x2, y2], ...]}',
                                          repr(line[:80]))) from None
        boxes.setdefault(frame, []).extend(entries)
    return boxes


@dataclass(frozen=True)
class Regions:
    """Where to look in each frame. kind: "center", "fixed", "file" or "detector"."""

    kind: str
    boxes: tuple[Box, ...] = ()
    per_frame: dict[int, list[list[float]]] = field(default_factory=dict, repr=False)
    detector: Detector | None = None

    @classmethod
    def center(cls) -> Regions:
        return cls("center")

    @classmethod
    def fixed(cls, boxes: Sequence[Box]) -> Regions:
        return cls("fixed", tuple(boxes)) if boxes else cls.center()

    @classmethod
    def from_file(cls, path: str | Path) -> Regions:
        return cls("file", per_frame=_read_boxes_file(Path(path)))

    @classmethod
    def from_detector(cls, detector: Detector) -> Regions:
        return cls("detector", detector=detector)

    def given_boxes(self, index: int) -> list[Sequence[float]]:
        """The boxes for frame `index` known before it is decoded (fixed or from the file), in full-frame
        pixels and not yet clipped; [] for the centre square and the detector, which need the pixels."""
        if self.kind == "fixed":
            return list(self.boxes)
        return list(self.per_frame.get(index, [])) if self.kind == "file" else []
