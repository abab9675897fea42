"""Image files, folders and globs as a frame source: every readable image in order.

    for frame in open_images(["sign.png", "photos/", "clips/*.jpg"]):   # frame.image: HxWx3 uint8 RGB
        ...

A file that cannot be decoded (corrupt, truncated header, not an image) is skipped with one
warning line on stderr and counted as "unreadable"; it never ends the run. A path that does not
exist (or a glob that matches nothing) raises InputError before anything is read.
"""

from __future__ import annotations

import glob
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from edge_guard.errors import InputError, expected_got
from edge_guard.sources.frame import MAX_PIXELS, Frame, FrameError, check_pixels, image_size
from edge_guard.sources.mjpeg import Broken

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp")
GLOB_CHARS = "*?["
SkipHandler = Callable[[str, str], None]  # (frame_id, reason)


def warn_skip(frame_id: str, reason: str) -> None:
    """Default skip handler: one warning line on stderr."""
    print(f"warning: skipped {frame_id}: {reason}", file=sys.stderr)


def list_image_files(paths: Sequence[str | Path], *, recursive: bool = False) -> list[Path]:
    """Expand files and folders into image files, in the order given; folders sorted by path.

    A file named explicitly is kept whatever its suffix (it is skipped later if it does not decode);
    inside a folder only IMAGE_SUFFIXES count (any case). recursive: also descend into subfolders.
    Raises InputError for a path that does not exist, or when nothing is found.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if any(c in str(raw) for c in GLOB_CHARS) and not path.exists():
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=recursive) if Path(p).is_file())
            if not matches:
                raise InputError(expected_got("image glob", "a pattern matching image files", f"{str(raw)!r} "
                                              "(matches nothing)"))
            files += matches
        elif path.is_file():
            files.append(path)
        elif path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            files += sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            raise InputError(expected_got("image path", "an existing image file or folder",
                                          f"{str(raw)!r} (not found)"))
    if not files:
        raise InputError(expected_got("image paths", f"at least one image file ({', '.join(IMAGE_SUFFIXES)})",
                                      "none", "Pass image files, or use --recursive for nested folders."))
    return files


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray | None:
    """Decode one image file to HxWx3 uint8 RGB (gray repeated, alpha dropped); None if it does not decode.
    FrameError("too_large"/"no_header") when its header promises more than max_pixels or has no size."""
    try:
        data = Path(path).read_bytes()  # bytes, then cv2.imdecode: non-ASCII paths work on every platform
    except OSError:
        return None
    return decode_image(data, max_pixels, str(path))


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, what: str = "image") -> np.ndarray | None:
    """Image file bytes -> HxWx3 uint8 RGB, or None if they do not decode; the header is checked first."""
    if not data:
        return None
    check_pixels(image_size(data), max_pixels, what)
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # OpenCV's own limits (CV_IO_MAX_IMAGE_PIXELS), unsupported variants
        return None
    if bgr is None or bgr.ndim != 3 or bgr.shape[0] == 0 or bgr.shape[1] == 0:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def open_images(paths: Sequence[str | Path], *, recursive: bool = False, on_skip: SkipHandler | None = warn_skip,
                max_pixels: int = MAX_PIXELS) -> Iterator[Frame | Broken]:
    """Frames (source_id: the file path, image: HxWx3 uint8 RGB) of each readable image; a Broken
    ("unreadable") for each file that does not decode, after on_skip(path, reason) (default: a warning line).
    Paths are checked now (InputError); files are decoded lazily."""
    files = list_image_files(paths, recursive=recursive)

    def generate() -> Iterator[Frame | Broken]:
        for index, path in enumerate(files):
            try:
                data = path.read_bytes()
            except OSError:
                data = b""
            if data[:3] == b"\xff\xd8\xff":  # JPEG: decoded by the frame loop (DCT scale, libjpeg warnings counted)
                yield Frame(index, str(path), time.time(), jpeg=data)
                continue
            try:
                image = decode_image(data, max_pixels, str(path))
            except FrameError as exc:
                if on_skip is not None:
                    on_skip(str(path), str(exc))
                yield Broken(exc.reason, len(data))
                continue
            if image is None:
                if on_skip is not None:
                    on_skip(str(path), "not a readable image (corrupt, truncated or unsupported)")
                yield Broken("unreadable", 0)
                continue
            yield Frame(index, str(path), time.time(), image=image)

    return generate()
