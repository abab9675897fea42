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

import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edge_guard import jpeg
from edge_guard.errors import EdgeGuardError
from edge_guard.spec import MAX_PIXELS

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


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's header, without decoding: JPEG, PNG, BMP, PPM/PGM and WebP;
    None when the format is not one of them or the header is cut short."""
    head = data[:64]
    if head[:2] == b"\xff\xd8":
        return jpeg_size(data)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:2] == b"BM" and len(head) >= 26:
        return abs(int.from_bytes(head[18:22], "little", signed=True)), abs(int.from_bytes(head[22:26], "little",
                                                                                            signed=True))
    if head[:2] in (b"P5", b"P6"):
        fields = re.sub(rb"#[^\n]*", b" ", head[2:]).split()
        return (int(fields[0]), int(fields[1])) if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit() \
            else None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8X":
            return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
        if chunk == b"VP8 ":
            return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def check_pixels(size: tuple[int, int] | None, max_pixels: int, what: str) -> None:
    """FrameError("too_large") when a header promises more than max_pixels (a decompression bomb: a few KB
    of file claiming 60000x60000 pixels, gigabytes once decoded); FrameError("no_header") when the size
    cannot be read from the header (nothing is decoded whose size is not known first)."""
    if size is None:
        raise FrameError("no_header", f"{what}: no image size in the header (JPEG, PNG, BMP, PPM or WebP expected)")
    if size[0] * size[1] > max_pixels:
        raise FrameError("too_large", f"{what}: {size[0]}x{size[1]} pixels, more than the cap of {max_pixels:,} "
                                      "(--max-pixels)")


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


def decode_frame(frame: Frame, *, scale: int = 1, backend: str = "auto",
                 max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, list[str]]:
    """A frame's pixels as uint8 RGB, decoded at 1/scale for JPEG frames. Returns (image, libjpeg warnings).

    Raises FrameError("corrupt", ...) when the data does not decode at all, FrameError("too_large") when its
    header promises more than max_pixels (checked before decoding).
    """
    if frame.image is not None:
        return frame.image, []
    data = frame.jpeg or b""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        raise FrameError("not_jpeg", f"{len(data)} bytes without a JPEG SOI marker")
    check_pixels(jpeg_size(data), max_pixels, frame.source_id)
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
