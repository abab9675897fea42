"""Round trips of many same-size 4:2:0 crops as one tall JPEG, bit-identical to one JPEG per crop.

libjpeg-turbo spends most of a 32x32 round trip setting up (headers, tables, buffers): one encode and one
decode of 1,024 crops stacked into a 32,768 x 32 image cost ~14 us per crop against ~40 us one by one.
Stacking is exact on the encoder side: the colour conversion is per pixel, 4:2:0 downsampling averages
2x2 pixels with a bias that depends on the column only, and the DCT and quantization work on 8x8
blocks, so every crop's blocks get the coefficients its own JPEG would (entropy coding is lossless).
It is not on the decoder side: libjpeg's "fancy" chroma upsampling looks one chroma row above and below,
and at a crop's top and bottom edge that row would come from the neighbouring crop, where a decode of the
crop alone repeats its own edge row. So the tall image is decoded to its Y, Cb, Cr planes (IDCT only) and
the last two steps are done here per crop: libjpeg's h2v2 fancy upsampling (jdsample.c: 3/4 and 1/4
weights, +8/+7 rounding) with the crop's own edges repeated, and its fixed-point YCbCr -> RGB (jdcolor.c,
16 fractional bits). `check()` compares the result with one-by-one round trips on a probe before the
tiled path is used in a process; a libjpeg-turbo build that differed would fall back to them.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

import numpy as np

from edge_guard.errors import CodecError

log = logging.getLogger("edge_guard")

MAX_ROWS = 65500  # JPEG's largest image side
_SCALEBITS, _HALF = 16, 1 << 15
_K_CR_R, _K_CB_B, _K_CB_G, _K_CR_G = (int(k * (1 << _SCALEBITS) + 0.5) for k in (1.40200, 1.77200, 0.34414, 0.71414))
_X = np.arange(256, dtype=np.int64) - 128
# jdcolor.c's tables: R = Y + Cr_r[Cr], B = Y + Cb_b[Cb], G = Y + ((Cb_g[Cb] + Cr_g[Cr]) >> 16); G's two terms are
# summed before the shift, so G's offset is one table over (Cb, Cr) pairs (65,536 int16: 128 KB, stays in cache)
_CR_R = ((_K_CR_R * _X + _HALF) >> _SCALEBITS).astype(np.int16)
_CB_B = ((_K_CB_B * _X + _HALF) >> _SCALEBITS).astype(np.int16)
_CBCR_G = (((-_K_CB_G * _X + _HALF)[:, None] + (-_K_CR_G * _X)[None, :]) >> _SCALEBITS).astype(np.int16).ravel()


def eligible(h: int, w: int, subsampling: str) -> bool:
    """Crops this path handles: 4:2:0 with sides that are whole MCUs (16 px), so no edge padding is coded."""
    return subsampling == "420" and h % 16 == 0 and w % 16 == 0 and h <= MAX_ROWS


def _upsample_h2v2(plane: np.ndarray) -> np.ndarray:
    """libjpeg's h2v2 fancy upsampling of (n, ch, cw) uint8 chroma to (n, 2ch, 2cw) uint8, edges repeated per crop."""
    p = plane.astype(np.int16)
    n, ch, cw = p.shape
    out = np.empty((n, 2 * ch, 2 * cw), np.int16)
    three = p * np.int16(3)
    s, t = np.empty_like(three), np.empty_like(three)
    for v in (0, 1):  # output row 2i takes chroma row i-1 as its neighbour, row 2i+1 takes i+1
        if v == 0:
            np.add(three[:, 1:], p[:, :-1], out=s[:, 1:])
            np.add(three[:, 0], p[:, 0], out=s[:, 0])
        else:
            np.add(three[:, :-1], p[:, 1:], out=s[:, :-1])
            np.add(three[:, -1], p[:, -1], out=s[:, -1])
        np.multiply(s, np.int16(3), out=t)  # s: column sums 3*this + neighbour, at most 1020
        even, odd = out[:, v::2, 0::2], out[:, v::2, 1::2]
        np.add(t[..., 1:], s[..., :-1], out=even[..., 1:])
        np.multiply(s[..., 0], np.int16(4), out=even[..., 0])
        np.add(t[..., :-1], s[..., 1:], out=odd[..., :-1])
        np.multiply(s[..., -1], np.int16(4), out=odd[..., -1])
        even += np.int16(8)
        odd += np.int16(7)
    out >>= 4
    return out.astype(np.uint8)


