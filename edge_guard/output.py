"""Where results go: JSON lines (a file written atomically or appended to, or stdout), a live status line,
and an annotated video or image folder.

A JSON-lines file is checked before any work starts (its folder exists and is writable, it is not a
folder). Without --append it is written to a temporary file beside it and moved into place when the
run ends, also when it is interrupted, so an existing file is never wiped by a run that failed
before writing; with --append the lines are added to it as they come.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from edge_guard.errors import ConfigError, InputError, expected_got

VIDEO_FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "MJPG"}


def check_output_path(path: str | Path, *, what: str = "--output", append: bool = False) -> Path:
    """The path as a Path, when a file can be written there; ConfigError saying why not otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(expected_got(what, "a file path", f"{path} (a folder)", "Name a file inside it."))
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(expected_got(what, "a file in an existing folder", f"{path} (no folder {parent})",
                                       "Create the folder first."))
    target = path if append and path.exists() else parent
    if not os.access(target, os.W_OK):
        raise ConfigError(expected_got(what, "a writable location", f"{path} (permission denied)"))
    return path


class JsonLines:
    """JSON-lines records to a file (atomic, or appended) or to a text stream (stdout)."""

    def __init__(self, path: str | Path | None = None, *, append: bool = False, stream: IO[str] | None = None) -> None:
        self.path = None if path is None else check_output_path(path, append=append)
        self.count = 0
        self._tmp: Path | None = None
        if self.path is None:
            out = stream if stream is not None else sys.stdout
            if out is None or getattr(out, "closed", False):
                raise InputError(expected_got("results", "an open stdout, or --output FILE", "stdout closed",
                                              "Pass --output FILE, or keep stdout open."))
            self._fh: IO[str] = out
            return
        try:
            if append:
                self._fh = self.path.open("a", encoding="utf-8")
            else:
                fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent)
                self._tmp, self._fh = Path(tmp), os.fdopen(fd, "w", encoding="utf-8")
        except OSError as exc:  # a read-only file system, a full disk
            raise ConfigError(expected_got("--output", "a writable location",
                                           f"{self.path} ({exc.strerror or exc})")) from None

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, allow_nan=False)  # a NaN is a bug upstream: fail loudly, never write bad JSON
        try:
            self._fh.write(line + "\n")
            if self.path is None:
                self._fh.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:  # stdout closed, disk full
            where = "stdout" if self.path is None else str(self._tmp or self.path)
            raise InputError(f"cannot write results to {where} ({type(exc).__name__}: {exc}); "
                             f"{self.count} records were written before it.") from None
        self.count += 1

    def close(self) -> None:
        """Flush; move the temporary file into place. Safe to call twice."""
        if self.path is None:
            try:
                self._fh.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass
            return
        if not self._fh.closed:
            self._fh.close()
        if self._tmp is not None and self._tmp.exists():
            os.replace(self._tmp, self.path)
            self._tmp = None


class StatusLine:
    """One line on stderr, redrawn at most every `every` seconds, only when stderr is a terminal."""

    def __init__(self, *, every: float = 0.5, stream: IO[str] | None = None, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.every, self._last, self._width = every, 0.0, 0

    def update(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.every):
            return
        self._last = now
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()


class Annotator:
    """Draws each frame's regions (green; red when suspect) with labels into a video (.avi, .mp4, .mkv) or,
    for any other path, a folder of frame_NNNNNN.jpg files."""

    def __init__(self, path: str | Path, fps: float = 10.0) -> None:
        self.path = Path(path).expanduser()
        self.video = self.path.suffix.lower() in VIDEO_FOURCC
        if self.video:
            check_output_path(self.path, what="--annotate")
        else:
            if self.path.exists() and not self.path.is_dir():
                raise ConfigError(expected_got("--annotate", "a video file (.avi, .mp4, .mkv) or a folder",
                                               f"{self.path} (an existing file)"))
            self.path.mkdir(parents=True, exist_ok=True)
        self.fps, self.frames = fps, 0
        self._writer: cv2.VideoWriter | None = None
        self._size = (0, 0)  # (width, height) of the video

    def write(self, image: np.ndarray, regions: Any, scale: int = 1) -> None:
        bgr = np.ascontiguousarray(image[..., ::-1])
        for r in regions:
            x1, y1, x2, y2 = (int(c / scale) for c in r.box)
            color = (0, 0, 255) if r.suspect else (0, 200, 0)
            cv2.rectangle(bgr, (x1, y1), (x2 - 1, y2 - 1), color, 2)
            label = f"{r.class_name or 'no sign'} {r.confidence:.2f}" + (" SUSPECT" if r.suspect else "")
            cv2.putText(bgr, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
        if self.video:
            if self._writer is None:  # the first frame fixes the video's size
                fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC[self.path.suffix.lower()])
                self._size = (bgr.shape[1], bgr.shape[0])
                self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, self._size)
                if not self._writer.isOpened():
                    raise InputError(f"--annotate: OpenCV cannot write {self.path} (no encoder for "
                                     f"{self.path.suffix}); use .avi, or a folder for JPEG frames.")
            if (bgr.shape[1], bgr.shape[0]) != self._size:
                bgr = cv2.resize(bgr, self._size)
            self._writer.write(bgr)
        else:
            target = self.path / f"frame_{self.frames:06d}.jpg"
            if not cv2.imwrite(str(target), bgr):
                raise InputError(f"--annotate: cannot write {target} (disk full or no permission).")
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
