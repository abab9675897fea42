"""onnxruntime sessions for a bundle's members, execution-provider choice and verification, voting.

    providers = resolve_providers(["tensorrt", "cuda", "cpu"])   # keep the available ones, in order
    engine = Engine(bundle, providers=["cuda"])                   # ProviderError if CUDA does not run
    logits = engine.run(x)                                        # float32 [M, N, C]
    class_ids, confidence, votes = majority_vote(softmax(logits))

Never a silent CPU fallback: CPU runs only when asked for (it is the default request).
Sessions are created once; `Engine.run` keeps no mutable state, and onnxruntime's
`InferenceSession.run` is thread-safe, so one Engine serves concurrent callers.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_guard.bundle import Bundle
from edge_guard.errors import BundleError, ConfigError, InputError, ProviderError, expected_got
from edge_guard.spec import VoteRule

logger = logging.getLogger("edge_guard")

# Short names users type -> onnxruntime names. Every name onnxruntime knows also has its own
# short form (the name minus "ExecutionProvider", lower-cased), added in `_known_providers`.
_ALIASES = {"trt": "TensorrtExecutionProvider", "directml": "DmlExecutionProvider"}
_FALLBACK_NAMES = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_SUFFIX = "ExecutionProvider"
_REMOTE = ("AzureExecutionProvider",)  # listed as available in every build, yet the graph runs on the CPU


# ----------------------------------------------------------------------------- providers


def _known_providers() -> dict[str, str]:
    """Lower-cased full and short names -> the onnxruntime provider name."""
    names = set(ort.get_all_providers()) | set(_FALLBACK_NAMES)
    known = {k: v for k, v in _ALIASES.items()}
    for name in names:
        known[name.lower()] = name
        known[name.lower().removesuffix(_SUFFIX.lower())] = name
    return known


def _canonical(name: str, known: dict[str, str]) -> str:
    key = name.strip().lower()
    if key in known:
        return known[key]
    near = difflib.get_close_matches(key, list(known), n=1)
    hint = f"Did you mean {near[0]!r}?" if near else "Use tensorrt, cuda or cpu."
    raise ConfigError(expected_got("execution provider", "a name like tensorrt, cuda, cpu or CUDAExecutionProvider",
                                   repr(name), hint))


def resolve_providers(requested: Sequence[str] | str | None) -> list[str]:
    """Map requested provider names to the onnxruntime names available here, keeping the order.

    requested: short names ("tensorrt", "cuda", "cpu"; case-insensitive) or full onnxruntime names;
    a string is split on commas; None means ["cpu"]. Unavailable ones are dropped with a log line.
    Raises ConfigError for an unknown name, ProviderError when none of them is available.
    """
    if requested is None:
        requested = ["cpu"]
    elif isinstance(requested, str):
        requested = [part for part in requested.split(",") if part.strip()]
    if not requested:
        raise ConfigError(expected_got("execution providers", "at least one name, e.g. ['cpu']", "an empty list"))
    known = _known_providers()
    wanted: list[str] = []
    for name in requested:
        if not isinstance(name, str):
            raise ConfigError(expected_got("execution provider", "a string", repr(name)))
        canonical = _canonical(name, known)
        if canonical in _REMOTE:
            raise ConfigError(expected_got("execution provider", "one that runs the model on this device (tensorrt, "
                                           "cuda, openvino, cpu, ...)", f"{name!r} ({canonical} sends requests to a "
                                           "remote endpoint and runs the bundle on the CPU here)",
                                           "Request cpu explicitly."))
        if canonical not in wanted:
            wanted.append(canonical)
    available = list(ort.get_available_providers())
    chosen = [name for name in wanted if name in available]
    if not chosen:
        raise ProviderError(expected_got(
            "execution providers", f"one of the requested {wanted} to be available", f"only {available} available",
            "Install the onnxruntime build for your accelerator (e.g. onnxruntime-gpu), "
            "or add 'cpu' to the list to allow CPU explicitly."))
    for name in wanted:
        if name not in available:
            logger.warning("execution provider %s requested but not available in this onnxruntime (%s); skipping it",
                           name, ", ".join(available))
    return chosen


# ----------------------------------------------------------------------------- voting (pure numpy)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax; float32 out, same shape, sums to 1 along `axis`."""
    x = np.asarray(logits, dtype=np.float32)
    x = x - np.max(x, axis=axis, keepdims=True)  # subtract the max so exp never overflows
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


def _check_probs(member_probs: np.ndarray) -> np.ndarray:
    p = np.asarray(member_probs, dtype=np.float32)
    if p.ndim != 3 or 0 in p.shape:
        raise InputError(expected_got("member probabilities", "a non-empty array [M, N, C]", f"shape {p.shape}"))
    return p


