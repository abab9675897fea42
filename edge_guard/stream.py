"""The frame loop: a source's frames -> regions -> Guard -> one FrameResult per frame, with counters.

    for result in run_stream(guard, open_source("clip.avi"), Regions.center()):
        result.regions[0].class_name, result.regions[0].suspect, result.timings_ms["total"]

Each frame is decoded once: a JPEG frame (MJPEG camera, stdin, HTTP) at the largest DCT scale that
keeps its regions at least the model's input size, boxes being given in full-frame pixels either
way. A region whose members disagree (fewer than `suspect_below` of them vote for the winner) is
flagged `suspect`: the ensemble's own alarm for an attack or an out-of-distribution input (with no
`suspect_below` given, the thresholds the bundle's manifest measured, `alarm`, else DEFAULT_SUSPECT_BELOW;
see edge_guard.alarm). Below
`min_confidence` a region's class is None ("no sign"). A frame that does not decode is counted
by reason and skipped; a box that does not fit is clipped, or skipped and counted when nothing is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_guard.errors import ConfigError, expected_got
from edge_guard.guard import Guard
from edge_guard.regions import Box, Regions, center_square, clip_box
from edge_guard.sources.base import Source
from edge_guard.sources.frame import MAX_PIXELS, Frame, FrameError, dct_scale, decode_frame, jpeg_size
from edge_guard.spec import DEFAULT_SUSPECT_BELOW

SCHEMA = "edgeguard.infer/1"  # the JSON-lines record version; bump when a field changes meaning
STAGES = ("decode", "crop", "defense", "inference", "vote", "total")
MAX_REGIONS = 256  # per frame; boxes past it are skipped and counted (a boxes file cannot stall the loop)


@dataclass(frozen=True)
class RegionResult:
    """One classified region. class_id/class_name None: below min_confidence ("no sign"). agreement: the
    fraction of members voting for the winner; suspect: agreement below the threshold."""

    box: Box
    class_id: int | None
    class_name: str | None
    confidence: float
    votes: tuple[int, ...]
    agreement: float
    suspect: bool
    detector_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"box": list(self.box), "class_id": self.class_id, "class_name": self.class_name,
               "confidence": round(self.confidence, 6), "votes": list(self.votes),
               "agreement": round(self.agreement, 4), "suspect": self.suspect}
        if self.detector_score is not None:
            out["detector_score"] = round(self.detector_score, 4)
        return out


@dataclass(frozen=True)
class FrameResult:
    """A frame's regions and stage latencies in ms (decode, crop, defense, inference, vote, total)."""

    index: int
    source_id: str
    source_ts: float | None
    wall_ts: float
    regions: tuple[RegionResult, ...]
    timings_ms: dict[str, float]
    decode_scale: int = 1
    skipped_boxes: int = 0
    warnings: tuple[str, ...] = ()
    image: np.ndarray | None = field(default=None, repr=False, compare=False)  # the decoded frame, if kept

    def to_record(self, bundle: str, manifest_sha256: str) -> dict[str, Any]:
        """The JSON-lines record (schema SCHEMA): no NaN can reach it (the engine refuses NaN logits)."""
        return {"schema": SCHEMA, "frame": self.index, "source": self.source_id, "source_ts": self.source_ts,
                "wall_ts": round(self.wall_ts, 6), "bundle": bundle, "manifest_sha256": manifest_sha256,
                "decode_scale": self.decode_scale, "regions": [r.to_dict() for r in self.regions],
                "skipped_boxes": self.skipped_boxes, "warnings": list(self.warnings),
                "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()}}


class LatencyHistogram:
    """Latency percentiles in constant memory (a run may last days): counts in log-spaced bins from 1 us
    to 100 s, 2.3% wide, so a percentile is exact to within one bin (+-1.2%)."""

    LOW_MS, HIGH_MS, BINS = 1e-3, 1e5, 800

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS + 2, np.int64)  # [under, bins..., over]
        self._log_low = np.log(self.LOW_MS)
        self._step = (np.log(self.HIGH_MS) - self._log_low) / self.BINS

    def add(self, ms: float) -> None:
        if ms <= self.LOW_MS:
            self.counts[0] += 1
        elif ms >= self.HIGH_MS:
            self.counts[-1] += 1
        else:
            self.counts[1 + int((np.log(ms) - self._log_low) / self._step)] += 1

    def __len__(self) -> int:
        return int(self.counts.sum())

    def percentile(self, q: float) -> float:
        """The q-th percentile in ms (the geometric centre of its bin); 0.0 when empty."""
        n = len(self)
        if n == 0:
            return 0.0
        i = int(np.searchsorted(np.cumsum(self.counts), max(1, int(np.ceil(q / 100 * n)))))
        if i == 0:
            return self.LOW_MS
        if i > self.BINS:
            return self.HIGH_MS
        return float(np.exp(self._log_low + (i - 0.5) * self._step))


