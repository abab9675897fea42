"""PyTorch -> ONNX conversion with a parity check against onnxruntime.

Opset: OPSET = 18, which both torch exporters support (torch.onnx.export with dynamo=True and the
TorchScript exporter, dynamo=False) and onnxruntime >= 1.17 runs. Every graph has input "input"
float32 [N, 3, H, W] with a dynamic batch axis N.

Exporter choice ("auto"): the dynamo exporter first; if it raises, or the graph it writes fails the
parity check, the TorchScript exporter. The exporter that produced each graph is reported.

Parity: onnxruntime (CPUExecutionProvider) against PyTorch on random inputs and on real inputs:
max |logit difference| <= tolerance (1e-4 for fp32) and the same argmax on every checked image.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edge_guard.errors import BundleError, ConfigError, expected_got
from edge_guard.training.choices import Exporter

OPSET = 18
EXPORTERS = Exporter.values()
PARITY_TOLERANCE = 1e-4  # max |logit difference| between onnxruntime and torch, fp32
_BATCH = 256  # images per inference call when checking (bounded memory)


@dataclass(frozen=True)
class Parity:
    """onnxruntime vs torch on the same inputs. n_random/n_real: images of each kind checked."""

    max_abs_diff: float
    n_random: int
    n_real: int
    argmax_agreement: float  # fraction of checked images with the same predicted class
    tolerance: float

    @property
    def n_checked(self) -> int:
        return self.n_random + self.n_real

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.argmax_agreement == 1.0

    def to_dict(self) -> dict[str, object]:
        return {"max_abs_diff": self.max_abs_diff, "n_checked": self.n_checked, "n_random": self.n_random,
                "n_real": self.n_real, "argmax_agreement": self.argmax_agreement, "tolerance": self.tolerance,
                "passed": self.passed}


@dataclass(frozen=True)
class Converted:
    """An exported, checked graph: the model, which exporter made it, its parity, and why a fallback ran."""

    model: onnx.ModelProto
    exporter: str  # "dynamo" | "torchscript"
    parity: Parity
    fallback_reason: str | None = None


# ----------------------------------------------------------------------------- running


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU onnxruntime session for an in-memory model (BundleError if onnxruntime rejects it)."""
    try:
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BundleError(f"onnxruntime cannot load the exported graph ({type(exc).__name__}: {exc}).") from exc


def run_session(sess: ort.InferenceSession, x: np.ndarray, output: str = "logits") -> np.ndarray:
    """Run `sess` on float32 x [N, ...] in batches of 256; returns its `output` concatenated."""
    outs = [sess.run([output], {"input": np.ascontiguousarray(x[i:i + _BATCH], np.float32)})[0]
            for i in range(0, len(x), _BATCH)]
    return np.concatenate(outs)


@torch.no_grad()
def run_torch(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """Run an eval-mode module on float32 x [N, 3, H, W] in batches of 256; returns float32 numpy."""
    outs = [module(torch.from_numpy(np.ascontiguousarray(x[i:i + _BATCH], np.float32))).float().numpy()
            for i in range(0, len(x), _BATCH)]
    return np.concatenate(outs)


def measure_parity(module: nn.Module, sess: ort.InferenceSession, random_x: np.ndarray, real_x: np.ndarray | None,
                   tolerance: float = PARITY_TOLERANCE) -> Parity:
    """Compare logits of torch `module` and onnxruntime `sess` on random and (optional) real inputs."""
    xs = [random_x] + ([real_x] if real_x is not None and len(real_x) else [])
    x = np.concatenate(xs)
    ref, got = run_torch(module, x), run_session(sess, x)
    if ref.shape != got.shape:
        raise BundleError(expected_got("exported graph output shape", ref.shape, got.shape))
    return Parity(
        max_abs_diff=float(np.max(np.abs(ref - got))) if ref.size else 0.0,
        n_random=len(random_x), n_real=len(x) - len(random_x),
        argmax_agreement=float(np.mean(ref.argmax(1) == got.argmax(1))) if len(x) else 1.0,
        tolerance=tolerance,
    )


# ----------------------------------------------------------------------------- exporting


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' warnings, log lines and progress prints (they go to stdout)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "torch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_graph(module: nn.Module, example: torch.Tensor, *, output_name: str, dynamo: bool) -> onnx.ModelProto:
    """Export `module` (eval mode) with input "input" [N, ...] (dynamic N) and one output `output_name`.

    example: float32 tensor with batch >= 2 (a batch of 1 would let the tracer specialise N).
    Runs onnx.checker (full check, with shape inference) on the result.
    """
    module = module.eval()
    with tempfile.TemporaryDirectory(prefix="edgeguard-onnx-") as tmp, _quiet():
        path = Path(tmp) / "graph.onnx"
        kwargs: dict[str, object] = {"input_names": ["input"], "output_names": [output_name], "opset_version": OPSET}
        if dynamo:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=65536)},)
            kwargs["external_data"] = False
            kwargs["verbose"] = False
        else:
            kwargs["dynamic_axes"] = {"input": {0: "batch"}, output_name: {0: "batch"}}
        torch.onnx.export(module, (example,), str(path), dynamo=dynamo, **kwargs)
        model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return model


def convert(module: nn.Module, example: torch.Tensor, random_x: np.ndarray, real_x: np.ndarray | None, *,
            exporter: str = "auto", output_name: str = "logits", what: str = "model",
            tolerance: float = PARITY_TOLERANCE) -> Converted:
    """Export `module` to ONNX and check its parity; fall back from dynamo to TorchScript if needed.

    random_x, real_x: float32 [N, 3, H, W] inputs for the parity check (real_x may be None).
    Raises BundleError with the numbers when no exporter gives a graph that passes parity.
    """
    if exporter not in EXPORTERS:
        raise ConfigError(expected_got("exporter", " | ".join(EXPORTERS), repr(exporter)))
    order = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}[exporter]
    failures: list[str] = []
    for name in order:
        try:
            model = export_graph(module, example, output_name=output_name, dynamo=name == "dynamo")
        except Exception as exc:  # any exporter failure: record it and try the next exporter
            first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
            failures.append(f"{name} exporter raised {type(exc).__name__}: {first_line}")
            continue
        parity = measure_parity(module, session(model), random_x, real_x, tolerance)
        if parity.passed:
            return Converted(model, name, parity, "; ".join(failures) or None)
        failures.append(f"{name} graph failed parity: max |logit diff| {parity.max_abs_diff:.3g} "
                        f"(limit {tolerance:g}), argmax agreement {parity.argmax_agreement:.4f} "
                        f"on {parity.n_checked} images")
    raise BundleError(f"{what}: could not export an ONNX graph that matches PyTorch: " + "; ".join(failures)
                      + ". Check the model for ops that onnxruntime computes differently from PyTorch.")
