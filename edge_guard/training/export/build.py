"""Build a bundle's graphs: fp32 members with parity checks, the fused graph, precision variants.

Every graph is checked as it is made: members against PyTorch (`onnx_io.convert`), the fused graph
against the member graphs, a precision variant against its fp32 graph. Inputs for the checks are
random images plus validation images preprocessed the way the runtime feeds each member.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

from edge_guard.errors import BundleError, expected_got
from edge_guard.spec import DefenseSpec
from edge_guard.training.export import in_graph, onnx_io, precision
from edge_guard.training.export.graph_ops import fuse
from edge_guard.training.export.measure import agreement, member_tensors, to_input
from edge_guard.training.run import Run


@dataclass
class MemberGraphs:
    """Per member: the plain graph (no JPEG) and the graph shipped (JPEG chained in front when in-graph)."""

    plain: dict[str, onnx.ModelProto] = field(default_factory=dict)
    shipped: dict[str, onnx.ModelProto] = field(default_factory=dict)
    jpeg: dict[int, in_graph.JpegGraph] = field(default_factory=dict)  # quality -> JPEG graph
    metrics: dict[str, Any] = field(default_factory=dict)


def in_graph_member(defense: DefenseSpec, vaccination: str) -> bool:
    """Does this member's graph contain its JPEG step?"""
    return defense.in_graph and vaccination == "jpeg"


def export_members(run: Run, defense: DefenseSpec, real: np.ndarray | None, random_x: np.ndarray, *,
                   exporter: str, seed: int, step: Any) -> MemberGraphs:
    """fp32 ONNX graph of every member (parity-checked), with the JPEG graph chained in when in-graph.

    real: uint8 (N, H, W, 3) validation images or None; random_x: float32 [K, 3, H, W] in [0, 1];
    step: the progress context (`step("what")`).
    """
    plain_in = member_tensors(run.members, defense, real, seed, graph_input=False)
    raw = to_input(real) if real is not None else None
    example = torch.from_numpy(random_x[:2].copy())
    g = MemberGraphs(metrics={"parity": {}, "exporter": {}, "exporter_fallback": {}})
    for m in run.members:
        with step(f"member {m.name}: ONNX + parity"):
            conv = onnx_io.convert(m.model, example, random_x, plain_in[m.name], exporter=exporter,
                                   what=f"member {m.name!r}")
        g.plain[m.name] = g.shipped[m.name] = conv.model
        g.metrics["parity"][m.name] = conv.parity.to_dict()
        g.metrics["exporter"][m.name] = conv.exporter
        if conv.fallback_reason:
            g.metrics["exporter_fallback"][m.name] = conv.fallback_reason
        if in_graph_member(defense, m.vaccination):
            q = int(m.quality)  # type: ignore[arg-type]  # jpeg members have a quality
            if q not in g.jpeg:
                with step(f"JPEG q{q} graph"):
                    g.jpeg[q] = in_graph.jpeg_graph(q, str(defense.subsampling), random_x, raw, exporter=exporter)
            g.shipped[m.name] = in_graph.with_jpeg(g.jpeg[q], conv.model)
            torch_composite = in_graph.JpegThenModel(m.model, q, str(defense.subsampling)).eval()
            composite = onnx_io.measure_parity(torch_composite, onnx_io.session(g.shipped[m.name]), random_x, raw)
            # Recorded, not gated at 1e-4: torch and onnxruntime may round a JPEG tie differently (see in_graph).
            g.metrics["parity"][m.name]["in_graph"] = {k: v for k, v in composite.to_dict().items() if k != "passed"}
    if g.jpeg:
        g.metrics["in_graph_jpeg_graphs"] = {f"q{q}": jg.to_dict() for q, jg in g.jpeg.items()}
    if not g.metrics["exporter_fallback"]:
        del g.metrics["exporter_fallback"]
    return g