def majority_vote(member_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Majority vote over members.

    member_probs: float [M, N, C] per-member class probabilities.
    Returns class_ids int64 [N], confidence float32 [N] (mean probability of the winner across
    members), votes int64 [N, M] (each member's argmax). Ties on the vote count go to the class
    with the highest mean probability, then to the lowest class id.
    """
    p = _check_probs(member_probs)
    num_classes = p.shape[2]
    votes = np.argmax(p, axis=2).T  # [N, M]; argmax takes the lowest id on a member's own tie
    counts = np.zeros((p.shape[1], num_classes), dtype=np.int64)  # [N, C]
    np.add.at(counts, (np.arange(p.shape[1])[:, None], votes), 1)
    mean = p.mean(axis=0)  # [N, C]
    tied = counts == counts.max(axis=1, keepdims=True)
    score = np.where(tied, mean, -np.inf)
    class_ids = np.argmax(score, axis=1)  # first max -> lowest class id among equal means
    confidence = mean[np.arange(p.shape[1]), class_ids]
    return class_ids.astype(np.int64), confidence.astype(np.float32), votes.astype(np.int64)


def soft_vote(member_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft vote: argmax of the mean probability. Same returns as `majority_vote`."""
    p = _check_probs(member_probs)
    mean = p.mean(axis=0)
    class_ids = np.argmax(mean, axis=1)
    confidence = mean[np.arange(p.shape[1]), class_ids]
    votes = np.argmax(p, axis=2).T
    return class_ids.astype(np.int64), confidence.astype(np.float32), votes.astype(np.int64)


VOTES = {VoteRule.MAJORITY: majority_vote, VoteRule.SOFT: soft_vote}


def vote(member_probs: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the vote rule named in the manifest ("majority" or "soft")."""
    if rule not in VoteRule.values():
        raise ConfigError(expected_got("vote rule", " or ".join(VoteRule.values()), repr(rule)))
    return VOTES[VoteRule(rule)](member_probs)


# ----------------------------------------------------------------------------- engine


class Engine:
    """One onnxruntime session per member, or one for the fused graph.

    bundle: a loaded Bundle. providers: see `resolve_providers` (default ["cpu"]).
    use_fused: None -> the fused graph when the bundle has one. spin=False: onnxruntime's worker threads
    sleep between calls rather than spin-wait (they otherwise keep a core busy for a while after each
    call, which slows whatever shares it: the decode, the defense). strict: a session whose first active
    provider is not the first requested available one raises ProviderError (False: log a warning).
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        providers: Sequence[str] | str | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        use_fused: bool | None = None,
        strict: bool = True,
        provider_options: dict[str, dict[str, Any]] | None = None,
        spin: bool = True,
    ) -> None:
        self.bundle = bundle
        self.requested_providers = resolve_providers(providers)
        # options per provider (short or full name), e.g. {"tensorrt": {"trt_fp16_enable": True}}
        known = _known_providers()
        by_name = {_canonical(name, known): dict(opts) for name, opts in (provider_options or {}).items()}
        self.provider_options = [{k: str(v) for k, v in by_name.get(p, {}).items()} for p in self.requested_providers]
        if use_fused and bundle.fused is None:
            raise ConfigError(expected_got("use_fused", "a bundle with a fused graph",
                                           f"bundle {bundle.name!r} without one", "Pass use_fused=False or None."))
        self.use_fused = bundle.fused is not None if use_fused is None else bool(use_fused)
        options = ort.SessionOptions()
        for attr, value in (("intra_op_num_threads", intra_op_threads), ("inter_op_num_threads", inter_op_threads)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ConfigError(expected_got(attr, "an integer >= 0 (0 = onnxruntime's choice)", repr(value)))
                setattr(options, attr, value)
        if not spin:  # worker threads sleep between calls instead of spin-waiting (a CPU shared with decode/defense)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        fused = bundle.fused if self.use_fused else None
        if fused is not None:
            self._sessions = [self._open(bundle, fused.file, options, "member_logits", strict)]
        else:
            self._sessions = [self._open(bundle, m.file, options, "logits", strict) for m in bundle.members]
        self.active_providers: tuple[str, ...] = tuple(self._sessions[0].get_providers())
        # A fused graph takes [N,3,H,W] (shared input) or [M,N,3,H,W] (per-member input).
        self.fused_per_member = self.use_fused and len(self._sessions[0].get_inputs()[0].shape) == 5
        logger.info("bundle %r runs on %s (%s, active providers: %s)", bundle.name, self.active_providers[0],
                    "fused graph" if self.use_fused else f"{len(self._sessions)} member sessions",
                    ", ".join(self.active_providers))

    def _open(self, bundle: Bundle, rel: str, options: ort.SessionOptions, output: str,
              strict: bool) -> ort.InferenceSession:
        """Create one session from the bytes load_bundle verified (the file when hashes were not checked),
        check its input/output names and input shape, and verify the provider that runs."""
        path = bundle.root / rel
        model = bundle.blobs.get(rel)
        try:
            session = ort.InferenceSession(model if model is not None else str(path), sess_options=options,
                                           providers=self.requested_providers,
                                           provider_options=self.provider_options)
        except Exception as exc:  # onnxruntime raises its own exception types for bad graphs/providers
            raise BundleError(f"{path}: onnxruntime could not load it ({type(exc).__name__}: {exc}). "
                              "Re-export the bundle, or check the requested providers.") from exc
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if inputs != ["input"] or output not in outputs:
            raise BundleError(expected_got(str(path), f"input 'input' and output {output!r}",
                                           f"inputs {inputs}, outputs {outputs}", "Re-export the bundle."))
        shape = list(session.get_inputs()[0].shape)
        want = [3, bundle.input.height, bundle.input.width]
        if len(shape) not in (4, 5) or any(isinstance(d, int) and d != w for d, w in zip(shape[-3:], want)):
            raise BundleError(expected_got(f"{path.name} input shape", f"[N, {want[0]}, {want[1]}, {want[2]}] as the "
                                           "manifest's input says", shape, "Re-export the bundle."))
        active = list(session.get_providers())
        expected = self.requested_providers[0]
        if not active or active[0] != expected:
            msg = expected_got(f"{path.name}: execution provider", expected, f"{active[0] if active else 'none'} "
                               f"(active {active})", "The provider failed to initialise; check its libraries "
                               "(CUDA/cuDNN/TensorRT versions) or request the provider that works.")
            if strict:
                raise ProviderError(msg)
            logger.warning("%s", msg)
        return session

    @property
    def num_members(self) -> int:
        return len(self.bundle.members)

    def _check_input(self, x: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """float32 C-contiguous [N,3,H,W] (shared) or [M,N,3,H,W] (one batch per member)."""
        arr = np.ascontiguousarray(np.stack(x) if isinstance(x, (list, tuple)) else x, dtype=np.float32)
        h, w, m = self.bundle.input.height, self.bundle.input.width, self.num_members
        ok4 = arr.ndim == 4 and arr.shape[1:] == (3, h, w)
        ok5 = arr.ndim == 5 and arr.shape[0] == m and arr.shape[2:] == (3, h, w)
        if not (ok4 or ok5) or arr.shape[-4] == 0:
            raise InputError(expected_got("engine input", f"float32 [N,3,{h},{w}] or [{m},N,3,{h},{w}] with N >= 1",
                                          f"shape {arr.shape}"))
        return arr

    def run(self, batch_per_member: np.ndarray | Sequence[np.ndarray], *,
            session_ms: list[float] | None = None) -> np.ndarray:
        """Run every member. Input: [N,3,H,W] shared by all members, or [M,N,3,H,W] / a list of
        M arrays [N,3,H,W], one per member (manifest order). Returns logits float32 [M, N, C].
        session_ms: a list the wall time of each session call is appended to, in ms (one entry for the
        fused graph, one per member otherwise; `bench` reports them)."""
        x = self._check_input(batch_per_member)
        if self.use_fused:
            if self.fused_per_member and x.ndim == 4:
                x = np.ascontiguousarray(np.broadcast_to(x, (self.num_members, *x.shape)))
            elif not self.fused_per_member and x.ndim == 5:
                raise InputError(expected_got("fused engine input", "one shared batch [N,3,H,W]",
                                              f"per-member batches {x.shape}",
                                              "This fused graph takes a shared input."))
            logits = self._timed(session_ms, self._sessions[0], "member_logits", x)
        else:
            logits = np.stack([self._timed(session_ms, s, "logits", x[i] if x.ndim == 5 else x)
                               for i, s in enumerate(self._sessions)])
        n = x.shape[-4]
        if logits.shape != (self.num_members, n, self.bundle.num_classes):
            want = f"logits [{self.num_members}, {n}, {self.bundle.num_classes}] (members, batch, manifest classes)"
            raise BundleError(expected_got("model output", want, f"shape {logits.shape}",
                                           "The graphs do not match the manifest; re-export the bundle."))
        if not np.isfinite(logits).all():  # NaN/inf would become NaN confidences and invalid JSON downstream
            bad = [self.bundle.members[i].name for i in range(len(logits)) if not np.isfinite(logits[i]).all()]
            raise BundleError(expected_got("model output", "finite logits", f"NaN or inf from member(s) {bad}",
                                           "The graph or its input normalization is broken; re-export the bundle."))
        return np.asarray(logits, dtype=np.float32)

    @staticmethod
    def _timed(session_ms: list[float] | None, session: ort.InferenceSession, output: str, x: np.ndarray) -> np.ndarray:
        if session_ms is None:
            return session.run([output], {"input": x})[0]
        t0 = time.perf_counter()
        out = session.run([output], {"input": x})[0]
        session_ms.append((time.perf_counter() - t0) * 1000.0)
        return out

    def warmup(self, n: int = 2, batch: int = 1) -> None:
        """Run `n` dummy batches of zeros so the first real call pays no lazy initialisation."""
        h, w = self.bundle.input.height, self.bundle.input.width
        shape = (self.num_members, batch, 3, h, w) if self.fused_per_member else (batch, 3, h, w)
        dummy = np.zeros(shape, dtype=np.float32)
        for _ in range(n):
            self.run(dummy)
