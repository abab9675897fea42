"""`edgeguard infer`: classify a source's frames with a bundle and write one JSON line per frame.

    summary = run_infer(InferOptions(sources=("clip.avi",), output="results.jsonl"))
    print("\\n".join(summary.lines()))

The run stops at the end of a file source, after `max_frames`, or on Ctrl-C / SIGTERM; in every case
the output holds whole JSON lines only and the summary is returned (`interrupted` says by what).
Everything that can be checked before the first frame is (the output path, the bundle, the regions),
so a bad option never leaves a half-written file.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from typing import Any

from edge_guard.errors import ConfigError, expected_got
from edge_guard.guard import Guard
from edge_guard.output import Annotator, JsonLines, StatusLine, check_output_path
from edge_guard.regions import Box, Regions
from edge_guard.sources import CameraSettings, Source, kind_of, open_source
from edge_guard.sources.frame import MAX_PIXELS, Frame, FrameError
from edge_guard.sources.images import warn_skip
from edge_guard.stream import STAGES, StreamStats, check_thresholds, run_stream


@dataclass(frozen=True)
class InferOptions:
    """What `edgeguard infer` takes (see its --help)."""

    sources: tuple[str, ...]
    bundle: str | None = None
    providers: tuple[str, ...] = ("cpu",)
    threads: int | None = None
    seed: int | None = None
    rois: tuple[Box, ...] = ()
    boxes: str | None = None  # JSON-lines file of per-frame boxes
    detector: str | None = None  # ONNX detector
    detector_score: float = 0.25
    detector_classes: tuple[int, ...] | None = None
    min_confidence: float = 0.0
    suspect_below: float | None = None  # None: the bundle's measured alarm, else DEFAULT_SUSPECT_BELOW
    output: str | None = None  # None: stdout
    append: bool = False
    annotate: str | None = None
    max_frames: int | None = None
    recursive: bool = False
    camera: CameraSettings = CameraSettings()
    queue_size: int = 2
    max_reconnects: int | None = None
    status: bool = True
    max_pixels: int = MAX_PIXELS  # frames and images whose header promises more are refused before decoding
    allow_fallback: bool = False  # a provider that fails to start: continue on the next one (logged), not stop
    provider_options: dict[str, dict[str, Any]] | None = None  # e.g. {"tensorrt": {"trt_fp16_enable": True}}
    dct_scaling: bool = True  # decode JPEG frames at the largest DCT scale the regions allow
    profile: Any = None  # the edge_guard.profiles.Profile these options came from, checked against the bundle
    trusted_keys: tuple[str, ...] = ()  # public key files; with require_signed, the bundle must be signed by one
    require_signed: bool = False


@dataclass
class InferSummary:
    """The end of a run: counters from the loop and the source, per-stage latency percentiles."""

    bundle: str
    provider: str
    stats: StreamStats
    source: dict[str, Any]
    output: str | None
    written: int
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when stopped by a signal
    annotated: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        s, src = self.stats, self.source
        corrupt = {**src["corrupt"], **{k: v + src["corrupt"].get(k, 0) for k, v in s.corrupt.items()}}
        head = (f"{s.frames} frames, {s.regions} regions ({s.suspect} suspect), {s.fps:.1f} frames/s; "
                f"dropped {src['dropped']}, corrupt {sum(corrupt.values())}"
                + (f" {corrupt}" if corrupt else "") + f", decoded with libjpeg warnings {s.warned}, "
                f"reconnects {src['reconnects']}, boxes skipped {s.skipped_boxes}")
        lines = [head + f" ({self.bundle}, {self.provider})"]
        for stage in STAGES:
            p = s.percentiles(stage)
            lines.append(f"  {stage:>9} ms  p50 {p['p50']:.2f}  p95 {p['p95']:.2f}  p99 {p['p99']:.2f}")
        if src["gaps"]:
            lines.append("gaps: " + ", ".join(f"{g['seconds']:.1f} s" for g in src["gaps"]))
        if self.interrupted:
            lines.append(f"stopped by {self.interrupted} after frame {s.frames}")
        if self.output:
            lines.append(f"wrote {self.written} lines to {self.output}")
        if self.annotated:
            lines.append(f"annotated frames in {self.annotated}")
        return lines


def _status_text(stats: StreamStats, source: Source) -> str:
    total = stats.percentiles("total")
    src = source.stats
    return (f"{stats.frames} frames  {stats.fps:5.1f} fps  total p50 {total['p50']:.1f} ms p99 {total['p99']:.1f} ms  "
            f"dropped {src.dropped}  corrupt {sum(src.corrupt.values()) + sum(stats.corrupt.values())}  "
            f"reconnects {src.reconnects}  suspect {stats.suspect}")


def _regions(options: InferOptions) -> Regions:
    if options.detector:
        from edge_guard.detector import Detector

        return Regions.from_detector(Detector(options.detector, score=options.detector_score,
                                              classes=options.detector_classes, providers=options.providers,
                                              threads=options.threads))
    if options.boxes:
        return Regions.from_file(options.boxes)
    return Regions.fixed(options.rois)


class _Stop:
    """SIGTERM (and SIGINT) become a clean stop: the loop ends after the frame in hand."""

    def __init__(self) -> None:
        self.by: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.by is not None:  # already stopping: a second Ctrl-C must not cut the cleanup short
            return
        self.by = signal.Signals(signum).name
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def run_infer(options: InferOptions) -> InferSummary:
    """Run `edgeguard infer` (see the module docstring). Raises EdgeGuardError before any output is written when
    an option, the bundle or the source is wrong."""
    check_thresholds(options.min_confidence, options.suspect_below)
    if options.output:
        check_output_path(options.output, append=options.append)
    guard = Guard.from_bundle(options.bundle, providers=list(options.providers), threads=options.threads,
                              seed=options.seed, strict_providers=not options.allow_fallback,
                              provider_options=options.provider_options,
                              trusted_keys=list(options.trusted_keys) or None,
                              require_signed=options.require_signed)
    if options.profile is not None:
        options.profile.check_bundle(guard.bundle)
    regions = _regions(options)
    annotator = Annotator(options.annotate) if options.annotate else None
    source = open_source(options.sources, recursive=options.recursive, camera=options.camera,
                         queue_size=options.queue_size, max_reconnects=options.max_reconnects,
                         max_pixels=options.max_pixels)
    per_file = kind_of(options.sources[0]) == "images"

    def corrupt(frame: Frame, error: FrameError) -> None:
        if per_file:  # one line per unreadable file; streams are counted only (a flood would hide the summary)
            warn_skip(frame.source_id, str(error))
    sink = JsonLines(options.output, append=options.append)
    stats, status = StreamStats(), StatusLine(enabled=options.status)
    bundle = guard.bundle
    stop = _Stop()
    with stop:  # the handlers stay installed through the cleanup below
        try:
            for result in run_stream(guard, source, regions, min_confidence=options.min_confidence,
                                     suspect_below=options.suspect_below, stats=stats,
                                     max_frames=options.max_frames, backend=str(guard.backend or "auto"),
                                     keep_image=annotator is not None, max_pixels=options.max_pixels,
                                     dct_scaling=options.dct_scaling,
                                     on_corrupt=corrupt):
                sink.write(result.to_record(bundle.name, bundle.manifest_sha256))
                if annotator is not None and result.image is not None:
                    annotator.write(result.image, result.regions, result.decode_scale)
                status.update(_status_text(stats, source))
        except KeyboardInterrupt:
            stop.by = stop.by or "SIGINT"
        finally:
            status.clear()
            source.close()
            sink.close()
            if annotator is not None:
                annotator.close()
    return InferSummary(bundle.name, guard.engine.active_providers[0], stats, source.stats.to_dict(),
                        str(sink.path) if sink.path else None, sink.count, stop.by,
                        str(annotator.path) if annotator else None)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'1280x720' -> (1280, 720); None stays None."""
    if not text:
        return None
    w, sep, h = text.lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise ConfigError(expected_got("--camera-size", "WIDTHxHEIGHT like 1280x720", repr(text)))
    return int(w), int(h)


def parse_classes(text: str | None) -> tuple[int, ...] | None:
    """'0,11' -> (0, 11) detector class ids; None or '' keeps every class."""
    if not text:
        return None
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ConfigError(expected_got("--detector-classes", "comma-separated class ids like 0,11",
                                       repr(text))) from None
