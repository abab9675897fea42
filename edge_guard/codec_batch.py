"""Batched JPEG round trips: every quality of a batch at once, spread over a small thread pool.

    versions = roundtrip_batch(batch, [20, 40, 60, 80], "420", codec)   # one (N, H, W, 3) array per quality

Where the time goes for 32x32 crops: libjpeg-turbo itself needs ~25 us per encode + decode, while
PyTurboJPEG creates and destroys a libjpeg handle on every call and copies the JPEG out of a
malloc'd buffer (~35 us more). The ``turbojpeg`` backend here calls libturbojpeg through ctypes with
one persistent compress/decompress handle pair per thread, encodes into a preallocated buffer
(TJFLAG_NOREALLOC) and decodes straight into the output array: the same library calls with the same
flags, so the bytes out are the ones PyTurboJPEG gives (tests/test_codec_batch.py compares them).

ctypes and OpenCV release the GIL inside the codec, so chunks of the batch run in parallel on a
thread pool of ``codec_threads()`` workers (the CPUs this process may use, at most 8; the
``EDGEGUARD_CODEC_THREADS`` variable overrides, 1 = serial). Small batches (a frame's few crops) run
on the calling thread: a hand-off to the pool costs more than they do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from edge_guard.errors import CodecError

MIN_CHUNK_PIXELS = 48 * 32 * 32  # pixels per pool task: ~48 crops of 32x32, ~1.5 ms of codec work
MAX_THREADS = 8

# libturbojpeg's constants (turbojpeg.h, stable since libjpeg-turbo 1.2)
_TJPF_RGB = 0
_TJSAMP = {"444": 0, "422": 1, "420": 2}
_TJFLAG_NOREALLOC = 1024  # encode into the caller's buffer
_TJFLAG_ACCURATEDCT = 4096  # JDCT_ISLOW for encode and decode, as edge_guard.jpeg pins it


def codec_threads() -> int:
    """Worker threads for batched round trips: EDGEGUARD_CODEC_THREADS, else the CPUs this process may use (<= 8)."""
    env = os.environ.get("EDGEGUARD_CODEC_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return min(int(env), 64)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_THREADS))


# ----------------------------------------------------------------------------- libturbojpeg through ctypes


def find_libturbojpeg() -> str:
    """Path of libturbojpeg as PyTurboJPEG looks for it (ctypes' search, then its default paths)."""
    found = ctypes.util.find_library("turbojpeg")
    if found:
        return found
    import turbojpeg

    for path in getattr(turbojpeg, "DEFAULT_LIB_PATHS", {}).get(platform.system(), []):
        if os.path.exists(path):
            return path
    raise OSError("libturbojpeg not found")


class _Lib:
    """libturbojpeg's functions with their C signatures."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        vp, i, ul = ctypes.c_void_p, ctypes.c_int, ctypes.c_ulong
        lib.tjInitCompress.restype = vp
        lib.tjInitDecompress.restype = vp
        lib.tjDestroy.argtypes = [vp]
        lib.tjBufSize.argtypes, lib.tjBufSize.restype = [i, i, i], ul
        lib.tjCompress2.argtypes = [vp, vp, i, i, i, i, ctypes.POINTER(vp), ctypes.POINTER(ul), i, i, i]
        lib.tjDecompress2.argtypes = [vp, vp, ul, vp, i, i, i, i, i]
        lib.tjGetErrorStr.restype = ctypes.c_char_p
        self.lib = lib


class _Handles:
    """One thread's compress and decompress handles and its JPEG buffer (freed with the thread)."""

    def __init__(self, lib: _Lib) -> None:
        self._lib = lib.lib
        self.compress = self._lib.tjInitCompress()
        self.decompress = self._lib.tjInitDecompress()
        if not self.compress or not self.decompress:
            raise CodecError(f"libturbojpeg could not create a handle: {self.error()}")
        self.buffer = np.empty(0, np.uint8)

    def buffer_for(self, h: int, w: int, samp: int) -> np.ndarray:
        need = int(self._lib.tjBufSize(w, h, samp))  # the worst case for any image of this size
        if self.buffer.size < need:
            self.buffer = np.empty(need, np.uint8)
        return self.buffer

    def error(self) -> str:
        return (self._lib.tjGetErrorStr() or b"unknown error").decode(errors="replace")

    def __del__(self) -> None:
        for handle in (getattr(self, "compress", None), getattr(self, "decompress", None)):
            if handle:
                self._lib.tjDestroy(handle)


class TurboBatch:
    """Round trips of contiguous uint8 RGB batches through libturbojpeg (see the module docstring)."""

    def __init__(self, path: str | None = None) -> None:
        self._lib = _Lib(path or find_libturbojpeg())
        self._local = threading.local()

    def _handles(self) -> _Handles:
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = _Handles(self._lib)
        return handles

    def run(self, src: np.ndarray, dst: np.ndarray, quality: int, subsampling: str) -> None:
        """Round-trip every image of src (N, H, W, 3) into dst (same shape), both C-contiguous uint8."""
        n, h, w, _ = src.shape
        hd = self._handles()
        samp = _TJSAMP[subsampling]
        buf = hd.buffer_for(h, w, samp)
        cap, pointer, size = buf.size, ctypes.c_void_p(buf.ctypes.data), ctypes.c_ulong()
        compress, decompress = self._lib.lib.tjCompress2, self._lib.lib.tjDecompress2
        step, src0, dst0 = h * w * 3, src.ctypes.data, dst.ctypes.data
        flags = _TJFLAG_ACCURATEDCT | _TJFLAG_NOREALLOC
        pointer_ref, size_ref = ctypes.byref(pointer), ctypes.byref(size)  # made once: ~1 us per image less
        for i in range(n):
            size.value = cap
            if compress(hd.compress, src0 + i * step, w, w * 3, h, _TJPF_RGB, pointer_ref, size_ref, samp, quality,
                        flags):
                raise CodecError(f"libturbojpeg could not encode a {w}x{h} image: {hd.error()}")
            if decompress(hd.decompress, pointer, size.value, dst0 + i * step, w, 0, h, _TJPF_RGB,
                          _TJFLAG_ACCURATEDCT):
                raise CodecError(f"libturbojpeg could not decode its own {size.value}-byte JPEG: {hd.error()}")


def generic_run(codec: Any) -> Callable[[np.ndarray, np.ndarray, int, str], None]:
    """A chunk runner over any codec with encode(image, quality, subsampling) and decode(bytes)."""

    def run(src: np.ndarray, dst: np.ndarray, quality: int, subsampling: str) -> None:
        for i in range(src.shape[0]):
            dst[i] = codec.decode(codec.encode(src[i], quality, subsampling))

    return run


# ----------------------------------------------------------------------------- the pool


_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _reset_pool() -> None:  # a forked child has none of the parent's threads
    global _pool, _pool_size
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool)


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(threads, thread_name_prefix="edgeguard-jpeg"), threads
        return _pool


