"""Split a byte stream of concatenated JPEGs (MJPEG on stdin, an HTTP multipart body) into frames.

    for item in split_jpegs(chunks):          # chunks: an iterable of bytes as they arrive
        if isinstance(item, bytes): ...        # one whole JPEG, SOI to EOI
        else: item.reason                      # a Broken piece: "truncated", "oversized" or "garbled"

The splitter walks the JPEG structure rather than searching for FFD9: marker segments are skipped by
their length (so an EXIF thumbnail's own EOI does not end the frame), then the entropy-coded data is
scanned for the next marker (FF00 stuffing and RSTn restart markers are data). A new SOI before the
EOI means the previous frame was cut off; it is reported as truncated and the stream resynchronises
on the new frame. Bytes between frames (multipart headers, boundaries) are skipped. A garbled segment
length that claims more bytes than follow can hide the frames behind it until the stream ends (they
are then recovered) or `max_frame_bytes` is reached (they are dropped as "oversized").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

SOI = b"\xff\xd8"
MAX_FRAME_BYTES = 32 << 20  # 32 MiB: larger than any camera frame; more is a runaway stream
_NEED, _BAD = -1, -2


@dataclass(frozen=True)
class Broken:
    """A piece of the stream that is not a whole JPEG: reason "truncated", "oversized" or "garbled"."""

    reason: str
    size: int  # bytes dropped


def _end_of_jpeg(buf: bytearray, j: int = 2, in_scan: bool = False) -> tuple[int, int, bool]:
    """Walk the JPEG that starts at buf[0] (SOI) from position j. Returns (end, j, in_scan): end is the index
    just past its EOI, _NEED for more bytes (then (j, in_scan) is where to resume, so every byte is walked
    once however the frame is chunked), or _BAD when it is broken."""
    n = len(buf)
    while True:
        if in_scan:
            k = buf.find(b"\xff", j)
            if k < 0:
                return _NEED, n, True
            if k + 1 >= n:
                return _NEED, k, True
            m = buf[k + 1]
            if m == 0x00 or 0xD0 <= m <= 0xD7:  # stuffed FF, restart marker: still scan data
                j = k + 2
                continue
            if m == 0xFF:  # fill byte before a marker
                j = k + 1
                continue
            j, in_scan = k, False
        if j + 2 > n:
            return _NEED, j, False
        if buf[j] != 0xFF:
            return _BAD, j, False
        marker = buf[j + 1]
        if marker == 0xFF:
            j += 1
            continue
        if marker == 0xD9:  # EOI
            return j + 2, j, False
        if marker == 0xD8:  # a new SOI inside this frame: it was cut off
            return _BAD, j, False
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            j += 2
            continue
        if j + 4 > n:
            return _NEED, j, False
        length = (buf[j + 2] << 8) | buf[j + 3]
        if length < 2:
            return _BAD, j, False
        if j + 2 + length > n:
            return _NEED, j, False  # resume at this marker once its segment is all here
        j += 2 + length
        in_scan = marker == 0xDA  # after SOS comes entropy-coded data (progressive JPEGs have several)


def split_jpegs(chunks: Iterable[bytes], *, max_frame_bytes: int = MAX_FRAME_BYTES) -> Iterator[bytes | Broken]:
    """Yield each whole JPEG in the concatenated stream, and a Broken for each piece that is not one."""
    buf = bytearray()
    resume = (2, False)  # where the walk of the frame at buf[0] stopped for want of bytes
    for chunk in chunks:
        buf += chunk
        while True:
            start = buf.find(SOI)
            if start < 0:
                del buf[: max(0, len(buf) - 1)]  # keep a trailing FF that may start the next SOI
                break
            if start:
                del buf[:start]  # multipart headers, boundaries, garbage between frames
                resume = (2, False)
            end, j, in_scan = _end_of_jpeg(buf, *resume)
            if end == _NEED:
                resume = (j, in_scan)
                if len(buf) > max_frame_bytes:
                    yield Broken("oversized", len(buf))
                    buf.clear()
                    resume = (2, False)
                break
            resume = (2, False)
            if end == _BAD:
                nxt = buf.find(SOI, 2)
                cut = nxt if nxt > 0 else len(buf)
                yield Broken("truncated" if nxt > 0 else "garbled", cut)
                del buf[:cut]
                continue
            yield bytes(buf[:end])
            del buf[:end]
    # the stream ended: what is left is frames behind a broken one (a garbled length hid them) or a cut-off tail
    while (start := buf.find(SOI)) >= 0:
        del buf[:start]
        end = _end_of_jpeg(buf)[0]
        if end > 0:
            yield bytes(buf[:end])
            del buf[:end]
            continue
        nxt = buf.find(SOI, 2)
        yield Broken("truncated", nxt if nxt > 0 else len(buf))
        if nxt < 0:
            break
        del buf[:nxt]
