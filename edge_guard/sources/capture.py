"""OpenCV captures: video files, V4L2/USB cameras (raw MJPEG when the camera sends it) and RTSP/HTTP URLs.

Cameras are opened with the V4L2 backend and asked for MJPG with CAP_PROP_CONVERT_RGB off, so each
read returns the camera's own JPEG bytes, which EdgeGuard decodes with libjpeg-turbo at the DCT scale
the regions allow (`edge_guard.sources.frame.decode_frame`) instead of OpenCV's full-size decode. A
camera that ignores the request delivers decoded frames, which are used as they are.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from edge_guard.errors import InputError
from edge_guard.sources.frame import Frame

OPEN_TIMEOUT_MS = 5000  # network streams: give up opening / reading after 5 s (then reconnect)
READ_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class CameraSettings:
    """Requested camera mode; None keeps the driver's. fourcc "MJPG" asks for raw JPEG frames."""

    width: int | None = None
    height: int | None = None
    fps: float | None = None
    fourcc: str | None = "MJPG"

    def __post_init__(self) -> None:
        if self.fourcc is not None and (len(self.fourcc) != 4 or not self.fourcc.isascii()):
            raise InputError(f"--camera-fourcc: expected 4 ASCII characters like MJPG or YUYV, got {self.fourcc!r}.")


def _capture(target: str | int, api: int, source_id: str) -> cv2.VideoCapture:
    params: list[int] = []
    if isinstance(target, str) and "://" in target:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
    cap = cv2.VideoCapture(target, api, params) if params else cv2.VideoCapture(target, api)
    if not cap.isOpened():
        cap.release()
        raise InputError(f"{source_id}: OpenCV cannot open it (not a readable video, camera or stream).")
    return cap


def _frames(cap: cv2.VideoCapture, source_id: str, *, file: bool) -> Iterator[Frame]:
    """Read until the capture ends; raw 1-D buffers are JPEG bytes, 3-D arrays decoded BGR frames."""
    index = 0
    try:
        while True:
            ok, data = cap.read()
            if not ok or data is None:
                if not file:
                    raise OSError("no frame from the capture (stream lost or device unplugged)")
                return
            pos = cap.get(cv2.CAP_PROP_POS_MSEC)  # a file's first frame is at 0.0; streams without time say 0 or -1
            stamp = pos / 1000.0 if pos is not None and (pos > 0 or (file and pos == 0)) else None
            if data.ndim == 3:
                yield Frame(index, source_id, time.time(), stamp, image=np.ascontiguousarray(data[..., ::-1]))
            else:
                yield Frame(index, source_id, time.time(), stamp, jpeg=data.tobytes())
            index += 1
    finally:
        cap.release()


def open_video_file(path: str) -> Iterator[Frame]:
    """Every frame of a video file OpenCV/FFmpeg reads (AVI, MP4, MKV, ...), in order."""
    return _frames(_capture(path, cv2.CAP_ANY, path), path, file=True)


def open_stream_url(url: str) -> Iterator[Frame]:
    """An RTSP/HTTP video stream through OpenCV's FFmpeg backend (5 s open and read timeouts)."""
    return _frames(_capture(url, cv2.CAP_FFMPEG, url), url, file=False)


def open_camera(device: str | int, settings: CameraSettings = CameraSettings()) -> Iterator[Frame]:
    """A V4L2 camera by index or /dev/videoN, in the requested mode (raw MJPEG by default)."""
    source_id = f"/dev/video{device}" if isinstance(device, int) else device
    cap = _capture(device, cv2.CAP_V4L2, source_id)
    if settings.fourcc:
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*settings.fourcc))
    for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, settings.width), (cv2.CAP_PROP_FRAME_HEIGHT, settings.height),
                        (cv2.CAP_PROP_FPS, settings.fps)):
        if value:
            cap.set(prop, value)
    if settings.fourcc == "MJPG":
        cap.set(cv2.CAP_PROP_CONVERT_RGB, 0)  # hand over the camera's JPEG bytes undecoded
    return _frames(cap, source_id, file=False)
