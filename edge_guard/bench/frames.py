"""The frames `bench` times: rendered road scenes (the default) or the first frames of a given source.

Frames are prepared before timing and cycled, so reading a file or a camera is never in the figures;
decoding is (a JPEG frame arrives as bytes, as from an MJPEG camera, and `classify_frame` decodes it).
A video file or an RTSP stream arrives decoded by OpenCV, so its decode stage is ~0 and the report says so.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from edge_guard.bench.config import BenchConfig
from edge_guard.errors import InputError, expected_got
from edge_guard.regions import Box, Regions
from edge_guard.scenes import encode_frame, render_scene
from edge_guard.sources.frame import Frame, jpeg_size


@dataclass(frozen=True)
class BenchFrames:
    frames: tuple[Frame, ...]
    regions: Regions  # boxes per frame index, in full-frame pixels
    size: tuple[int, int]  # (width, height) of the frames
    origin: str  # "rendered WxH road scenes, K signs" or the source spec
    jpeg: bool  # frames arrive as JPEG bytes (decode is timed)

    def crops_per_frame(self) -> float:
        return float(np.mean([len(self.regions.given_boxes(f.index)) for f in self.frames]))


def layout_boxes(width: int, height: int, k: int, need: int) -> list[Box]:
    """k squares side by side in the upper half of a frame whose content is unknown: side 12% of the height
    (at least the model input `need`), as a sign detector would return them."""
    side = min(max(need, int(0.12 * height)), height // 2, max(need, width // max(1, k)))
    step = width // k
    y1 = int(0.2 * height)
    return [(i * step + (step - side) // 2, y1, i * step + (step - side) // 2 + side, y1 + side)
            for i in range(k) if i * step + side <= width]


def rendered(config: BenchConfig) -> BenchFrames:
    w, h = config.synthetic
    rng = np.random.default_rng(config.seed)
    frames, per_frame = [], {}
    for i in range(config.distinct):
        scene = render_scene(w, h, rng=rng, signs=config.rois)
        frames.append(Frame(index=i, source_id=f"rendered-{w}x{h}", wall_ts=0.0, jpeg=encode_frame(scene.image)))
        per_frame[i] = [list(b) for b in scene.boxes]
    return BenchFrames(tuple(frames), Regions("file", per_frame=per_frame), (w, h),
                       f"rendered {w}x{h} road scenes, {config.rois} signs each (JPEG q90, 4:2:0)", True)


def from_source(config: BenchConfig, need: int) -> BenchFrames:
    from edge_guard.sources import open_source

    with open_source(str(config.source)) as source:
        frames = list(itertools.islice(iter(source), config.distinct))
    if not frames:
        raise InputError(expected_got("--source", "at least one frame", f"none from {config.source!r}"))
    first = frames[0]
    size = jpeg_size(first.jpeg) if first.jpeg is not None else None
    if size is None:
        if first.image is None:
            raise InputError(expected_got("--source", "frames with a readable size", f"{config.source!r}"))
        size = (first.image.shape[1], first.image.shape[0])
    frames = [Frame(index=i, source_id=f.source_id, wall_ts=0.0, image=f.image, jpeg=f.jpeg)
              for i, f in enumerate(frames)]
    boxes = layout_boxes(size[0], size[1], config.rois, need)
    return BenchFrames(tuple(frames), Regions.fixed(boxes), size, config.source, first.jpeg is not None)


def bench_frames(config: BenchConfig, need: int) -> BenchFrames:
    """The frames and regions of a run: `config.source`'s, else rendered ones. need: the model input side."""
    return from_source(config, need) if config.source else rendered(config)


def encoded_again(frames: BenchFrames) -> BenchFrames:
    """Decoded frames (a video file) as JPEG bytes, for the bare-decode reference only."""
    if frames.jpeg:
        return frames
    return BenchFrames(tuple(Frame(f.index, f.source_id, 0.0, jpeg=encode_frame(f.image)) for f in frames.frames
                             if f.image is not None), frames.regions, frames.size, frames.origin, True)
