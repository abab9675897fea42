"""The defense codec: determinism, quality behaviour, pinned subsampling, SLQ, input checks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_guard import jpeg
from edge_guard.errors import CodecError, InputError

BACKENDS = jpeg.available_backends()


def natural_images(n: int = 4, h: int = 48, w: int = 40, seed: int = 0) -> np.ndarray:
    """Smooth gradients + blurred blobs + mild noise: photo-like content JPEG handles well."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (h + w) * 255], -1) * rng.uniform(0.3, 1.0, 3)
        for _ in range(3):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, 12)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
        img = cv2.GaussianBlur(img, (5, 5), 1.5) + rng.normal(0, 2, img.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def sof_subsampling(data: bytes) -> str:
    """Parse the SOF0/SOF1/SOF2 header and return the chroma subsampling it declares."""
    i = 2
    while i < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            ncomp = data[i + 9]
            factors = [(data[i + 11 + 3 * c] >> 4, data[i + 11 + 3 * c] & 15) for c in range(ncomp)]
            return {((2, 2), (1, 1)): "420", ((2, 1), (1, 1)): "422", ((1, 1), (1, 1)): "444"}[
                (factors[0], factors[1])
            ]
        i += 2 + length
    raise AssertionError("no SOF marker found")


def test_at_least_one_backend_and_auto_resolves():
    assert BACKENDS, "no JPEG backend loads"
    assert jpeg.resolve_backend("auto") in BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
def test_roundtrip_deterministic_same_shape_and_not_identity(backend):
    x = natural_images()
    a = jpeg.roundtrip(x, 50, backend=backend)
    b = jpeg.roundtrip(x, 50, backend=backend)
    assert a.shape == x.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - x).mean() > 0.5
    single = jpeg.roundtrip(x[1], 50, backend=backend)
    np.testing.assert_array_equal(single, a[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_error_shrinks_as_quality_rises(backend):
    x = natural_images(seed=1)
    errors = [np.abs(jpeg.roundtrip(x, q, backend=backend).astype(float) - x).mean() for q in (10, 30, 50, 70, 90)]
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("subsampling", jpeg.SUBSAMPLINGS)
def test_requested_subsampling_is_written(backend, subsampling):
    data = jpeg.encode(natural_images(1)[0], 75, subsampling=subsampling, backend=backend)
    assert sof_subsampling(data) == subsampling


@pytest.mark.parametrize("backend", BACKENDS)
def test_subsampling_changes_output(backend):
    x = natural_images(seed=2)
    a = jpeg.roundtrip(x, 90, subsampling="420", backend=backend)
    b = jpeg.roundtrip(x, 90, subsampling="444", backend=backend)
    assert not np.array_equal(a, b)


def test_non_contiguous_input_is_accepted():
    x = natural_images(2, 64, 64)
    view = x[:, ::2, ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(jpeg.roundtrip(view, 60), jpeg.roundtrip(view.copy(), 60))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((8, 8, 3), np.float32), "dtype"),
        (np.zeros((8, 8), np.uint8), "channels|shape"),
        (np.zeros((8, 8, 1), np.uint8), "channels"),
        (np.zeros((8, 8, 4), np.uint8), "channels"),
        (np.zeros((0, 8, 8, 3), np.uint8), "non-empty"),
        (np.zeros((2, 2, 8, 8, 3), np.uint8), "shape"),
        ([[1, 2, 3]], "ndarray"),
    ],
)
def test_bad_images_raise_input_error(bad, match):
    with pytest.raises(InputError, match=match):
        jpeg.roundtrip(bad, 50)


@pytest.mark.parametrize("quality", [0, 101, -5, 50.0, True, "50"])
def test_bad_quality_raises(quality):
    with pytest.raises(InputError, match="quality"):
        jpeg.roundtrip(natural_images(1), quality)


def test_bad_subsampling_and_backend_raise():
    with pytest.raises(InputError, match="subsampling"):
        jpeg.roundtrip(natural_images(1), 50, subsampling="411")
    with pytest.raises(InputError, match="backend"):
        jpeg.roundtrip(natural_images(1), 50, backend="pillow")


def test_decode_rejects_corrupt_data():
    with pytest.raises(CodecError, match="SOI"):
        jpeg.decode(b"not a jpeg at all")
    data = jpeg.encode(natural_images(1)[0], 80)
    with pytest.raises((CodecError, InputError)):
        jpeg.decode(data[:3])


@pytest.mark.parametrize("h, w", [(32, 32), (37, 45)])
def test_slq_blocks_each_come_from_one_version(h, w):
    x = natural_images(3, h, w, seed=3)
    qualities = (20, 40, 60, 80)
    out = jpeg.slq(x, qualities, rng=np.random.default_rng(7))
    versions = [jpeg.roundtrip(x, q) for q in qualities]
    used = set()
    for n in range(x.shape[0]):
        for by in range(0, h, 8):
            for bx in range(0, w, 8):
                block = out[n, by : by + 8, bx : bx + 8]
                matches = [i for i, v in enumerate(versions) if np.array_equal(block, v[n, by : by + 8, bx : bx + 8])]
                assert matches, f"block ({n},{by},{bx}) equals none of the compressed versions"
                used.update(matches)
    assert used == {0, 1, 2, 3}  # with 3*~20 blocks every version gets picked


def test_slq_is_seedable_and_random():
    x = natural_images(2, 64, 64, seed=4)
    a = jpeg.slq(x, rng=np.random.default_rng(1))
    b = jpeg.slq(x, rng=np.random.default_rng(1))
    c = jpeg.slq(x, rng=np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(jpeg.slq(x, rng=5), jpeg.slq(x, rng=5))


def test_slq_choice_same_for_all_channels_and_uniform():
    choice = jpeg.slq_block_choice((200, 16, 16), 4, rng=0)
    assert choice.shape == (200, 16, 16)
    assert (choice[:, :8, :8] == choice[:, :1, :1]).all()
    counts = np.bincount(choice[:, ::8, ::8].ravel(), minlength=4) / choice[:, ::8, ::8].size
    assert np.allclose(counts, 0.25, atol=0.05)


def test_slq_rejects_bad_qualities():
    with pytest.raises(InputError):
        jpeg.slq(natural_images(1), ())
    with pytest.raises(InputError):
        jpeg.slq(natural_images(1), (20, 0))


def test_codec_info_reports_version_and_pinned_settings():
    info = jpeg.codec_info()
    assert info["backend"] in jpeg.BACKENDS
    assert info["subsampling"] == "420" and info["dct"] == "islow"
    assert info["version"] != "unknown" and info["version"][0].isdigit()
