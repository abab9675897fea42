"""The defense codec: a JPEG round trip with pinned settings, batches, and SHIELD's SLQ.

Every setting that changes the output is pinned instead of left to a library default:
quality, chroma subsampling (default 4:2:0; PyTurboJPEG defaults to 4:2:2, simplejpeg to 4:4:4),
the accurate integer DCT (JDCT_ISLOW) for both encode and decode, and the backend. `codec_info()`
reports what ran, including the libjpeg-turbo version, so a bundle can record it.

Backends:
- ``turbojpeg``: PyTurboJPEG over the system libturbojpeg. PyTurboJPEG 1.x (libjpeg-turbo 2.x or
  3.x) and 2.x (libjpeg-turbo >= 3.0) share the ``encode``/``decode`` calls used here.
- ``opencv``: OpenCV's bundled libjpeg-turbo, used when libturbojpeg cannot be loaded.
The two are close but not bit-identical (different libjpeg-turbo builds and SIMD paths).

Images are uint8 RGB: one ``(H, W, 3)`` array or a batch ``(N, H, W, 3)``; outputs have the same shape.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_guard import codec_batch
from edge_guard.errors import CodecError, InputError, expected_got
from edge_guard.spec import DEFAULT_SLQ_QUALITIES as DEFAULT_SLQ_QUALITIES  # re-exported: SLQ's default set
from edge_guard.spec import CodecBackend, Subsampling

log = logging.getLogger("edge_guard")

BACKENDS = CodecBackend.values()
SUBSAMPLINGS = Subsampling.values()
SLQ_BLOCK = 8  # pixels: SHIELD picks one compressed version per 8x8 block (one DCT block)


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def check_quality(quality: object, what: str = "quality") -> int:
    """Return `quality` as an int in 1..100, or raise InputError."""
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)):
        raise InputError(expected_got(what, "an integer from 1 to 100", repr(quality)))
    if not 1 <= int(quality) <= 100:
        raise InputError(expected_got(what, "an integer from 1 to 100", int(quality), "JPEG quality is 1..100."))
    return int(quality)


def check_subsampling(subsampling: str) -> str:
    """`subsampling` ("420", "422", "444" or a Subsampling) as its plain string, or raise InputError."""
    if subsampling not in SUBSAMPLINGS:
        raise InputError(expected_got("subsampling", f"one of {', '.join(SUBSAMPLINGS)}", repr(subsampling)))
    return str(subsampling)


def as_batch(images: np.ndarray) -> tuple[np.ndarray, bool]:
    """Check an image or batch and return it as a C-contiguous (N, H, W, 3) uint8 batch.

    Returns (batch, was_single). Non-contiguous arrays (slices, views) are copied to contiguous
    memory; anything else that is not uint8 RGB raises InputError. Grayscale is rejected rather
    than guessed at: convert with ``np.repeat(gray[..., None], 3, axis=-1)``.
    """
    if not isinstance(images, np.ndarray):
        raise InputError(expected_got("images", "a numpy.ndarray", type(images).__name__))
    if images.dtype != np.uint8:
        raise InputError(
            expected_got(
                "images dtype", "uint8 (0..255)", images.dtype,
                "Convert floats in [0,1] with (x * 255).round().astype(np.uint8).",
            )
        )
    if images.ndim not in (3, 4):
        raise InputError(expected_got("images shape", "(H, W, 3) or (N, H, W, 3)", images.shape))
    if images.shape[-1] != 3:
        raise InputError(
            expected_got(
                "images channels", "3 (RGB, last axis)", images.shape[-1],
                "Grayscale: np.repeat(x[..., None], 3, -1); RGBA: x[..., :3]; CHW: x.transpose(1, 2, 0).",
            )
        )
    if images.size == 0:
        raise InputError(expected_got("images", "a non-empty array", f"shape {images.shape}"))
    single = images.ndim == 3
    batch = images[None] if single else images
    return np.ascontiguousarray(batch), single


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


class _Codec(Protocol):
    name: str
    run_batch: Any  # (src, dst, quality, subsampling) -> None: round-trips a contiguous chunk (codec_batch)

    def encode(self, image: np.ndarray, quality: int, subsampling: str) -> bytes: ...

    def decode(self, data: bytes) -> np.ndarray: ...

    def version(self) -> str: ...


class _TurboCodec:
    """PyTurboJPEG backend (1.x and 2.x share encode/decode with these keyword arguments)."""

    name = "turbojpeg"

    def __init__(self) -> None:
        import turbojpeg  # raises ImportError when the Python package is missing

        self._tj = turbojpeg
        # RuntimeError/OSError when libturbojpeg is missing, or PyTurboJPEG 2.x meets libjpeg-turbo < 3.
        self._handle = turbojpeg.TurboJPEG()
        self._samp = {"420": turbojpeg.TJSAMP_420, "422": turbojpeg.TJSAMP_422, "444": turbojpeg.TJSAMP_444}
        self._flags = turbojpeg.TJFLAG_ACCURATEDCT
        try:  # the same library through ctypes, with persistent handles: batches (edge_guard.codec_batch)
            self.run_batch = codec_batch.TurboBatch().run
        except (OSError, AttributeError) as exc:
            log.info("batched libturbojpeg calls unavailable (%s); round trips go through PyTurboJPEG", exc)
            self.run_batch = codec_batch.generic_run(self)

    def encode(self, image: np.ndarray, quality: int, subsampling: str) -> bytes:
        return self._handle.encode(
            image, quality=quality, pixel_format=self._tj.TJPF_RGB,
            jpeg_subsample=self._samp[subsampling], flags=self._flags,
        )

    def decode(self, data: bytes) -> np.ndarray:
        return self._handle.decode(data, pixel_format=self._tj.TJPF_RGB, flags=self._flags)

    def version(self) -> str:
        return _libjpeg_turbo_version_of_loaded("libturbojpeg")


class _OpenCVCodec:
    """OpenCV backend (its bundled libjpeg-turbo; JDCT_ISLOW and fancy upsampling are its defaults)."""

    name = "opencv"

    def __init__(self) -> None:
        import cv2

        self._cv2 = cv2
        self.run_batch = codec_batch.generic_run(self)
        self._samp = {
            "420": getattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR_420", None),
            "422": getattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR_422", None),
            "444": getattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR_444", None),
        }

    def encode(self, image: np.ndarray, quality: int, subsampling: str) -> bytes:
        cv2 = self._cv2
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
        factor = self._samp[subsampling]
        if factor is None:  # OpenCV < 4.5.5 cannot choose; its fixed choice is 4:2:0
            if subsampling != "420":
                raise CodecError(
                    expected_got("OpenCV JPEG subsampling", "support for IMWRITE_JPEG_SAMPLING_FACTOR",
                                 f"OpenCV {cv2.__version__}", "Upgrade opencv-python-headless or install libturbojpeg.")
                )
        else:
            params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor]
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), params)
        if not ok:
            raise CodecError(f"OpenCV failed to encode a {image.shape} image as JPEG.")
        return buf.tobytes()

    def decode(self, data: bytes) -> np.ndarray:
        bgr = self._cv2.imdecode(np.frombuffer(data, np.uint8), self._cv2.IMREAD_COLOR)
        if bgr is None:
            raise CodecError(f"OpenCV could not decode {len(data)} bytes of JPEG data (corrupt or truncated).")
        return np.ascontiguousarray(bgr[..., ::-1])

    def version(self) -> str:
        match = re.search(r"JPEG:.*?libjpeg-turbo.*?\(ver ([^)]+)\)", self._cv2.getBuildInformation())
        return match.group(1) if match else "unknown"


def _libjpeg_turbo_version_of_loaded(stem: str) -> str:
    """Read the libjpeg-turbo version string out of the shared library this process loaded."""
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split()[-1] for line in maps if stem in line and "/" in line]
    except OSError:  # not Linux
        import ctypes.util

        found = ctypes.util.find_library(stem.removeprefix("lib"))
        paths = [found] if found else []
    for path in dict.fromkeys(paths):
        try:
            match = re.search(rb"libjpeg-turbo version ([0-9][0-9.]*)", Path(path).read_bytes())
        except OSError:
            continue
        if match:
            return match.group(1).decode()
    return "unknown"


_codecs: dict[str, _Codec] = {}
_codecs_lock = threading.Lock()


def _codec(name: str) -> _Codec:
    with _codecs_lock:
        if name not in _codecs:
            try:
                _codecs[name] = _TurboCodec() if name == "turbojpeg" else _OpenCVCodec()
            except (ImportError, OSError, RuntimeError) as exc:
                raise CodecError(
                    f"JPEG backend {name!r} is unavailable ({type(exc).__name__}: {exc}). "
                    + ("Install libturbojpeg (apt-get install libturbojpeg0) or use backend='opencv'."
                       if name == "turbojpeg" else "Install opencv-python-headless.")
                ) from exc
        return _codecs[name]


def turbo_handle() -> Any:
    """The process's PyTurboJPEG handle, for frame decodes at a DCT scale (CodecError when libturbojpeg
    is unavailable)."""
    return _codec("turbojpeg")._handle  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=1)
def _auto_backend() -> str:
    try:
        _codec("turbojpeg")
        return "turbojpeg"
    except CodecError as exc:
        log.warning("libturbojpeg not usable, using the OpenCV JPEG backend instead: %s", exc)
        return "opencv"


def resolve_backend(backend: str = "auto") -> str:
    """Name of the backend `backend` selects: 'auto' picks turbojpeg when libturbojpeg loads."""
    if backend == "auto":
        return _auto_backend()
    if backend not in BACKENDS:
        raise InputError(expected_got("JPEG backend", "'auto', 'turbojpeg' or 'opencv'", repr(backend)))
    _codec(backend)  # raises CodecError when unavailable
    return backend


def available_backends() -> list[str]:
    """Backends that load on this machine, in preference order."""
    names = []
    for name in BACKENDS:
        try:
            _codec(name)
            names.append(name)
        except CodecError:
            pass
    return names


def codec_info(backend: str = "auto", subsampling: str = "420") -> dict[str, Any]:
    """What a round trip with these settings runs: backend, libjpeg-turbo version, pinned settings."""
    name = resolve_backend(backend)
    return {
        "backend": name,
        "version": _codec(name).version(),
        "subsampling": check_subsampling(subsampling),
        "dct": "islow",
    }


# ---------------------------------------------------------------------------------------------
# Public operations
# ---------------------------------------------------------------------------------------------


def encode(image: np.ndarray, quality: int, *, subsampling: str = "420", backend: str = "auto") -> bytes:
    """Encode one (H, W, 3) uint8 RGB image to JPEG bytes with pinned settings."""
    batch, single = as_batch(image)
    if not single:
        raise InputError(expected_got("image shape", "(H, W, 3)", image.shape, "Encode batch items one by one."))
    return _codec(resolve_backend(backend)).encode(batch[0], check_quality(quality), check_subsampling(subsampling))


def decode(data: bytes, *, backend: str = "auto") -> np.ndarray:
    """Decode JPEG bytes to an (H, W, 3) uint8 RGB array. Corrupt data raises CodecError."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 4:
        raise InputError(expected_got("JPEG data", "non-empty bytes", type(data).__name__))
    if bytes(data[:2]) != b"\xff\xd8":
        raise CodecError(expected_got("JPEG data", "a stream starting with the SOI marker FFD8", bytes(data[:2]).hex()))
    codec = _codec(resolve_backend(backend))
    try:
        image = codec.decode(bytes(data))
    except CodecError:
        raise
    except Exception as exc:  # libjpeg reports corrupt data in backend-specific ways
        raise CodecError(f"could not decode {len(data)} bytes of JPEG data: {exc}") from exc
    if image is None or image.ndim != 3 or image.shape[-1] != 3:
        raise CodecError(f"decoding gave {None if image is None else image.shape}, expected (H, W, 3).")
    return image


