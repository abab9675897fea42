"""Engine: provider resolution and verification, sessions, fused graphs, and voting."""

from __future__ import annotations

import dataclasses
import logging

import msgspec
import numpy as np
import onnxruntime as ort
import pytest

from edge_guard.bundle import load_bundle
from edge_guard.engine import Engine, majority_vote, resolve_providers, soft_vote, softmax, vote
from edge_guard.errors import BundleError, ConfigError, InputError, ProviderError
from tests.onnx_fixtures import H, W, channel_weights, const_bias, defense_dict, make_bundle

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


# ----------------------------------------------------------------------------- voting


def test_softmax_is_stable_and_normalised():
    p = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, 1.0, 2.0]]))
    assert p.dtype == np.float32 and np.allclose(p.sum(axis=-1), 1.0)
    assert np.allclose(p[0], [0.5, 0.5, 0.0]) and np.all(np.diff(p[1]) > 0)


def _probs(*members):
    """members: lists of per-sample probability rows -> [M, N, C]."""
    return np.asarray(members, np.float32)


def test_majority_vote_counts_votes_not_mass():
    # Two members say class 0 weakly, one says class 1 with near certainty: majority picks 0, soft picks 1.
    p = _probs([[0.4, 0.3, 0.3]], [[0.4, 0.3, 0.3]], [[0.0, 1.0, 0.0]])
    ids, conf, votes = majority_vote(p)
    assert ids.tolist() == [0] and votes.tolist() == [[0, 0, 1]]
    assert conf[0] == pytest.approx((0.4 + 0.4 + 0.0) / 3)
    s_ids, s_conf, s_votes = soft_vote(p)
    assert s_ids.tolist() == [1] and s_conf[0] == pytest.approx((0.3 + 0.3 + 1.0) / 3)
    assert s_votes.tolist() == votes.tolist()


def test_majority_tie_goes_to_highest_mean_probability():
    # One vote each for 0 and 2; class 2 has the higher mean probability.
    p = _probs([[0.6, 0.0, 0.4]], [[0.0, 0.3, 0.7]])
    ids, conf, votes = majority_vote(p)
    assert votes.tolist() == [[0, 2]] and ids.tolist() == [2]
    assert conf[0] == pytest.approx(0.55)


def test_majority_tie_with_equal_means_goes_to_lowest_class_id():
    p = _probs([[0.0, 0.25, 0.75, 0.0]], [[0.0, 0.75, 0.25, 0.0]])
    ids, _, votes = majority_vote(p)
    assert votes.tolist() == [[2, 1]] and ids.tolist() == [1]


def test_majority_tie_ignores_classes_without_max_votes():
    # Classes 0 and 1 have 2 votes each; class 3 has the highest mean probability but only 1 vote.
    p = _probs([[0.5, 0.0, 0.0, 0.5]], [[0.6, 0.0, 0.0, 0.4]], [[0.0, 0.5, 0.0, 0.5]], [[0.0, 0.6, 0.0, 0.4]],
               [[0.0, 0.1, 0.0, 0.9]])
    ids, conf, votes = majority_vote(p)
    assert votes.tolist() == [[0, 0, 1, 1, 3]]  # member 0's own 0/3 tie goes to the lower id
    assert ids.tolist() == [1] and conf[0] == pytest.approx(0.24)  # mean p(1) 0.24 > mean p(0) 0.22


def test_vote_batches_and_dispatch():
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(size=(5, 7, 4)))
    ids, conf, votes = vote(p, "majority")
    assert ids.shape == (7,) and conf.shape == (7,) and votes.shape == (7, 5)
    assert ids.dtype == np.int64 and conf.dtype == np.float32
    assert np.array_equal(vote(p, "soft")[0], p.mean(0).argmax(1))
    with pytest.raises(ConfigError, match="vote rule"):
        vote(p, "average")
    with pytest.raises(InputError, match=r"\[M, N, C\]"):
        majority_vote(p[0])


# ----------------------------------------------------------------------------- providers


