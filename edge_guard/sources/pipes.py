"""MJPEG byte streams: concatenated JPEGs on stdin (`ffmpeg ... -f mjpeg - | edgeguard infer -`) and HTTP
multipart MJPEG (`multipart/x-mixed-replace`, as IP cameras and `ffmpeg -f mpjpeg` serve it)."""

from __future__ import annotations

import http.client
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from edge_guard.errors import InputError
from edge_guard.sources.frame import Frame
from edge_guard.sources.mjpeg import Broken, split_jpegs

CHUNK = 1 << 16  # 64 KiB reads: a few per 1080p frame
HTTP_TIMEOUT_S = 5.0  # connect and read timeout; a silent stream counts as lost after it
MJPEG_TYPES = ("multipart/", "image/jpeg", "video/x-motion-jpeg")  # Content-Type prefixes of MJPEG over HTTP


class NotMjpeg(InputError):
    """The HTTP server answered, but not with MJPEG (a video for FFmpeg, or an error page)."""


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    read = getattr(stream, "read1", stream.read)  # read1: what is there, without waiting to fill CHUNK
    while chunk := read(CHUNK):
        yield chunk


def _frames(items: Iterable[bytes | Broken], source_id: str) -> Iterator[Frame | Broken]:
    index = 0
    for item in items:
        if isinstance(item, Broken):
            yield item
            continue
        yield Frame(index, source_id, time.time(), jpeg=item)
        index += 1


def open_stdin(stream: BinaryIO | None = None) -> Iterator[Frame | Broken]:
    """JPEG frames from stdin's bytes (or another binary stream), split on their SOI/EOI structure."""
    stream = stream if stream is not None else sys.stdin.buffer
    return _frames(split_jpegs(_chunks(stream)), "-")


def open_http_mjpeg(url: str, *, timeout: float = HTTP_TIMEOUT_S) -> Iterator[Frame | Broken]:
    """Connect to an HTTP MJPEG stream now (OSError when it cannot), then yield its frames as they arrive."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - http(s) URLs only, checked by caller
    except urllib.error.URLError as exc:
        raise OSError(f"{url}: {exc.reason}") from None
    except (ValueError, http.client.InvalidURL) as exc:  # a malformed address: no retry will fix it
        raise InputError(f"{url}: not a valid URL ({exc}).") from None
    kind = response.headers.get("Content-Type", "")
    if not kind.startswith(MJPEG_TYPES):
        response.close()
        raise NotMjpeg(f"{url}: expected an MJPEG stream (multipart/x-mixed-replace or image/jpeg), got Content-Type "
                       f"{kind or 'none'!r}.")

    def frames() -> Iterator[Frame | Broken]:
        with response:
            yield from _frames(split_jpegs(_chunks(response)), url)

    return frames()