def roundtrip(
    images: np.ndarray, quality: int, *, subsampling: str = "420", backend: str = "auto"
) -> np.ndarray:
    """JPEG-compress and decompress images at `quality` (the defense's core step).

    Args:
        images: (H, W, 3) or (N, H, W, 3) uint8 RGB, values 0..255. Any size; non-contiguous is fine.
        quality: 1..100 (libjpeg scale; lower removes more high-frequency signal).
        subsampling: chroma subsampling "420" (default), "422" or "444".
        backend: "auto" (turbojpeg if libturbojpeg loads, else opencv), "turbojpeg" or "opencv".

    Returns:
        uint8 RGB array of the same shape. Deterministic for a given backend and library version.
    """
    batch, single = as_batch(images)
    out = roundtrips(batch, [check_quality(quality)], subsampling=subsampling, backend=backend)[0]
    return out[0] if single else out


def roundtrips(
    images: np.ndarray, qualities: Sequence[int], *, subsampling: str = "420", backend: str = "auto",
    threads: int | None = None,
) -> list[np.ndarray]:
    """`roundtrip` at several qualities at once: one array per quality, in the order given, each image
    round-tripped once per distinct quality. Large batches run on a thread pool (`edge_guard.codec_batch`;
    threads=None: its default, 1: serial); the output does not depend on the thread count."""
    batch, single = as_batch(images)
    wanted = _check_qualities(qualities)
    distinct = list(dict.fromkeys(wanted))
    codec = _codec(resolve_backend(backend))
    done = dict(zip(distinct, codec_batch.roundtrip_batch(batch, distinct, check_subsampling(subsampling),
                                                          codec.run_batch, threads=threads)))
    return [done[q][0] if single else done[q] for q in wanted]


