"""Frame sources: what `edgeguard infer` and `Guard.run` read. `open_source(spec)` picks one from its spelling:

| spec | source | frames |
|---|---|---|
| `-` | raw MJPEG bytes on stdin (`ffmpeg ... -f mjpeg -`) | every frame, split on SOI/EOI |
| `0`, `/dev/video0` | V4L2/USB camera, raw MJPEG by default | live |
| `rtsp://...`, `rtsps://...` | network video stream (OpenCV's FFmpeg backend) | live |
| `http(s)://...` | HTTP multipart MJPEG (IP cameras), else FFmpeg | live |
| a video file (`.avi`, `.mp4`, `.mkv`, ...) | OpenCV/FFmpeg | every frame |
| image files, folders, globs (`"shots/*.jpg"`) | images | every image |

Live sources keep a bounded queue (the latest `queue_size` frames win; dropped frames are counted)
and reconnect with capped exponential backoff; see `edge_guard.sources.base`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from edge_guard.errors import InputError, expected_got
from edge_guard.sources.base import LiveSource, Source, SourceStats, StreamSource
from edge_guard.sources.capture import CameraSettings, open_camera, open_stream_url, open_video_file
from edge_guard.sources.frame import MAX_PIXELS, Frame, FrameError, decode_frame
from edge_guard.sources.images import GLOB_CHARS, IMAGE_SUFFIXES, open_images
from edge_guard.sources.mjpeg import Broken
from edge_guard.sources.pipes import NotMjpeg, open_http_mjpeg, open_stdin

__all__ = ["GLOB_CHARS", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "CameraSettings", "Frame", "FrameError", "LiveSource",
           "Source", "SourceStats", "StreamSource", "decode_frame", "kind_of", "open_source"]

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mjpeg", ".mjpg", ".m4v", ".ts", ".mpg", ".mpeg")
_CAMERA = re.compile(r"^(\d+|/dev/video\d+)$")


def open_http(url: str) -> Iterable[Frame | Broken]:
    """An http(s) source in one request: MJPEG when the server sends it, else the stream through FFmpeg."""
    try:
        return open_http_mjpeg(url)
    except NotMjpeg:
        return open_stream_url(url)


def kind_of(spec: str) -> str:
    """How `open_source` reads `spec`: stdin, camera, rtsp, http, video or images."""
    if spec == "-":
        return "stdin"
    if _CAMERA.match(spec):
        return "camera"
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if scheme in ("rtsp", "rtsps", "rtmp", "udp", "tcp", "srt"):
        return "rtsp"
    if scheme in ("http", "https"):
        return "http"
    if scheme:
        raise InputError(expected_got("source", "a file, folder, glob, camera (0, /dev/video0), -, or an rtsp:// or "
                                      "http(s):// URL", repr(spec)))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    return "images"


def open_source(specs: str | Sequence[str], *, recursive: bool = False, camera: CameraSettings = CameraSettings(),
                queue_size: int = 2, max_reconnects: int | None = None, backoff: float = 0.5,
                max_pixels: int = MAX_PIXELS) -> Source:
    """Open what `specs` names (one spec, or several image paths/folders/globs); see the module table.

    Raises InputError when it does not exist or cannot be opened at all.
    """
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise InputError(expected_got("source", "at least one file, folder, camera, - or URL", "none"))
    kinds = [kind_of(s) for s in specs]
    if len(specs) > 1 and set(kinds) != {"images"}:
        raise InputError(expected_got("sources", "one stream (camera, URL, video file or -), or any number of image "
                                      "files, folders and globs",
                                      f"{len(specs)} sources of kinds {sorted(set(kinds))}"))
    kind, spec = kinds[0], specs[0]
    live = {"queue_size": queue_size, "max_reconnects": max_reconnects, "backoff": backoff}
    if kind == "stdin":
        return StreamSource("-", open_stdin)
    if kind == "camera":
        device: str | int = int(spec) if spec.isdigit() else spec
        return LiveSource(spec, lambda: open_camera(device, camera), **live)
    if kind == "rtsp":
        return LiveSource(spec, lambda: open_stream_url(spec), **live)
    if kind == "http":
        return LiveSource(spec, lambda: open_http(spec), **live)
    if kind == "video":
        return StreamSource(spec, lambda: open_video_file(spec))
    return StreamSource(specs[0] if len(specs) == 1 else f"{len(specs)} paths",
                        lambda: open_images(specs, recursive=recursive, max_pixels=max_pixels))
