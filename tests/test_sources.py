"""Frame sources: the MJPEG splitter, DCT-scaled decodes, video files, stdin, HTTP MJPEG with reconnects."""

from __future__ import annotations

import http.server
import io
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_guard import jpeg
from edge_guard.errors import InputError
from edge_guard.sources import kind_of, open_source
from edge_guard.sources.base import LiveSource
from edge_guard.sources.frame import Frame, FrameError, dct_scale, decode_frame, jpeg_size
from edge_guard.sources.mjpeg import Broken, split_jpegs
from edge_guard.sources.pipes import open_http_mjpeg, open_stdin
from tests.onnx_fixtures import solid

RED, GREEN, BLUE = (220, 20, 20), (20, 220, 20), (20, 20, 220)


def _jpegs(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [jpeg.encode(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), 80) for _ in range(n)]


def _chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_splitter_finds_every_frame_across_chunks_and_skips_what_lies_between():
    frames = _jpegs(4)
    stream = b"".join(b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + f + b"\r\n" for f in frames)
    for size in (1, 7, 97, 1 << 16):
        assert list(split_jpegs(_chunked(stream, size))) == frames


def test_splitter_reports_truncated_and_resynchronises():
    a, b, c = _jpegs(3)
    out = list(split_jpegs(_chunked(a + b[: len(b) // 2] + c + b"\xff\xd8\xff\xe0\x00", 50)))
    assert out[0] == a and out[2] == c
    assert isinstance(out[1], Broken) and out[1].reason == "truncated"
    assert isinstance(out[3], Broken) and out[3].reason == "truncated"  # cut off at the end of the stream
    assert len(out) == 4


def test_splitter_skips_an_embedded_thumbnail_eoi():
    main, thumb = _jpegs(2, 32, 32)
    app1 = b"Exif\x00\x00" + thumb  # an APP1 segment holding a whole JPEG (SOI..EOI) as a thumbnail
    with_thumb = main[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + main[2:]
    assert list(split_jpegs([with_thumb, with_thumb])) == [with_thumb, with_thumb]


def test_splitter_drops_an_oversized_frame():
    (a,) = _jpegs(1)
    out = list(split_jpegs([a[:-2], b"\x00" * 5000], max_frame_bytes=4000))
    assert isinstance(out[0], Broken) and out[0].reason == "oversized"


def test_jpeg_size_and_dct_scale():
    data = jpeg.encode(solid(RED, 1080, 1920), 80)
    assert jpeg_size(data) == (1920, 1080)
    assert dct_scale(1920, 1080, None, (32, 32)) == 8  # centre square 1080 px: 1/8 still gives 135 px
    assert dct_scale(1920, 1080, [(0, 0, 128, 128)], (32, 32)) == 4
    assert dct_scale(1920, 1080, [(0, 0, 128, 128), (10, 10, 50, 60)], (32, 32)) == 1


@pytest.mark.parametrize("backend", ["opencv", "turbojpeg"])
def test_decode_at_a_dct_scale_and_count_corrupt_but_decodable(backend):
    if backend not in jpeg.available_backends():
        pytest.skip("libturbojpeg is not installed on this machine (make setup installs it)")
    image = solid(BLUE, 64, 96)
    data = jpeg.encode(image, 90)
    full, warnings = decode_frame(Frame(0, "t", 0.0, jpeg=data), backend=backend)
    quarter, _ = decode_frame(Frame(0, "t", 0.0, jpeg=data), scale=4, backend=backend)
    assert full.shape == (64, 96, 3) and quarter.shape == (16, 24, 3) and warnings == []
    assert np.abs(quarter.astype(int) - BLUE).max() < 12  # the same colour, a quarter of the pixels
    with pytest.raises(FrameError) as info:
        decode_frame(Frame(0, "t", 0.0, jpeg=b"not a jpeg"), backend=backend)
    assert info.value.reason == "not_jpeg"
    if backend == "turbojpeg":  # libjpeg's "Premature end of JPEG file" is returned, not printed
        (noisy,) = _jpegs(1, 64, 96)
        cut, warnings = decode_frame(Frame(0, "t", 0.0, jpeg=noisy[: len(noisy) * 2 // 3]), backend=backend)
        assert cut.shape == (64, 96, 3) and warnings and "JPEG" in warnings[0]


def _write_video(path: Path, colors, size=(64, 48), fourcc="MJPG") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, size)
    assert writer.isOpened()
    for color in colors:
        writer.write(np.ascontiguousarray(solid(color, size[1], size[0])[..., ::-1]))
    writer.release()
    return path


@pytest.mark.parametrize("name, fourcc", [("clip.avi", "MJPG"), ("clip.mp4", "mp4v")])
def test_video_file_gives_every_frame_in_order_as_rgb(tmp_path, name, fourcc):
    path = _write_video(tmp_path / name, [RED, GREEN, BLUE, RED], fourcc=fourcc)
    assert kind_of(str(path)) == "video"
    with open_source(str(path)) as source:
        frames = list(source)
    assert [f.index for f in frames] == [0, 1, 2, 3] and all(f.source_id == str(path) for f in frames)
    colors = [tuple(int(v) for v in f.image[24, 32]) for f in frames]
    for got, want in zip(colors, [RED, GREEN, BLUE, RED]):
        assert np.abs(np.subtract(got, want)).max() < 25
    assert source.stats.read == 4 and not source.live


def test_kind_of_and_unknown_or_missing_sources():
    assert [kind_of(s) for s in ("-", "0", "/dev/video2", "rtsp://h/s", "http://h/x", "shots/*.jpg")] == [
        "stdin", "camera", "camera", "rtsp", "http", "images"]
    with pytest.raises(InputError, match="ftp://x"):
        kind_of("ftp://x")
    with pytest.raises(InputError, match="not found"):
        open_source("no/such/file.png")
    with pytest.raises(InputError, match="one stream"):
        open_source(["-", "a.png"])


def test_stdin_mjpeg_counts_corrupt_and_truncated_frames():
    a, b, c = _jpegs(3)
    stream = io.BytesIO(a + b"garbage" + b[:100] + c + b"\xff\xd8\xff\xdb\x00\x43")
    items = list(open_stdin(stream))
    frames = [i for i in items if isinstance(i, Frame)]
    assert [f.jpeg for f in frames] == [a, c] and [f.index for f in frames] == [0, 1]
    assert [i.reason for i in items if isinstance(i, Broken)] == ["truncated", "truncated"]


class _MjpegServer:
    """A local HTTP multipart MJPEG server on 127.0.0.1: serves `frames` per connection, then drops it;
    `down` makes it refuse new connections (HTTP 503) for a while."""

    def __init__(self, frames: list[bytes], per_connection: int) -> None:
        self.frames, self.per_connection, self.connections, self.down = frames, per_connection, 0, False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                outer.connections += 1
                if outer.down:
                    self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                for i in range(outer.per_connection):
                    data = outer.frames[i % len(outer.frames)]
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                     + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")
                    self.wfile.flush()
                    time.sleep(0.005)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_http_mjpeg_stream_is_lost_and_comes_back():
    server = _MjpegServer(_jpegs(3), per_connection=5)
    try:
        items = [i for i in open_http_mjpeg(server.url) if isinstance(i, Frame)]
        assert len(items) == 5 and all(f.source_id == server.url for f in items)
        source = LiveSource(server.url, lambda: open_http_mjpeg(server.url), queue_size=100, max_reconnects=3,
                            backoff=0.05)
        seen = []
        for frame in source:
            seen.append(frame)
            if len(seen) == 5:
                server.down = True  # the camera goes away ...

                def back():
                    time.sleep(0.3)
                    server.down = False  # ... and comes back
                threading.Thread(target=back, daemon=True).start()
            if len(seen) >= 10:
                break
        source.close()
        assert len(seen) == 10
        assert source.stats.reconnects >= 1 and source.stats.gaps and source.stats.gaps[0]["seconds"] > 0.1
        assert any("503" in e or "stream ended" in e for e in source.stats.errors)
    finally:
        server.close()


def test_live_source_drops_the_oldest_frames_when_the_consumer_is_behind():
    server = _MjpegServer(_jpegs(2), per_connection=40)
    try:
        source = LiveSource(server.url, lambda: open_http_mjpeg(server.url), queue_size=2, max_reconnects=0)
        time.sleep(0.6)  # the reader fills the queue while nobody consumes
        got = list(source)
        source.close()
        assert len(got) <= 40 and source.stats.dropped >= 1 and source.stats.read == 40
        assert source.stats.read == len(got) + source.stats.dropped
    finally:
        server.close()


def test_a_live_source_that_cannot_be_opened_is_one_clear_error():
    with pytest.raises(InputError, match="cannot open the stream"):
        LiveSource("http://127.0.0.1:9/none", lambda: open_http_mjpeg("http://127.0.0.1:9/none", timeout=1))


class _FakeCapture:
    """What cv2.VideoCapture returns for a V4L2 camera in MJPEG mode with CONVERT_RGB off: 1-D JPEG buffers."""

    def __init__(self, jpegs):
        self.jpegs, self.released = list(jpegs), False

    def read(self):
        if not self.jpegs:
            return False, None
        return True, np.frombuffer(self.jpegs.pop(0), np.uint8).reshape(1, -1)

    def get(self, prop):
        return 0.0

    def release(self):
        self.released = True


def test_camera_raw_mjpeg_buffers_become_jpeg_frames_and_a_lost_camera_raises():
    from edge_guard.sources.capture import _frames

    data = _jpegs(2)
    cap = _FakeCapture(data)
    frames = _frames(cap, "/dev/video0", file=False)
    got = [next(frames), next(frames)]
    assert [f.jpeg for f in got] == data and got[0].image is None and got[0].source_id == "/dev/video0"
    with pytest.raises(OSError, match="stream lost"):
        next(frames)  # a live capture that stops delivering is lost (the live source then reconnects)
    assert cap.released


def test_status_line_only_on_a_terminal():
    from edge_guard.output import StatusLine

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Tty(), io.StringIO()
    StatusLine(stream=tty, every=0).update("12 frames  30.0 fps")
    StatusLine(stream=pipe, every=0).update("12 frames")
    assert tty.getvalue() == "\r12 frames  30.0 fps" and pipe.getvalue() == ""
