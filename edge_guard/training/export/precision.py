"""Precision variants of an fp32 member graph: fp16 and int8.

fp16: onnxruntime's float16 converter (`onnxruntime.transformers.float16`, the same code as
onnxconverter-common's) with keep_io_types=True, so the graph still takes and returns float32;
nodes are re-sorted afterwards (the converter appends its Cast nodes at the end).
int8: `onnxruntime.quantization.quantize_static` in QDQ format, int8 weights (per output channel)
and int8 activations, calibrated (MinMax) on a few hundred training images. The input normalization
and the first convolution stay float32 (the usual first-layer exception): on a GTSRB compact_cnn
member, quantizing them cost 1.8 accuracy points (84.7% -> 82.9%), keeping them float cost 0.05.

`cpu_check` runs a variant once on onnxruntime's CPUExecutionProvider and reports whether it runs,
and how many Cast nodes onnxruntime had to insert for ops without a CPU kernel of that type (it then
computes them in float32: fp16 graphs run on CPU, but their speed-up is for GPU providers).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edge_guard.errors import BundleError, ConfigError, expected_got
from edge_guard.spec import Precision
from edge_guard.training.export.graph_ops import toposort

PRECISIONS = Precision.values()


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float16 weights and activations inside, float32 input and output (keep_io_types=True)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        half = convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:  # the converter raises plain exceptions on graphs it cannot handle
        raise BundleError(f"fp16 conversion failed ({type(exc).__name__}: {exc}). "
                          "Export with --precision fp32.") from exc
    half = toposort(half)
    onnx.checker.check_model(half)
    return half


class _Calibration:
    """onnxruntime CalibrationDataReader over float32 [N, 3, H, W] in batches of 32."""

    def __init__(self, x: np.ndarray, batch: int = 32) -> None:
        self._batches = iter([{"input": np.ascontiguousarray(x[i:i + batch], np.float32)}
                              for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def float_prefix(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes up to and including the first Conv (normalization + first layer), in graph order.
    Nodes without a name get one (quantize_static addresses nodes by name)."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"edgeguard_node{i}"
    names = []
    for node in model.graph.node:
        names.append(node.name)
        if node.op_type == "Conv":
            return names
    return []  # no convolution: quantize everything


def to_int8(model: onnx.ModelProto, calibration: np.ndarray) -> tuple[onnx.ModelProto, dict[str, object]]:
    """Static int8 quantization (QDQ, per-channel int8 weights, int8 activations, MinMax calibration),
    the nodes up to the first Conv kept float32. Returns (model, what was done, for the manifest).

    calibration: float32 [N, 3, H, W], the member's inputs as the runtime feeds them (a few hundred).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration.ndim != 4 or len(calibration) == 0:
        raise ConfigError(expected_got("int8 calibration images", "float32 [N, 3, H, W] with N >= 1",
                                       calibration.shape))
    with tempfile.TemporaryDirectory(prefix="edgeguard-int8-") as tmp:
        src, pre, dst = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, str(src))
        try:  # shape inference + graph cleanup, as onnxruntime recommends before quantizing
            quant_pre_process(str(src), str(pre))
            prepared = onnx.load(str(pre))
        except Exception:  # optional step: quantize the graph as exported when it fails
            prepared = model
        keep_float = float_prefix(prepared)
        onnx.save(prepared, str(pre))
        try:
            quantize_static(str(pre), str(dst), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_float)
        except Exception as exc:  # onnxruntime.quantization raises plain exceptions
            raise BundleError(f"int8 quantization failed ({type(exc).__name__}: {exc}). "
                              "Export with --precision fp32 or fp16.") from exc
        quantized = onnx.load(str(dst))
    onnx.checker.check_model(quantized)
    info = {"format": "QDQ", "weights": "int8 per channel", "activations": "int8", "calibration": "MinMax",
            "n_calibration": int(len(calibration)), "float_nodes": keep_float}
    return quantized, info


def convert(model: onnx.ModelProto, precision: str,
            calibration: np.ndarray | None = None) -> tuple[onnx.ModelProto, dict[str, object]]:
    """The `precision` variant of an fp32 member graph ("fp32": unchanged) and how it was made."""
    if precision == "fp32":
        return model, {}
    if precision == "fp16":
        return to_fp16(model), {"converter": "onnxruntime.transformers.float16", "keep_io_types": True}
    if precision == "int8":
        if calibration is None:
            raise ConfigError(expected_got("int8 calibration data", "training images (--data)", "none",
                                           "Pass --data so int8 can be calibrated on real images."))
        return to_int8(model, calibration)
    raise ConfigError(expected_got("precision", " | ".join(PRECISIONS), repr(precision)))


def cpu_check(model: onnx.ModelProto, sample: np.ndarray) -> dict[str, object]:
    """Run `model` once on onnxruntime CPU.

    Returns {"runs": bool, "error": str | None, "casts_added": int}: casts_added counts the Cast nodes
    onnxruntime inserted to run ops that have no kernel for the graph's type on CPU (it computes
    those in float32), e.g. fp16 ops on an x86 CPU: the graph runs, but not in fp16 throughout.
    """
    with tempfile.TemporaryDirectory(prefix="edgeguard-cpu-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only the casts it must add
        options.optimized_model_filepath = str(Path(tmp) / "cpu.onnx")
        try:
            sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            sess.run(None, {"input": np.ascontiguousarray(sample, np.float32)})
            placed = onnx.load(options.optimized_model_filepath)
        except Exception as exc:  # onnxruntime raises its own exception types
            return {"runs": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                    "casts_added": 0}
    def casts(m: onnx.ModelProto) -> int:
        return sum(n.op_type == "Cast" for n in m.graph.node)
    return {"runs": True, "error": None, "casts_added": casts(placed) - casts(model)}
