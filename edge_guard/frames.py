"""Frame sources and regions of interest. For now: image files and folders of them.

    for frame_id, image in iter_images(["sign.png", "photos/"]):   # image: HxWx3 uint8 RGB
        ...
    box = parse_roi("10,20,74,84")                                 # (x1, y1, x2, y2) pixels

A file that cannot be decoded (corrupt, truncated header, not an image) is skipped with one
warning line on stderr and reported to `on_skip`; it never ends the run. A path that does not
exist raises InputError before anything is read.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from edge_guard.errors import ConfigError, InputError, expected_got

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp")
Box = tuple[int, int, int, int]
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
        if path.is_file():
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


def read_image(path: str | Path) -> np.ndarray | None:
    """Decode one image file to HxWx3 uint8 RGB (gray repeated, alpha dropped); None if it does not decode.

    np.fromfile + cv2.imdecode rather than cv2.imread: works for non-ASCII paths on every platform.
    """
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if buf.size == 0:
        return None
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.shape[0] == 0 or bgr.shape[1] == 0:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def iter_images(paths: Sequence[str | Path], *, recursive: bool = False,
                on_skip: SkipHandler | None = warn_skip) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (frame_id, image) for each readable image: frame_id is the file path as a string,
    image is HxWx3 uint8 RGB. Paths are checked now (InputError); files are decoded lazily.
    on_skip(frame_id, reason) is called for each file that does not decode (default: warn on stderr).
    """
    files = list_image_files(paths, recursive=recursive)

    def generate() -> Iterator[tuple[str, np.ndarray]]:
        for path in files:
            image = read_image(path)
            if image is None:
                if on_skip is not None:
                    on_skip(str(path), "not a readable image (corrupt, truncated or unsupported)")
                continue
            yield str(path), image

    return generate()


def parse_roi(text: str) -> Box:
    """Parse 'x1,y1,x2,y2' (pixels, x2/y2 exclusive) into a box; ConfigError if malformed or empty.

    Whether the box fits inside an image is checked per image by Guard.classify.
    """
    parts = [p.strip() for p in text.split(",")]
    try:
        x1, y1, x2, y2 = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(expected_got("--roi", "4 comma-separated integers x1,y1,x2,y2", repr(text))) from None
    if min(x1, y1) < 0 or x2 <= x1 or y2 <= y1:
        raise ConfigError(expected_got("--roi", "0 <= x1 < x2 and 0 <= y1 < y2 (x2, y2 exclusive)", repr(text)))
    return x1, y1, x2, y2
