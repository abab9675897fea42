"""One frame from any source, and its decode: raw JPEG bytes at a DCT scale, with libjpeg's warnings counted.

    frame = Frame(index=0, source_id="-", wall_ts=time.time(), jpeg=data)
    image, scale = decode_frame(frame, need=(64, 64))   # uint8 RGB; scale 1, 2, 4 or 8 (DCT-domain downscale)

A camera's MJPEG frame decoded at 1/4 scale costs a fraction of a full decode (the IDCT runs on 2x2
instead of 8x8 blocks). `dct_scale` picks the largest scale that keeps every region at least `need`
pixels, so the crops still cover the model's input. Corrupt data raises `FrameError` with a reason;
"corrupt but decodable" data (libjpeg's "Corrupt JPEG data", "Premature end of JPEG file") decodes,
and its warning is returned to be counted rather than printed raw.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edge_guard import jpeg
from edge_guard.errors import EdgeGuardError

DCT_SCALES = (8, 4, 2, 1)  # libjpeg's power-of-two IDCT scales, largest first
_OPENCV_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                   8: cv2.IMREAD_REDUCED_COLOR_8}
_warnings_lock = threading.Lock()  # warnings.catch_warnings swaps process-wide state


class FrameError(EdgeGuardError):
    """A frame that cannot be used (corrupt, truncated, not an image); `reason` is a short counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Frame:
    """One frame. index: 0-based order in its source; source_id: the path, URL, device or "-" it came from;
    source_ts: the source's own time in seconds (video position, stream time) or None; wall_ts: time.time()
    when it was read. Exactly one of image (uint8 RGB, HxWx3) and jpeg (raw JPEG bytes) is set."""

    index: int
    source_id: str
    wall_ts: float
    source_ts: float | None = None
    image: np.ndarray | None = None
    jpeg: bytes | None = None


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOFn header, without decoding; None when no frame header is found."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOF0..SOF15 but DHT, JPG, DAC
            return (data[i + 7] << 8) | data[i + 8], (data[i + 5] << 8) | data[i + 6]
        i += 2 + length
    return None


def dct_scale(width: int, height: int, boxes: Sequence[tuple[int, int, int, int]] | None, need: tuple[int, int],
              allowed: Sequence[int] = DCT_SCALES) -> int:
    """The largest DCT scale (8, 4, 2 or 1) at which every box (full-frame pixels; None: the centre square)
    still measures at least need=(height, width) pixels."""
    if boxes:
        short = min(min(x2 - x1, y2 - y1) for x1, y1, x2, y2 in boxes)
    else:
        short = min(width, height)
    side = max(need)
    return next((s for s in sorted(allowed, reverse=True) if short // s >= side), 1)


def decode_frame(frame: Frame, *, scale: int = 1, backend: str = "auto") -> tuple[np.ndarray, list[str]]:
    """A frame's pixels as uint8 RGB, decoded at 1/scale for JPEG frames. Returns (image, libjpeg warnings).

    Raises FrameError("corrupt", ...) when the data does not decode at all.
    """
    if frame.image is not None:
        return frame.image, []
    data = frame.jpeg or b""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        raise FrameError("not_jpeg", f"{len(data)} bytes without a JPEG SOI marker")
    if jpeg.resolve_backend(backend) == "turbojpeg":
        image, warned = _decode_turbo(data, scale)
    else:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), _OPENCV_REDUCED[scale])
        image, warned = (None if bgr is None or bgr.ndim != 3 else np.ascontiguousarray(bgr[..., ::-1])), []
    if image is None or image.size == 0:
        raise FrameError("corrupt", f"{len(data)} bytes that decode to no pixels")
    return image, warned


def _decode_turbo(data: bytes, scale: int) -> tuple[np.ndarray, list[str]]:
    import turbojpeg

    handle = jpeg.turbo_handle()
    factor = None if scale == 1 else (1, scale)
    with _warnings_lock, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image = handle.decode(data, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=factor,
                                  flags=turbojpeg.TJFLAG_ACCURATEDCT)
        except OSError as exc:
            raise FrameError("corrupt", str(exc)) from None
    return image, [str(w.message) for w in caught]