def _to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray, dst: np.ndarray) -> None:
    """jdcolor.c's ycc_rgb_convert (its tables, its clamping): y, cb, cr uint8 (n, h, w) into dst (n, h, w, 3)."""
    yi = y.astype(np.int16)
    pair = cb.astype(np.uint16)
    pair <<= 8
    pair |= cr
    for channel, offset in ((0, _CR_R.take(cr)), (1, _CBCR_G.take(pair)), (2, _CB_B.take(cb))):
        offset += yi
        np.clip(offset, 0, 255, out=offset)
        dst[..., channel] = offset


class Tiled:
    """The tall-image round trip over a libturbojpeg handle pair (edge_guard.codec_batch._Handles)."""

    def __init__(self, lib: Any) -> None:
        vp, i, ul = ctypes.c_void_p, ctypes.c_int, ctypes.c_ulong
        lib.tjDecompressToYUVPlanes.argtypes = [vp, vp, ul, ctypes.POINTER(vp), i, ctypes.POINTER(i), i, i]
        self._lib = lib
        self.ok: bool | None = None  # None: not checked yet in this process
        self._lock = threading.Lock()

    def run(self, handles: Any, src: np.ndarray, dst: np.ndarray, quality: int, flags: int) -> None:
        n, h, w, _ = src.shape
        per = max(1, MAX_ROWS // h)
        for a in range(0, n, per):
            self._run(handles, src[a:a + per], dst[a:a + per], quality, flags)

    def _run(self, hd: Any, src: np.ndarray, dst: np.ndarray, quality: int, flags: int) -> None:
        n, h, w, _ = src.shape
        rows = n * h
        buf = hd.buffer_for(rows, w, 2)
        pointer, size = ctypes.c_void_p(buf.ctypes.data), ctypes.c_ulong(buf.size)
        if self._lib.tjCompress2(hd.compress, src.ctypes.data, w, w * 3, rows, 0, ctypes.byref(pointer),
                                 ctypes.byref(size), 2, quality, flags):
            raise CodecError(f"libturbojpeg could not encode {n} stacked {w}x{h} crops: {hd.error()}")
        y = np.empty((n, h, w), np.uint8)
        cb = np.empty((n, h // 2, w // 2), np.uint8)
        cr = np.empty_like(cb)
        planes = (ctypes.c_void_p * 3)(y.ctypes.data, cb.ctypes.data, cr.ctypes.data)
        if self._lib.tjDecompressToYUVPlanes(hd.decompress, pointer, size.value, planes, w, None, rows,
                                             flags & ~1024):  # no TJFLAG_NOREALLOC on decode
            raise CodecError(f"libturbojpeg could not decode its own stacked crops: {hd.error()}")
        _to_rgb(y, _upsample_h2v2(cb), _upsample_h2v2(cr), dst)

    def check(self, one_by_one: Any, handles: Any, flags: int) -> bool:
        """Once per process: the tiled path against one-by-one round trips on a probe (smooth and noisy crops,
        three qualities). A mismatch logs a warning and keeps the one-by-one path."""
        with self._lock:
            if self.ok is None:
                rng = np.random.default_rng(0)
                smooth = rng.integers(0, 256, (6, 8, 8, 3)).repeat(4, 1).repeat(4, 2)
                probe = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
                self.ok = True
                for q in (20, 75, 95):
                    want, got = np.empty_like(probe), np.empty_like(probe)
                    one_by_one(probe, want, q)
                    self.run(handles, probe, got, q, flags)
                    if not np.array_equal(want, got):
                        log.warning("stacked JPEG round trips differ from one-by-one ones with this libjpeg-turbo; "
                                    "using one-by-one round trips")
                        self.ok = False
                        break
            return self.ok