def roundtrip_batch(batch: np.ndarray, qualities: Sequence[int], subsampling: str,
                    run: Callable[[np.ndarray, np.ndarray, int, str], None], *,
                    threads: int | None = None) -> list[np.ndarray]:
    """One round-tripped copy of batch (N, H, W, 3) uint8 C-contiguous per quality, in the order given.

    run(src, dst, quality, subsampling) round-trips a chunk; every (quality, image) pair is computed once.
    threads: workers (None: codec_threads()); batches under two chunks' worth run on the calling thread.
    """
    n, h, w, _ = batch.shape
    outs = [np.empty_like(batch) for _ in qualities]
    workers = codec_threads() if threads is None else max(1, int(threads))
    per_chunk = max(1, MIN_CHUNK_PIXELS // (h * w))
    total = n * len(qualities)
    if workers == 1 or total < 2 * per_chunk:
        for out, q in zip(outs, qualities):
            run(batch, out, q, subsampling)
        return outs
    # Even chunks: about `workers` tasks per quality set, none smaller than per_chunk images.
    chunk = min(n, max(per_chunk, -(-total // workers) // len(qualities)))
    tasks = [(slice(a, min(a + chunk, n)), out, q) for out, q in zip(outs, qualities) for a in range(0, n, chunk)]
    pool = _executor(workers)
    futures = [pool.submit(run, batch[s], out[s], q, subsampling) for s, out, q in tasks[1:]]
    s, out, q = tasks[0]
    run(batch[s], out[s], q, subsampling)  # the calling thread takes a share too
    for future in futures:
        future.result()  # re-raises a chunk's CodecError here
    return outs