def fuse_checked(run: Run, defense: DefenseSpec, graphs: dict[str, onnx.ModelProto],
                 sample: np.ndarray) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Fuse the member graphs; check the fused output equals theirs on uint8 (N, H, W, 3) `sample` images.

    The fused input is [M, N, 3, H, W] when each member has its own CPU preprocessing, else [N, 3, H, W].
    """
    per_member_input = defense.per_member and not defense.in_graph
    fused = fuse([graphs[m.name] for m in run.members], per_member_input=per_member_input)
    try:
        onnx.checker.check_model(fused, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise BundleError(f"the fused graph is not valid ONNX ({exc}). Export without --fused.") from exc
    views = list(member_tensors(run.members, defense, sample, 0, graph_input=True).values())
    x = np.stack(views) if per_member_input else views[0]  # shared: every member's view is the same
    got = onnx_io.session(fused).run(["member_logits"], {"input": x})[0]
    ref = np.stack([onnx_io.run_session(onnx_io.session(graphs[m.name]), v) for m, v in zip(run.members, views)])
    if got.shape != ref.shape:
        raise BundleError(expected_got("fused graph output", f"member_logits {ref.shape}", got.shape))
    check = {"max_abs_diff": float(np.abs(got - ref).max()),
             "argmax_agreement": agreement(got.argmax(-1), ref.argmax(-1)),
             "n_checked": int(sample.shape[0]), "input": "[M,N,3,H,W]" if per_member_input else "[N,3,H,W]"}
    if check["max_abs_diff"] > onnx_io.PARITY_TOLERANCE or check["argmax_agreement"] != 1.0:
        raise BundleError(f"fused graph disagrees with the member graphs: max |logit diff| "
                          f"{check['max_abs_diff']:.3g}, argmax agreement {check['argmax_agreement']:.4f}. "
                          "Export without --fused.")
    return fused, check


def convert_members(run: Run, defense: DefenseSpec, g: MemberGraphs, prec: str, calibration: np.ndarray | None,
                    probe: np.ndarray, *, seed: int, step: Any) -> tuple[MemberGraphs, dict[str, Any]]:
    """The `prec` variant of every plain member graph (the JPEG part stays fp32), checked against fp32.

    calibration, probe: uint8 (N, H, W, 3) training / validation images. Returns the variant graphs
    and what was found: parity_vs_fp32 per member, cpu_casts_added, cpu_errors (ops without CPU kernels).
    """
    calib = member_tensors(run.members, defense, calibration, seed, graph_input=False)
    check_in = member_tensors(run.members, defense, probe, seed, graph_input=False)
    out = MemberGraphs(jpeg=g.jpeg)
    info: dict[str, Any] = {"conversion": {}, "parity_vs_fp32": {}, "cpu_errors": {}, "cpu_casts_added": {}}
    for m in run.members:
        with step(f"member {m.name}: {prec}"):
            v, info["conversion"][m.name] = precision.convert(g.plain[m.name], prec, calib[m.name])
            x = check_in[m.name]
            cpu = precision.cpu_check(v, x[:2])
            info["cpu_casts_added"][m.name] = cpu["casts_added"]
            if not cpu["runs"]:
                info["cpu_errors"][m.name] = cpu["error"]
            else:
                ref = onnx_io.run_session(onnx_io.session(g.plain[m.name]), x)
                got = onnx_io.run_session(onnx_io.session(v), x)
                info["parity_vs_fp32"][m.name] = {"max_abs_diff": float(np.abs(ref - got).max()), "n_checked": len(x),
                                                  "argmax_agreement": agreement(ref.argmax(1), got.argmax(1))}
            out.plain[m.name] = out.shipped[m.name] = v
            if in_graph_member(defense, m.vaccination):
                out.shipped[m.name] = in_graph.with_jpeg(g.jpeg[int(m.quality)], v)  # type: ignore[arg-type]
    info["cpu_runnable"] = not info["cpu_errors"]
    if not info["cpu_errors"]:
        del info["cpu_errors"]
    return out, info