def _check_qualities(qualities: Sequence[int]) -> list[int]:
    if isinstance(qualities, (str, bytes)) or not isinstance(qualities, Sequence) or len(qualities) == 0:
        raise InputError(expected_got("qualities", "a non-empty sequence of integers 1..100", repr(qualities)))
    return [check_quality(q, "each of qualities") for q in qualities]


def slq(
    images: np.ndarray,
    qualities: Sequence[int] = DEFAULT_SLQ_QUALITIES,
    *,
    rng: np.random.Generator | int | None = None,
    subsampling: str = "420",
    backend: str = "auto",
) -> np.ndarray:
    """SHIELD's Stochastic Local Quantization (Das et al., KDD 2018).

    Compresses each image at every quality in `qualities`, then for every 8x8 pixel block picks
    one of the compressed versions uniformly at random, the same pick for all 3 channels. Edge
    blocks of images whose sides are not multiples of 8 are partial blocks and are picked the same way.

    Args:
        images: (H, W, 3) or (N, H, W, 3) uint8 RGB.
        qualities: JPEG qualities to mix, each 1..100.
        rng: numpy Generator, an int seed, or None (fresh entropy). Pass a Generator to reproduce.
        subsampling, backend: as in `roundtrip`.

    Returns:
        uint8 RGB array of the same shape as `images`.
    """
    batch, single = as_batch(images)
    out = slq_mix(roundtrips(batch, qualities, subsampling=subsampling, backend=backend), rng)
    return out[0] if single else out


def slq_mix(versions: Sequence[np.ndarray], rng: np.random.Generator | int | None = None) -> np.ndarray:
    """SLQ's block pick over already-compressed versions of one batch, each (N, H, W, 3) uint8, in the
    order of the quality set (so versions computed once can be shared with JPEG members)."""
    stacked = np.stack(versions)  # (Q, N, H, W, 3)
    choice = slq_block_choice(stacked.shape[1:4], len(versions), rng)  # (N, H, W) index into Q
    return np.take_along_axis(stacked, choice[None, ..., None], axis=0)[0]


def slq_block_choice(
    shape: tuple[int, int, int], n_versions: int, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Per-pixel version index (N, H, W) int64, constant on each 8x8 block, uniform over `n_versions`."""
    n, h, w = shape
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    blocks = rng.integers(0, n_versions, size=(n, -(-h // SLQ_BLOCK), -(-w // SLQ_BLOCK)))
    return blocks.repeat(SLQ_BLOCK, axis=1).repeat(SLQ_BLOCK, axis=2)[:, :h, :w]
