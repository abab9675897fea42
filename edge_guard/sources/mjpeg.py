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


def _end_of_jpeg(buf: bytearray, i: int) -> int:
    """Index just past the EOI of the JPEG starting at buf[i] (SOI), _NEED for more bytes, _BAD if broken."""
    n, j = len(buf), i + 2
    in_scan = False
    while True:
        if in_scan:
            k = buf.find(b"\xff", j)
            if k < 0 or k + 1 >= n:
                return _NEED
            m = buf[k + 1]
            if m == 0x00 or 0xD0 <= m <= 0xD7:  # stuffed FF, restart marker: still scan data
                j = k + 2
                continue
            if m == 0xFF:  # fill byte before a marker
                j = k + 1
                continue
            j = k
        if j + 2 > n:
            return _NEED
        if buf[j] != 0xFF:
            return _BAD
        marker = buf[j + 1]
        if marker == 0xFF:
            j += 1
            continue
        if marker == 0xD9:  # EOI
            return j + 2
        if marker == 0xD8:  # a new SOI inside this frame: it was cut off
            return _BAD
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            j += 2
            continue
        if j + 4 > n:
            return _NEED
        length = (buf[j + 2] << 8) | buf[j + 3]
        if length < 2:
            return _BAD
        j += 2 + length
        in_scan = marker == 0xDA  # after SOS comes entropy-coded data (progressive JPEGs have several)
        if j > n:
            return _NEED


def split_jpegs(chunks: Iterable[bytes], *, max_frame_bytes: int = MAX_FRAME_BYTES) -> Iterator[bytes | Broken]:
    """Yield each whole JPEG in the concatenated stream, and a Broken for each piece that is not one."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while True:
            start = buf.find(SOI)
            if start < 0:
                del buf[: max(0, len(buf) - 1)]  # keep a trailing FF that may start the next SOI
                break
            if start:
                del buf[:start]  # multipart headers, boundaries, garbage between frames
            end = _end_of_jpeg(buf, 0)
            if end == _NEED:
                if len(buf) > max_frame_bytes:
                    yield Broken("oversized", len(buf))
                    buf.clear()
                break
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
        end = _end_of_jpeg(buf, 0)
        if end > 0:
            yield bytes(buf[:end])
            del buf[:end]
            continue
        nxt = buf.find(SOI, 2)
        yield Broken("truncated", nxt if nxt > 0 else len(buf))
        if nxt < 0:
            break
        del buf[:nxt]
