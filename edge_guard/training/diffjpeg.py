"""Differentiable JPEG: libjpeg-turbo's lossy round trip as torch ops, for attacks and in-graph export.

The forward pass reproduces what `edge_guard.jpeg.roundtrip` (libjpeg-turbo, baseline, 4:2:0 by
default, accurate DCT, fancy upsampling) does to an image, step by step:

  8-bit input -> RGB->YCbCr (libjpeg's fixed-point JFIF constants) -> chroma downsampling
  (libjpeg's 2x2 / 2x1 box average with alternating rounding bias) -> 8x8 DCT-II (exact, float)
  -> quantization by the quality-scaled libjpeg tables -> dequantization -> inverse DCT
  -> range limit to 0..255 -> "fancy" (triangular) chroma upsampling -> YCbCr->RGB -> 8-bit output.

Every rounding step (`round`, `floor`) is exact in the forward pass. Gradients pass straight
through (identity, "ste") or, for the quantization step only, through Shin & Song's cubic
approximation d/dx[round(x) + (x - round(x))^3] = 3 (x - round(x))^2 ("cubic"). Pixel-level
roundings always use the identity gradient: 8-bit inputs sit exactly on integers, where the cubic
derivative is 0 and would block every gradient.

The only difference left to libjpeg is its integer (islow) DCT/IDCT versus the exact float DCT
here, which moves a few quantized coefficients near rounding ties; the mean absolute difference
to the real codec stays well below one grey level (see tests/training/test_diffjpeg.py).

Images: float32 NCHW RGB in [0, 1]; any H, W (padded internally like libjpeg, cropped back).
The forward pass uses only ONNX-exportable ops (matmul, reshape, pad, floor, round, clip).
Reference: Shin & Song, "JPEG-resistant Adversarial Images", NeurIPS MLSec workshop 2017.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edge_guard.errors import InputError, expected_got
from edge_guard.jpeg import SLQ_BLOCK as SLQ_BLOCK  # re-exported: the block SLQ picks versions by
from edge_guard.spec import DEFAULT_SLQ_QUALITIES, Subsampling

SUBSAMPLINGS = Subsampling.values()
ROUNDINGS = ("ste", "cubic")
# (horizontal, vertical) chroma subsampling factors
_FACTORS = {"444": (1, 1), "422": (2, 1), "420": (2, 2)}

# libjpeg's standard tables (jcparam.c, ITU-T T.81 Annex K), natural row-major order:
# row = vertical frequency, column = horizontal frequency.
STD_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
STD_CHROMINANCE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Settings and tables
# ---------------------------------------------------------------------------------------------


def check_settings(quality: object, subsampling: str, rounding: str) -> int:
    """Validate the DiffJPEG settings; return quality as int. Raises InputError."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise InputError(expected_got("quality", "an integer from 1 to 100", repr(quality)))
    if subsampling not in SUBSAMPLINGS:
        raise InputError(expected_got("subsampling", f"one of {', '.join(SUBSAMPLINGS)}", repr(subsampling)))
    if rounding not in ROUNDINGS:
        raise InputError(expected_got("rounding", "'ste' or 'cubic'", repr(rounding)))
    return quality


def quality_scaling(quality: int) -> int:
    """libjpeg's jpeg_quality_scaling: percentage applied to the standard tables."""
    return 5000 // quality if quality < 50 else 200 - 2 * quality


