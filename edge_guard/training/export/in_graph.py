"""In-graph JPEG: a member graph that starts with DiffJPEG's exact-rounding forward pass.

The runtime then feeds raw images in [0, 1] and the ONNX graph does the JPEG round trip itself
(useful where libjpeg-turbo is not available, or to run the defense on the accelerator).

The JPEG step is exported on its own (`jpeg_graph`) and chained in front of the member graph
(`graph_ops.chain`), so the JPEG part always stays float32 (its 8-bit rounding steps need float32
precision) while the member part may be fp16 or int8.

DiffJPEG computes the DCT in floating point, libjpeg-turbo in integers (islow): the two agree on
most 8-bit pixel values but not all. Even torch and onnxruntime differ where a quantized coefficient
sits exactly on a rounding tie (e.g. a DC coefficient sum/8 that is k + 1/2 quantization steps,
about 1 block in 8 * Q_dc): their matmuls sum in different orders, so the tie goes either way and
the whole 8x8 block moves by Q/8 grey levels. The JPEG graph is therefore checked by its mean
difference to torch (<= MAX_MEAN_LEVEL_DIFF grey levels, which catches a broken export) and the
fraction of identical 8-bit values is recorded, rather than demanding exact equality.

Only jpeg-vaccinated (and unvaccinated) members can be in-graph: SLQ draws a random quality per
8x8 block and image, which a deterministic graph cannot reproduce exactly; such members are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from edge_guard.errors import BundleError, ConfigError, expected_got
from edge_guard.training.diffjpeg import DiffJPEG
from edge_guard.training.export import onnx_io
from edge_guard.training.export.graph_ops import chain

MAX_MEAN_LEVEL_DIFF = 1.0  # mean |onnxruntime - torch| in 8-bit grey levels; ties move a few blocks


@dataclass(frozen=True)
class JpegGraph:
    """The exported JPEG step at one quality and how closely onnxruntime matches torch."""

    model: onnx.ModelProto
    quality: int
    exporter: str
    pixel_agreement: float  # fraction of 8-bit values identical, onnxruntime vs torch DiffJPEG
    mean_level_diff: float  # mean |difference| in 8-bit grey levels
    max_level_diff: float  # largest difference in 8-bit levels
    n_checked: int

    def to_dict(self) -> dict[str, object]:
        return {"quality": self.quality, "exporter": self.exporter, "pixel_agreement": self.pixel_agreement,
                "mean_level_diff": self.mean_level_diff, "max_level_diff": self.max_level_diff,
                "n_checked": self.n_checked}


class JpegThenModel(nn.Module):
    """DiffJPEG(quality) then `model`: raw float32 [N, 3, H, W] in [0, 1] -> logits [N, C]."""

    def __init__(self, model: nn.Module, quality: int, subsampling: str = "420") -> None:
        super().__init__()
        self.jpeg = DiffJPEG(quality, subsampling)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.jpeg(x))


def check_members(members: list[tuple[str, str]]) -> None:
    """(name, vaccination) pairs: refuse SLQ members, which cannot be in-graph exactly."""
    slq = [name for name, vaccination in members if vaccination == "slq"]
    if slq:
        raise ConfigError(expected_got(
            "--in-graph-jpeg members", "jpeg-vaccinated members (each runs JPEG at its own quality in the graph)",
            f"SLQ member(s) {slq}",
            "SLQ picks a random quality per 8x8 block and image, which a fixed graph cannot reproduce; "
            "export without --in-graph-jpeg (the runtime then runs SLQ on the CPU), or leave the SLQ member out."))


def jpeg_graph(quality: int, subsampling: str, random_x: np.ndarray, real_x: np.ndarray | None, *,
               exporter: str = "auto") -> JpegGraph:
    """Export DiffJPEG(quality) as a graph "input" [N,3,H,W] -> "output" [N,3,H,W], checked against torch.

    random_x, real_x: float32 [N, 3, H, W] in [0, 1] (real_x: 8-bit images / 255, may be None).
    """
    module = DiffJPEG(quality, subsampling).eval()
    x = np.concatenate([random_x] + ([real_x] if real_x is not None and len(real_x) else []))
    example = torch.from_numpy(x[:2].copy())
    order = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}[exporter]
    failures = []
    for name in order:
        try:
            model = onnx_io.export_graph(module, example, output_name="output", dynamo=name == "dynamo")
        except Exception as exc:  # any exporter failure: record it and try the next exporter
            failures.append(f"{name} exporter raised {type(exc).__name__}: {str(exc)[:300]}")
            continue
        ref = onnx_io.run_torch(module, x) * 255
        got = onnx_io.run_session(onnx_io.session(model), x, "output") * 255
        diff = np.abs(ref - got)
        if float(diff.mean()) <= MAX_MEAN_LEVEL_DIFF:
            return JpegGraph(model, quality, name, pixel_agreement=float(np.mean(diff < 0.5)),
                             mean_level_diff=float(diff.mean()), max_level_diff=float(diff.max()), n_checked=len(x))
        failures.append(f"{name} graph: differs from torch DiffJPEG by {diff.mean():.3f} grey levels on average "
                        f"(limit {MAX_MEAN_LEVEL_DIFF})")
    raise BundleError(f"in-graph JPEG at quality {quality}: " + "; ".join(failures))


def with_jpeg(jpeg: JpegGraph, member: onnx.ModelProto) -> onnx.ModelProto:
    """The member graph with the JPEG step in front: raw "input" [N,3,H,W] in [0,1] -> "logits"."""
    return chain(jpeg.model, member)