@dataclass
class StreamStats:
    """Counters and latencies of one run (the source's own counters live in source.stats)."""

    frames: int = 0
    regions: int = 0
    suspect: int = 0
    skipped_boxes: int = 0
    corrupt: dict[str, int] = field(default_factory=dict)  # frames that did not decode, by reason
    warned: int = 0  # frames decoded despite libjpeg warnings ("corrupt but decodable")
    started: float = field(default_factory=time.perf_counter)
    stage_ms: dict[str, LatencyHistogram] = field(default_factory=lambda: {s: LatencyHistogram() for s in STAGES})

    def add(self, result: FrameResult) -> None:
        self.frames += 1
        self.regions += len(result.regions)
        self.suspect += sum(r.suspect for r in result.regions)
        self.skipped_boxes += result.skipped_boxes
        self.warned += bool(result.warnings)
        for stage in STAGES:
            self.stage_ms[stage].add(result.timings_ms.get(stage, 0.0))

    def percentiles(self, stage: str, q: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
        """Latency percentiles in ms of one stage over the run so far (to within 1.2%)."""
        return {f"p{p}": self.stage_ms[stage].percentile(p) for p in q}

    @property
    def fps(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.frames / elapsed if elapsed > 0 else 0.0


def check_thresholds(min_confidence: float, suspect_below: float | None) -> None:
    """ConfigError unless both thresholds are numbers in [0, 1] (suspect_below None: the bundle's)."""
    for name, value in (("--min-confidence", min_confidence), ("--suspect-below", suspect_below)):
        if name == "--suspect-below" and value is None:
            continue
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ConfigError(expected_got(name, "a number in [0, 1]", repr(value)))


def _boxes(frame: Frame, image: np.ndarray, regions: Regions, scale: int) -> tuple[list[Box], list[float | None], int]:
    """The frame's boxes in the decoded image's pixels, clipped; (boxes, detector scores, skipped count)."""
    h, w = image.shape[:2]
    if regions.kind == "center":
        return [center_square(h, w)], [None], 0
    if regions.kind == "detector" and regions.detector is not None:
        found = regions.detector.detect(image)
        raw, scores = [d.box for d in found], [d.score for d in found]
    else:
        raw = regions.given_boxes(frame.index)
        scores = [None] * len(raw)
    boxes, kept_scores, skipped = [], [], max(0, len(raw) - MAX_REGIONS)
    for box, score in zip(raw[:MAX_REGIONS], scores):
        try:
            scaled = [float(c) / scale for c in box] if len(box) == 4 else []
        except (TypeError, ValueError):
            scaled = []
        clipped = clip_box(scaled, h, w) if scaled else None
        if clipped is None:
            skipped += 1
            continue
        boxes.append(clipped)
        kept_scores.append(score)
    return boxes, kept_scores, skipped


def _scale_for(frame: Frame, size: tuple[int, int] | None, regions: Regions, need: tuple[int, int],
               allow: bool) -> int:
    """The DCT scale to decode a JPEG frame of `size` (its header's) at: 1 for decoded frames, the detector,
    an unknown size, or when not allowed."""
    if not allow or size is None or regions.kind == "detector":
        return 1
    if regions.kind == "center":
        return dct_scale(size[0], size[1], None, need)
    boxes = [b for b in (clip_box(r, size[1], size[0]) for r in regions.given_boxes(frame.index)) if b]
    return dct_scale(size[0], size[1], boxes, need) if boxes else 1


def alarm_thresholds(guard: Guard, suspect_below: float | None = None) -> tuple[float, float]:
    """(agreement threshold, confidence threshold) of the suspect flag: the caller's suspect_below when given
    (confidence off), else the bundle manifest's measured alarm, else (DEFAULT_SUSPECT_BELOW, off)."""
    if suspect_below is not None:
        return float(suspect_below), 0.0
    alarm = guard.bundle.manifest.alarm
    return (float(alarm.suspect_below), float(alarm.confidence_below)) if alarm is not None \
        else (DEFAULT_SUSPECT_BELOW, 0.0)


def is_suspect(agreement: Any, confidence: Any, below: float, confidence_below: float) -> Any:
    """The suspect flag (a bool, or a bool array for arrays): fewer than `below` of the members vote for the
    winner, or its confidence is under `confidence_below` (the thresholds of `alarm_thresholds`)."""
    return (agreement < below) | (confidence < confidence_below)


def classify_frame(guard: Guard, frame: Frame, regions: Regions, *, min_confidence: float = 0.0,
                   suspect_below: float | None = None, dct_scaling: bool = True,
                   backend: str = "auto", keep_image: bool = False, max_pixels: int = MAX_PIXELS,
                   session_ms: list[float] | None = None) -> FrameResult:
    """Decode one frame, cut its regions and classify them. Raises FrameError when it does not decode.
    session_ms: receives each onnxruntime call's wall time in ms (`Engine.run`)."""
    t0 = time.perf_counter()
    need = (guard.bundle.input.height, guard.bundle.input.width)
    size = jpeg_size(frame.jpeg) if frame.jpeg is not None else None  # (width, height), read once per frame
    scale = _scale_for(frame, size, regions, need, dct_scaling)
    image, warnings = decode_frame(frame, scale=scale, backend=backend, max_pixels=max_pixels)
    t1 = time.perf_counter()
    boxes, scores, skipped = _boxes(frame, image, regions, scale)
    preds = guard.classify(image, rois=[boxes], session_ms=session_ms) if boxes else []
    members = len(guard.bundle.members)
    below, conf_below = alarm_thresholds(guard, suspect_below)
    out = []
    full_w, full_h = size if size is not None and scale > 1 else (image.shape[1], image.shape[0])
    for box, score, p in zip(boxes, scores, preds):
        agreement = p.votes.count(p.class_id) / members
        known = p.confidence >= min_confidence
        x1, y1, x2, y2 = (c * scale for c in box)  # back to full-frame pixels, inside the frame
        full = (min(x1, full_w), min(y1, full_h), min(x2, full_w), min(y2, full_h))
        out.append(RegionResult(full, p.class_id if known else None, p.class_name if known else None,  # type: ignore[arg-type]
                                p.confidence, p.votes, agreement,
                                bool(is_suspect(agreement, p.confidence, below, conf_below)), score))
    stages = preds[0].timings_ms if preds else {}
    timings = {"decode": (t1 - t0) * 1000.0, "crop": stages.get("preprocess", 0.0),
               "defense": stages.get("defense", 0.0), "inference": stages.get("inference", 0.0),
               "vote": stages.get("vote", 0.0)}
    timings["total"] = (time.perf_counter() - t0) * 1000.0
    return FrameResult(frame.index, frame.source_id, frame.source_ts, frame.wall_ts, tuple(out), timings, scale,
                       skipped, tuple(warnings), image if keep_image else None)


def run_stream(guard: Guard, source: Source, regions: Regions | None = None, *, min_confidence: float = 0.0,
               suspect_below: float | None = None, stats: StreamStats | None = None,
               max_frames: int | None = None, dct_scaling: bool = True, backend: str = "auto",
               keep_image: bool = False, max_pixels: int = MAX_PIXELS,
               on_corrupt: Callable[[Frame, FrameError], None] | None = None) -> Iterator[FrameResult]:
    """Classify every frame of `source` (see the module docstring); frames that do not decode are counted in
    stats.corrupt and skipped (on_corrupt(frame, error) is told). max_pixels: frames whose header promises more
    are refused before decoding. The source is closed when the iteration ends, is closed, or fails."""
    try:
        check_thresholds(min_confidence, suspect_below)  # now, not at the first frame: nothing opened is left open
    except ConfigError:
        source.close()
        raise
    return _loop(guard, source, regions or Regions.center(), stats if stats is not None else StreamStats(),
                 min_confidence=min_confidence, suspect_below=suspect_below, max_frames=max_frames,
                 dct_scaling=dct_scaling, backend=backend, keep_image=keep_image, max_pixels=max_pixels,
                 on_corrupt=on_corrupt)


def _loop(guard: Guard, source: Source, regions: Regions, stats: StreamStats, *, min_confidence: float,
          suspect_below: float | None, max_frames: int | None, dct_scaling: bool, backend: str, keep_image: bool,
          max_pixels: int, on_corrupt: Callable[[Frame, FrameError], None] | None) -> Iterator[FrameResult]:
    try:
        for frame in source:
            try:
                result = classify_frame(guard, frame, regions, min_confidence=min_confidence,
                                        suspect_below=suspect_below, dct_scaling=dct_scaling, backend=backend,
                                        keep_image=keep_image, max_pixels=max_pixels)
            except FrameError as exc:
                stats.corrupt[exc.reason] = stats.corrupt.get(exc.reason, 0) + 1
                if on_corrupt is not None:
                    on_corrupt(frame, exc)
                continue
            stats.add(result)
            yield result
            if max_frames is not None and stats.frames >= max_frames:
                return
    finally:
        source.close()