def quant_table(quality: int, chroma: bool = False) -> Tensor:
    """(8, 8) float32 quantization table libjpeg writes at `quality` (baseline: entries 1..255)."""
    scale = quality_scaling(check_settings(quality, "420", "ste"))
    base = STD_CHROMINANCE if chroma else STD_LUMINANCE
    table = [min(max((t * scale + 50) // 100, 1), 255) for t in base]
    return torch.tensor(table, dtype=torch.float32).reshape(8, 8)


def dct_matrix() -> Tensor:
    """(8, 8) orthonormal DCT-II matrix D: coefficients = D @ block @ D.T (JPEG's FDCT scaling)."""
    d = torch.empty(8, 8, dtype=torch.float64)
    for k in range(8):
        ck = math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8)
        for n in range(8):
            d[k, n] = ck * math.cos((2 * n + 1) * k * math.pi / 16)
    return d.float()


# ---------------------------------------------------------------------------------------------
# Rounding with chosen gradients (exact forward; `x - x.detach()` is 0 but carries the gradient)
# ---------------------------------------------------------------------------------------------


def round_half_away(x: Tensor) -> Tensor:
    """Round to nearest, ties away from zero: libjpeg's quantizer rounding (torch.round ties to even)."""
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def ste_round(x: Tensor) -> Tensor:
    """round(x) (ties away from zero) forward, identity gradient."""
    return round_half_away(x).detach() + (x - x.detach())


def ste_floor(x: Tensor) -> Tensor:
    """floor(x) forward, identity gradient."""
    return torch.floor(x).detach() + (x - x.detach())


def cubic_round(x: Tensor) -> Tensor:
    """round(x) (ties away from zero) forward, gradient 3 (x - round(x))^2 (Shin & Song 2017)."""
    r = round_half_away(x).detach()
    c = (x - r) ** 3
    return r + (c - c.detach())


# ---------------------------------------------------------------------------------------------
# Steps (all on the 0..255 scale, float32)
# ---------------------------------------------------------------------------------------------


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """(N, 3, H, W) 8-bit RGB -> 8-bit YCbCr, libjpeg's jccolor.c fixed point (16 fraction bits).

    Products stay below 2**24, so float32 arithmetic is exact and matches libjpeg bit for bit.
    """
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    y = ste_floor((19595 * r + 38470 * g + 7471 * b + 32768) / 65536)
    cb = ste_floor((-11059 * r - 21709 * g + 32768 * b + (128 * 65536 + 32767)) / 65536)
    cr = ste_floor((32768 * r - 27439 * g - 5329 * b + (128 * 65536 + 32767)) / 65536)
    return torch.cat([y, cb, cr], dim=1)


def ycbcr_to_rgb(ycc: Tensor) -> Tensor:
    """(N, 3, H, W) 8-bit YCbCr -> RGB clamped to 0..255, libjpeg's jdcolor.c tables."""
    y, cb, cr = ycc[:, 0:1], ycc[:, 1:2] - 128, ycc[:, 2:3] - 128
    r = y + ste_floor((91881 * cr + 32768) / 65536)
    g = y + ste_floor((-22554 * cb - 46802 * cr + 32768) / 65536)
    b = y + ste_floor((116130 * cb + 32768) / 65536)
    return torch.cat([r, g, b], dim=1).clamp(0, 255)


def pad_to(x: Tensor, height: int, width: int) -> Tensor:
    """Replicate the last row/column of (N, C, H, W) up to (height, width), as libjpeg's edge expansion."""
    dh, dw = height - x.shape[-2], width - x.shape[-1]
    return F.pad(x, (0, dw, 0, dh), mode="replicate") if dh or dw else x


def downsample(c: Tensor, fh: int, fv: int) -> Tensor:
    """libjpeg's h2v2/h2v1 box downsampling: floor((sum + bias) / n), bias alternating per column.

    h2v2: bias 1, 2, 1, 2, ...; h2v1: bias 0, 1, 0, 1, ... (jcsample.c). c: (N, K, H, W), H and W
    multiples of fv and fh.
    """
    if fh == 1 and fv == 1:
        return c
    n, k, h, w = c.shape
    s = c.reshape(-1, k, h // fv, fv, w // fh, fh).sum(dim=(3, 5))
    bias = torch.arange(w // fh, device=c.device) % 2 + (1.0 if fv == 2 else 0.0)
    return ste_floor((s + bias) / (fh * fv))


def fancy_upsample(c: Tensor, fh: int, fv: int) -> Tensor:
    """libjpeg-turbo's "fancy" triangular upsampling (jdsample.c h2v2/h2v1_fancy_upsample).

    Each output sample weights its nearer input 3/4 and the further one 1/4 per upsampled axis,
    with edge replication and libjpeg's alternating rounding biases. c: (N, K, h, w) -> (N, K, h*fv, w*fh).
    """
    if fh == 1 and fv == 1:
        return c
    if fv == 1:  # h2v1: out = (3*this + left/right neighbour + 1 or 2) >> 2
        left, right = _neighbours(c, dim=-1)
        even = ste_floor((3 * c + left + 1) / 4)
        odd = ste_floor((3 * c + right + 2) / 4)
        return torch.stack([even, odd], dim=-1).flatten(-2)
    up, down = _neighbours(c, dim=-2)
    rows = []
    for vert in (3 * c + up, 3 * c + down):  # column sums for the upper and lower output row
        left, right = _neighbours(vert, dim=-1)
        even = ste_floor((3 * vert + left + 8) / 16)
        odd = ste_floor((3 * vert + right + 7) / 16)
        rows.append(torch.stack([even, odd], dim=-1).flatten(-2))  # (N, K, h, 2w)
    return torch.stack(rows, dim=-2).flatten(-3, -2)  # interleave rows -> (N, K, 2h, 2w)


def _neighbours(c: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """(previous, next) sample along `dim` (-1 or -2), edges replicated as libjpeg's context rows."""
    n = c.shape[dim]
    prev = torch.cat([c.narrow(dim, 0, 1), c.narrow(dim, 0, n - 1)], dim=dim)
    nxt = torch.cat([c.narrow(dim, 1, n - 1), c.narrow(dim, n - 1, 1)], dim=dim)
    return prev, nxt


def block_dct_quantize(plane: Tensor, table: Tensor, dct: Tensor, rounding: str) -> Tensor:
    """8x8 block DCT, quantize/dequantize, inverse DCT, range limit. plane: (N, K, H, W), H, W % 8 == 0.

    Input and output on the 0..255 scale (level shift by 128 inside); output is 8-bit levels.
    The DC term is computed exactly (block sum / 8, as libjpeg's integer DCT) and kept out of the
    float inverse DCT, so flat blocks, whose quantized DC often lies exactly on a rounding tie,
    round as libjpeg does (quantizer: ties away from zero; IDCT output: ties up).
    """
    n, k, h, w = plane.shape
    blocks = (plane - 128).reshape(-1, k, h // 8, 8, w // 8, 8).transpose(3, 4)  # (N, K, by, bx, 8, 8)
    ac_mask = (torch.arange(64, device=plane.device) != 0).to(plane.dtype).view(8, 8)  # 0 at DC, 1 elsewhere
    dc = blocks.sum(dim=(-2, -1), keepdim=True) / 8  # exact: sums of integers, divided by a power of 2
    coef = (dct @ blocks @ dct.T) * ac_mask
    rnd = cubic_round if rounding == "cubic" else ste_round
    dc = rnd(dc / table[0, 0]) * table[0, 0]
    coef = rnd(coef / table) * table * ac_mask
    pixels = dct.T @ coef @ dct + (dc / 8 + 128)
    pixels = pixels.transpose(3, 4).reshape(-1, k, h, w)
    return ste_floor(pixels + 0.5).clamp(0, 255)


# ---------------------------------------------------------------------------------------------
# Public function and modules
# ---------------------------------------------------------------------------------------------


def check_images(x: object) -> Tensor:
    """Check a float (N, 3, H, W) tensor; raise InputError otherwise."""
    if not isinstance(x, Tensor):
        raise InputError(expected_got("images", "a torch.Tensor", type(x).__name__))
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise InputError(
            expected_got("images", "float (N, 3, H, W) RGB in [0, 1]", f"{x.dtype} {tuple(x.shape)}")
        )
    return x


def _diff_jpeg(x: Tensor, luma_table: Tensor, chroma_table: Tensor, dct: Tensor, subsampling: str,
               rounding: str) -> Tensor:
    fh, fv = _FACTORS[subsampling]
    h, w = x.shape[-2:]
    rgb = ste_round(x.clamp(0, 1) * 255)  # the codec sees 8-bit pixels
    # libjpeg expands the right edge to whole chroma blocks and the bottom to even rows (jcprepct.c,
    # jcsample.c), downsamples, then expands each component's bottom to whole blocks.
    wp = -(-w // (8 * fh)) * 8 * fh
    hp = -(-h // fv) * fv
    ycc = rgb_to_ycbcr(pad_to(rgb, hp, wp))
    luma = pad_to(ycc[:, :1], -(-hp // 8) * 8, wp)
    chroma = downsample(ycc[:, 1:], fh, fv)
    chroma = pad_to(chroma, -(-chroma.shape[-2] // 8) * 8, chroma.shape[-1])
    luma = block_dct_quantize(luma, luma_table, dct, rounding)[..., :h, :w]
    chroma = block_dct_quantize(chroma, chroma_table, dct, rounding)
    # the decoder upsamples the component's real samples only: ceil(H / fv) x ceil(W / fh)
    chroma = fancy_upsample(chroma[..., : -(-h // fv), : -(-w // fh)], fh, fv)[..., :h, :w]
    rgb = ycbcr_to_rgb(torch.cat([luma, chroma], dim=1))
    return rgb / 255


class DiffJPEG(nn.Module):
    """Differentiable JPEG round trip matching libjpeg-turbo (see module docstring).

    Args:
        quality: JPEG quality 1..100 (libjpeg scale).
        subsampling: chroma subsampling "420" (default, as the defense), "422" or "444".
        rounding: gradient of the quantization rounding: "ste" (identity, default) or "cubic"
            (Shin & Song 2017). The forward pass is exact either way.

    Shape:
        input (N, 3, H, W) float32 RGB in [0, 1] (values outside are clamped); output the same
        shape, float32 in [0, 1] on the 8-bit grid (multiples of 1/255).

    Example:
        >>> jpeg = DiffJPEG(quality=50)
        >>> y = jpeg(torch.rand(2, 3, 32, 32))   # y.shape == (2, 3, 32, 32)
    """

    def __init__(self, quality: int, subsampling: str = "420", rounding: str = "ste") -> None:
        super().__init__()
        self.quality = check_settings(quality, subsampling, rounding)
        self.subsampling = subsampling
        self.rounding = rounding
        self.register_buffer("luma_table", quant_table(quality), persistent=False)
        self.register_buffer("chroma_table", quant_table(quality, chroma=True), persistent=False)
        self.register_buffer("dct", dct_matrix(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        check_images(x)
        return _diff_jpeg(x, self.luma_table, self.chroma_table, self.dct, self.subsampling, self.rounding)

    def extra_repr(self) -> str:
        return f"quality={self.quality}, subsampling={self.subsampling!r}, rounding={self.rounding!r}"


def diff_jpeg(x: Tensor, quality: int, *, subsampling: str = "420", rounding: str = "ste") -> Tensor:
    """Functional DiffJPEG: (N, 3, H, W) float RGB in [0, 1] -> JPEG round trip, same shape/range.

    Example:
        >>> y = diff_jpeg(torch.rand(1, 3, 32, 32), 40)
    """
    return DiffJPEG(quality, subsampling, rounding).to(check_images(x).device)(x)


# ---------------------------------------------------------------------------------------------
# SLQ (SHIELD's stochastic local quantization) on top of DiffJPEG
# ---------------------------------------------------------------------------------------------


def slq_block_choice(n: int, h: int, w: int, n_versions: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> Tensor:
    """Per-pixel version index (N, H, W) int64, constant on each 8x8 block, uniform over `n_versions`.

    The torch twin of `edge_guard.jpeg.slq_block_choice`: blocks start at the top-left corner;
    edge blocks of sides that are not multiples of 8 are partial.
    """
    blocks = torch.randint(0, n_versions, (n, -(-h // SLQ_BLOCK), -(-w // SLQ_BLOCK)), generator=generator,
                           device=generator.device if generator is not None else device)
    choice = blocks.repeat_interleave(SLQ_BLOCK, dim=1).repeat_interleave(SLQ_BLOCK, dim=2)[:, :h, :w]
    return choice.to(device) if device is not None else choice


def mix_blocks(versions: Tensor, choice: Tensor) -> Tensor:
    """Pick per pixel from versions (Q, N, C, H, W) by choice (N, H, W) -> (N, C, H, W).

    Implemented as a one-hot weighted sum, so gradients reach exactly the chosen version.
    """
    q = versions.shape[0]
    onehot = (choice[None] == torch.arange(q, device=choice.device).view(q, 1, 1, 1)).to(versions.dtype)
    return (versions * onehot[:, :, None]).sum(dim=0)


class DiffSLQ(nn.Module):
    """Differentiable SLQ: DiffJPEG at every quality, mixed per 8x8 block (same pick for all channels).

    Args:
        qualities: the SLQ quality set, each 1..100 (SHIELD: 20, 40, 60, 80).
        subsampling, rounding: as in `DiffJPEG`.

    forward(x, choice=None, generator=None): x (N, 3, H, W) float32 in [0, 1]; choice an optional
    (N, H, W) int64 version index per pixel (e.g. the one the real codec used); otherwise a fresh
    draw from `generator` (torch.Generator, or the global RNG when None). Returns (N, 3, H, W) in [0, 1].

    Example:
        >>> slq = DiffSLQ((20, 40, 60, 80))
        >>> y = slq(torch.rand(4, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    """

    def __init__(self, qualities: Sequence[int] = DEFAULT_SLQ_QUALITIES, subsampling: str = "420",
                 rounding: str = "ste") -> None:
        super().__init__()
        if isinstance(qualities, (str, bytes)) or not isinstance(qualities, Sequence) or not qualities:
            raise InputError(expected_got("qualities", "a non-empty sequence of integers 1..100", repr(qualities)))
        self.qualities = tuple(qualities)
        self.jpegs = nn.ModuleList(DiffJPEG(q, subsampling, rounding) for q in self.qualities)

    def forward(self, x: Tensor, choice: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        n, _, h, w = check_images(x).shape
        if choice is None:
            choice = slq_block_choice(n, h, w, len(self.jpegs), generator, device=x.device)
        elif tuple(choice.shape) != (n, h, w):
            raise InputError(expected_got("choice shape", f"(N, H, W) = {(n, h, w)}", tuple(choice.shape)))
        return mix_blocks(torch.stack([jpeg(x) for jpeg in self.jpegs]), choice)
