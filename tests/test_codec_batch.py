"""edge_guard.codec_batch: batched round trips are bit-identical to one-by-one codec calls, whatever the threads,
and the defense computes each (quality, crop) round trip once."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge_guard import codec_batch, jpeg
from edge_guard.defense import member_inputs
from edge_guard.errors import CodecError
from edge_guard.spec import CodecSpec, DefenseSpec, member_spec

BACKENDS = jpeg.available_backends()


def crops(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth-ish synthetic crops (blocks of 4 px plus noise), so qualities give different outputs."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, size // 4, size // 4, 3)).repeat(4, 1).repeat(4, 2)
    return np.clip(coarse + rng.normal(0, 12, coarse.shape), 0, 255).astype(np.uint8)


def one_by_one(batch: np.ndarray, quality: int, backend: str) -> np.ndarray:
    """The serial path: the backend's own encode and decode, image by image (PyTurboJPEG or OpenCV)."""
    codec = jpeg._codec(backend)
    return np.stack([codec.decode(codec.encode(image, quality, "420")) for image in batch])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_batched_round_trips_equal_one_by_one_calls(backend, threads):
    batch = crops(4 * codec_batch.MIN_CHUNK_PIXELS // 1024 + 5)  # enough for several chunks per quality
    got = jpeg.roundtrips(batch, [20, 50, 90], backend=backend, threads=threads)
    for q, out in zip((20, 50, 90), got):
        assert out.shape == batch.shape and out.dtype == np.uint8
        assert np.array_equal(out, one_by_one(batch, q, backend)), (backend, threads, q)
    assert not np.array_equal(got[0], got[2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_odd_sizes_and_single_images(backend):
    batch = crops(3, 40)[:, :37, :29]  # not a multiple of the MCU, not contiguous
    assert np.array_equal(jpeg.roundtrip(batch, 40, backend=backend), one_by_one(np.ascontiguousarray(batch), 40,
                                                                                   backend))
    single = jpeg.roundtrips(batch[0], [30, 30], backend=backend)
    assert single[0].shape == batch[0].shape and np.shares_memory(single[0], single[1])  # computed once


def test_roundtrip_batch_uses_the_pool_for_large_batches_and_runs_each_pair_once():
    seen: list[tuple[str, int, int]] = []

    def run(src, dst, quality, subsampling):
        seen.append((threading.current_thread().name, quality, src.shape[0]))
        dst[:] = src // 2 + quality

    batch = crops(300)
    outs = codec_batch.roundtrip_batch(batch, [10, 20], "420", run, threads=2)
    assert [int(o[0, 0, 0, 0]) for o in outs] == [batch[0, 0, 0, 0] // 2 + 10, batch[0, 0, 0, 0] // 2 + 20]
    assert {q: sum(n for _, qq, n in seen if qq == q) for q in (10, 20)} == {10: 300, 20: 300}
    assert any(name.startswith("edgeguard-jpeg") for name, _, _ in seen)  # some chunks ran on the pool
    seen.clear()
    codec_batch.roundtrip_batch(batch[:4], [10, 20], "420", run, threads=2)  # a frame's few crops: inline
    assert {name for name, _, _ in seen} == {threading.current_thread().name}


def test_a_failing_chunk_raises_on_the_caller():
    def run(src, dst, quality, subsampling):
        if quality == 20:
            raise CodecError("boom")

    with pytest.raises(CodecError, match="boom"):
        codec_batch.roundtrip_batch(crops(300), [10, 20], "420", run, threads=2)


def test_codec_threads_env_override(monkeypatch):
    monkeypatch.setenv("EDGEGUARD_CODEC_THREADS", "3")
    assert codec_batch.codec_threads() == 3
    monkeypatch.setenv("EDGEGUARD_CODEC_THREADS", "x")
    assert 1 <= codec_batch.codec_threads() <= codec_batch.MAX_THREADS


@pytest.mark.parametrize("backend", BACKENDS)
def test_defense_round_trips_each_quality_once_per_crop(monkeypatch, backend):
    codec = jpeg._codec(backend)
    calls: list[tuple[int, int]] = []
    real = codec.run_batch

    def counting(src, dst, quality, subsampling):
        calls.append((quality, src.shape[0]))
        real(src, dst, quality, subsampling)

    monkeypatch.setattr(codec, "run_batch", counting)
    batch = crops(200)
    defense = DefenseSpec(kind="jpeg", qualities=(20, 40, 60, 80), per_member=True, subsampling="420",
                          codec=CodecSpec(backend=backend, version="x"), in_graph=False)
    members = [member_spec("jpeg", q) for q in (20, 40, 60, 80)] + [member_spec("slq")]
    got = member_inputs(batch, defense, members, rng=5, backend=backend)
    per_quality = {q: sum(n for qq, n in calls if qq == q) for q in (20, 40, 60, 80)}
    assert per_quality == {20: 200, 40: 200, 60: 200, 80: 200}  # the SLQ member reused the JPEG members' round trips
    assert sum(n for _, n in calls) == 4 * 200
    monkeypatch.setattr(codec, "run_batch", real)
    assert np.array_equal(got[4], jpeg.slq(batch, (20, 40, 60, 80), rng=5, backend=backend))
    assert np.array_equal(got[1], one_by_one(batch, 40, backend))