@pytest.fixture
def gpu_build(monkeypatch):
    """Pretend this onnxruntime build has TensorRT and CUDA."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])


def test_default_request_is_cpu():
    assert resolve_providers(None) == [CPU]


def test_requested_order_is_kept_and_names_are_case_insensitive(gpu_build):
    assert resolve_providers(["cuda", "TensorRT", "cpu"]) == [CUDA, TRT, CPU]
    assert resolve_providers([TRT, "CUDA", "cuda"]) == [TRT, CUDA]
    assert resolve_providers("tensorrt,cpu") == [TRT, CPU]


def test_unavailable_providers_are_dropped_with_a_log_line(monkeypatch, caplog):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    with caplog.at_level(logging.WARNING, logger="edge_guard"):
        assert resolve_providers(["tensorrt", "cuda", "cpu"]) == [CPU]
    assert TRT in caplog.text and CUDA in caplog.text


def test_no_silent_cpu_fallback(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    with pytest.raises(ProviderError) as info:
        resolve_providers(["tensorrt", "cuda"])
    msg = str(info.value)
    assert TRT in msg and CUDA in msg and f"only ['{CPU}'] available" in msg and "'cpu'" in msg


def test_unknown_provider_suggests_nearest():
    with pytest.raises(ConfigError, match=r"got 'cudda'.*Did you mean 'cuda'"):
        resolve_providers(["cudda"])
    with pytest.raises(ConfigError, match="at least one"):
        resolve_providers([])


class _Arg:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class _FallbackSession:
    """Accepts CUDA but runs on CPU, as onnxruntime does when the CUDA libraries fail to load."""

    requested: list = []
    options: list = []

    def __init__(self, path, sess_options=None, providers=None, provider_options=None):
        _FallbackSession.requested, _FallbackSession.options = providers, provider_options

    def get_providers(self):
        return [CPU]

    def get_inputs(self):
        return [_Arg("input", ["N", 3, H, W])]

    def get_outputs(self):
        return [_Arg("logits", ["N", 4])]


def test_session_that_silently_falls_back_raises(tiny, gpu_build, monkeypatch, caplog):
    monkeypatch.setattr(ort, "InferenceSession", _FallbackSession)
    with pytest.raises(ProviderError, match=rf"expected {CUDA}, got {CPU}"):
        Engine(load_bundle(tiny), providers=["cuda", "cpu"], use_fused=False)
    with caplog.at_level(logging.WARNING, logger="edge_guard"):
        eng = Engine(load_bundle(tiny), providers=["cuda", "cpu"], use_fused=False, strict=False)
    assert eng.active_providers == (CPU,) and f"expected {CUDA}" in caplog.text
    assert _FallbackSession.requested == [CUDA, CPU]


def test_provider_options_reach_the_session(tiny, gpu_build, monkeypatch):
    monkeypatch.setattr(ort, "InferenceSession", _FallbackSession)
    Engine(load_bundle(tiny), providers=["tensorrt", "cuda", "cpu"], use_fused=False, strict=False,
           provider_options={"tensorrt": {"trt_fp16_enable": True, "trt_engine_cache_path": "/cache"},
                             "CUDAExecutionProvider": {"device_id": 1}})
    assert _FallbackSession.requested == [TRT, CUDA, CPU]
    assert _FallbackSession.options == [{"trt_fp16_enable": "True", "trt_engine_cache_path": "/cache"},
                                        {"device_id": "1"}, {}]


# ----------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Members that always predict classes 0, 1, 3 (zero weights, constant bias)."""
    members = [{"name": f"c{k}", "vaccination": "none", "quality": None,
                "weight": np.zeros((3 * H * W, 4), np.float32), "bias": const_bias(k)} for k in (0, 1, 3)]
    return make_bundle(tmp_path_factory.mktemp("tiny"), members, fused=True)


@pytest.fixture(scope="module")
def per_member(tmp_path_factory):
    """Per-member jpeg bundle with input-dependent members and a fused [M,N,3,H,W] graph."""
    rng = np.random.default_rng(1)
    members = [{"name": f"q{q}", "vaccination": "jpeg", "quality": q,
                "weight": channel_weights() + rng.normal(0, 0.05, (3 * H * W, 4)).astype(np.float32)}
               for q in (20, 60)]
    return make_bundle(tmp_path_factory.mktemp("pm"), members, defense=defense_dict("jpeg", [20, 60], per_member=True),
                       fused=True)


def test_engine_runs_members_on_cpu_and_logs_provider(tiny, caplog):
    with caplog.at_level(logging.INFO, logger="edge_guard"):
        eng = Engine(load_bundle(tiny), use_fused=False, intra_op_threads=1)
    assert eng.active_providers[0] == CPU and f"runs on {CPU}" in caplog.text
    logits = eng.run(np.zeros((2, 3, H, W), np.float32))
    assert logits.shape == (3, 2, 4) and logits.dtype == np.float32
    assert logits.argmax(-1).tolist() == [[0, 0], [1, 1], [3, 3]]
    eng.warmup(2)


def test_fused_equals_members(per_member):
    b = load_bundle(per_member)
    fused, members = Engine(b, intra_op_threads=1), Engine(b, use_fused=False, intra_op_threads=1)
    assert fused.use_fused and fused.fused_per_member and not members.use_fused
    x = np.random.default_rng(2).random((2, 5, 3, H, W), dtype=np.float32)
    assert np.allclose(fused.run(x), members.run(x), atol=1e-5)
    shared = x[0]  # a 4-D batch is fed to every member
    assert np.allclose(fused.run(shared), members.run(np.stack([shared, shared])), atol=1e-5)


def test_per_member_input_reaches_its_member(per_member):
    eng = Engine(load_bundle(per_member), use_fused=False)
    x = np.zeros((2, 1, 3, H, W), np.float32)
    x[0, :, 0] = 1.0  # member 0 sees red
    x[1, :, 2] = 1.0  # member 1 sees blue
    assert eng.run(x).argmax(-1).tolist() == [[0], [2]]
    assert eng.run([x[0], x[1]]).argmax(-1).tolist() == [[0], [2]]


def test_engine_input_and_config_errors(tiny):
    b = load_bundle(tiny)
    eng = Engine(b)
    with pytest.raises(InputError, match=r"\[N,3,8,8\] or \[3,N,3,8,8\].*shape \(2, 3, 9, 9\)"):
        eng.run(np.zeros((2, 3, 9, 9), np.float32))
    with pytest.raises(InputError, match=r"fused engine input"):
        eng.run(np.zeros((3, 1, 3, H, W), np.float32))  # this fused graph takes a shared input
    with pytest.raises(ConfigError, match="use_fused"):
        Engine(dataclasses.replace(b, manifest=msgspec.structs.replace(b.manifest, fused=None)), use_fused=True)
    with pytest.raises(ConfigError, match="intra_op_num_threads"):
        Engine(b, intra_op_threads=-1)


def test_graph_with_wrong_class_count_is_refused(tmp_path):
    members = [{"name": "a", "vaccination": "none", "quality": None,
                "weight": np.zeros((3 * H * W, 5), np.float32), "bias": np.zeros(5, np.float32)}]
    root = make_bundle(tmp_path / "b", members)
    eng = Engine(load_bundle(root))
    with pytest.raises(BundleError, match=r"logits \[1, 1, 4\].*shape \(1, 1, 5\)"):
        eng.run(np.zeros((1, 3, H, W), np.float32))
