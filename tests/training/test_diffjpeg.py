"""DiffJPEG: agreement with the real codec, gradients, tables, SLQ mixing, ONNX export."""

from __future__ import annotations

import io

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from edge_guard import jpeg
from edge_guard.errors import InputError
from edge_guard.training.diffjpeg import (
    DiffJPEG,
    DiffSLQ,
    dct_matrix,
    diff_jpeg,
    mix_blocks,
    quant_table,
    slq_block_choice,
)

torch.set_num_threads(1)
QUALITIES = (10, 20, 30, 50, 70, 90)


def natural_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Natural-like uint8 RGB (N, H, W, 3): smooth gradients + blurred shapes + a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(n):
        img = np.stack([rng.uniform(40, 215) + rng.uniform(-80, 80) * (a * yy + (1 - a) * xx)
                        for a in rng.uniform(0, 1, 3)], axis=-1)
        for _ in range(4):
            mask = np.zeros((h, w), np.float32)
            p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            if rng.random() < 0.5:
                cv2.circle(mask, p, int(rng.integers(3, max(h, w) // 2)), 1.0, -1)
            else:
                cv2.rectangle(mask, p, (int(rng.integers(0, w)), int(rng.integers(0, h))), 1.0, -1)
            mask = cv2.GaussianBlur(mask, (0, 0), 1.0)[..., None]
            img = img * (1 - mask) + mask * rng.uniform(0, 255, 3)
        img += rng.normal(0, 3, img.shape)
        out.append(np.clip(img, 0, 255).round().astype(np.uint8))
    return np.stack(out)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def to_levels(x: torch.Tensor) -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).numpy().astype(np.float64) * 255


@pytest.mark.parametrize("size", [(32, 32), (64, 64)])
def test_forward_agrees_with_libjpeg_within_one_grey_level(size: tuple[int, int]) -> None:
    images = natural_images(6, *size, seed=size[0])
    x = to_tensor(images)
    mads = {}
    for q in QUALITIES:
        ref = jpeg.roundtrip(images, q, subsampling="420").astype(np.float64)
        mads[q] = float(np.abs(to_levels(diff_jpeg(x, q)) - ref).mean())
    assert all(m < 1.0 for m in mads.values()), f"mean |DiffJPEG - libjpeg| per quality (grey levels): {mads}"
    # the compression itself is far larger than the mismatch, so the test has teeth
    lossy = float(np.abs(jpeg.roundtrip(images, 10).astype(np.float64) - images).mean())
    assert lossy > 3 * max(mads.values())


@pytest.mark.parametrize("subsampling", ["444", "422"])
def test_other_subsamplings_and_odd_sizes_agree(subsampling: str) -> None:
    images = natural_images(4, 37, 45, seed=3)  # not multiples of 8/16: padding and crop paths
    for q in (20, 75):
        ref = jpeg.roundtrip(images, q, subsampling=subsampling).astype(np.float64)
        out = to_levels(diff_jpeg(to_tensor(images), q, subsampling=subsampling))
        assert out.shape == ref.shape
        assert np.abs(out - ref).mean() < 1.0


def test_output_is_8bit_grid_in_range_and_input_is_quantized_first() -> None:
    x = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    y = diff_jpeg(x, 50)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(y * 255, torch.round(y * 255))
    # the codec sees 8-bit pixels: an off-grid input and its rounded version give the same output
    assert torch.equal(y, diff_jpeg(torch.round(x * 255) / 255, 50))


def test_quantization_tables_follow_libjpeg_scaling() -> None:
    assert quant_table(50)[0].tolist() == [16, 11, 10, 16, 24, 40, 51, 61]
    assert quant_table(50, chroma=True)[0, 0] == 17
    assert quant_table(10)[0, 0] == (16 * 500 + 50) // 100  # q < 50: scale 5000/q percent
    assert quant_table(90)[7, 7] == (99 * 20 + 50) // 100  # q >= 50: scale 200 - 2q
    assert torch.all(quant_table(100) == 1)
    assert torch.all(quant_table(1) <= 255) and quant_table(1).max() == 255  # baseline clamp


def test_dct_matrix_is_orthonormal() -> None:
    d = dct_matrix()
    assert torch.allclose(d @ d.T, torch.eye(8), atol=1e-6)


@pytest.mark.parametrize("rounding", ["ste", "cubic"])
def test_gradients_are_finite_and_nonzero(rounding: str) -> None:
    x = to_tensor(natural_images(2, 32, 32, seed=5)).requires_grad_(True)
    y = DiffJPEG(40, rounding=rounding)(x)
    (grad,) = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), x)
    assert torch.isfinite(grad).all()
    assert (grad != 0).float().mean() > 0.5


def test_cubic_and_ste_share_forward_but_not_gradients() -> None:
    x = to_tensor(natural_images(2, 32, 32, seed=6))
    w = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    grads, outs = [], []
    for rounding in ("ste", "cubic"):
        xx = x.clone().requires_grad_(True)
        y = DiffJPEG(30, rounding=rounding)(xx)
        outs.append(y.detach())
        grads.append(torch.autograd.grad((y * w).sum(), xx)[0])
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(grads[0], grads[1])
    # cubic damps the quantization gradient (3 e^2 <= 3/4 < 1), so its gradient is smaller overall
    assert grads[1].norm() < grads[0].norm()


def test_invalid_settings_and_inputs_raise_input_error() -> None:
    with pytest.raises(InputError):
        DiffJPEG(0)
    with pytest.raises(InputError):
        DiffJPEG(50, subsampling="411")
    with pytest.raises(InputError):
        DiffJPEG(50, rounding="floor")
    with pytest.raises(InputError):
        diff_jpeg(torch.rand(3, 32, 32), 50)


def test_diffslq_mixes_per_8x8_block_same_pick_for_all_channels() -> None:
    x = to_tensor(natural_images(3, 40, 36, seed=7))
    slq = DiffSLQ((20, 60))
    choice = slq_block_choice(3, 40, 36, 2, torch.Generator().manual_seed(0))
    assert choice.shape == (3, 40, 36)
    # constant on every 8x8 block (including the partial edge blocks)
    blocks = choice[:, ::8, ::8].repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :40, :36]
    assert torch.equal(choice, blocks)
    assert 0 < float(choice.float().mean()) < 1  # both versions used
    y = slq(x, choice=choice)
    q20, q60 = diff_jpeg(x, 20), diff_jpeg(x, 60)
    expected = torch.where(choice[:, None].bool(), q60, q20)
    assert torch.equal(y, expected)
    assert torch.equal(mix_blocks(torch.stack([q20, q60]), choice), expected)
    # a generator makes draws reproducible
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(slq(x, generator=g1), slq(x, generator=g2))


def test_onnx_export_runs_in_onnxruntime_with_dynamic_batch() -> None:
    model = DiffJPEG(50).eval()
    x = to_tensor(natural_images(2, 32, 32, seed=8))
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}}, dynamo=False, opset_version=17)
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x5 = to_tensor(natural_images(5, 32, 32, seed=9))
    out = session.run(None, {"input": x5.numpy()})[0]
    diff = np.abs(out - model(x5).numpy()) * 255
    assert out.shape == (5, 3, 32, 32)
    assert diff.mean() < 0.05 and diff.max() <= 2.0 + 1e-3  # equal up to rare float ties
