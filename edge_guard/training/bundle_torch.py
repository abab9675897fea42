"""A shipped bundle as a torch attack target: its ONNX members run in torch, behind its own defense.

White-box attacks need gradients; a bundle holds ONNX graphs. `OnnxModule` interprets the small op
set EdgeGuard's exporter writes (Conv with batch norm folded in, Relu, MaxPool, Add/Sub/Mul/Div,
ReduceMean, GlobalAveragePool, Reshape, Flatten, Gemm, MatMul) with torch functions on the graph's own
weights, so the attacked function is the deployed one (parity with onnxruntime is checked by
`load_members`). An op outside that set is refused with its name. (onnx2torch would do this too, but
needs torchvision, which the training extra does not install.)

`bundle_target(path)` puts the members behind the manifest's defense with BPDA (the real codec forward,
identity or DiffJPEG backward) and EOT over SLQ draws, voting with the manifest's rule:

    target = bundle_target("export/gtsrb-shield", eot_samples=8)
    adv = APGDCE(target, eps=8/255)(images, labels)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import Tensor, nn

from edge_guard.bundle import Bundle, load_bundle
from edge_guard.errors import BundleError, expected_got
from edge_guard.spec import DefenseKind, Vaccination
from edge_guard.training.attacks import BPDAJPEG, BPDASLQ, EOT, DefendedModel

PARITY_TOLERANCE = 1e-4  # max |logit difference| torch vs onnxruntime, fp32


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv(x: Tensor, w: Tensor, b: Tensor | None = None, **a: Any) -> Tensor:
    pads = a.get("pads", [0, 0, 0, 0])
    if pads[:2] != pads[2:]:
        x, pads = F.pad(x, (pads[1], pads[3], pads[0], pads[2])), [0, 0, 0, 0]
    return F.conv2d(x, w, b, stride=a.get("strides", 1), padding=pads[:2], dilation=a.get("dilations", 1),
                    groups=a.get("group", 1))


def _maxpool(x: Tensor, **a: Any) -> Tensor:
    pads = a.get("pads", [0, 0, 0, 0])
    return F.max_pool2d(x, a["kernel_shape"], a.get("strides", a["kernel_shape"]), pads[:2],
                        a.get("dilations", 1), bool(a.get("ceil_mode", 0)))


def _gemm(x: Tensor, w: Tensor, b: Tensor | None = None, **a: Any) -> Tensor:
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    y = a.get("alpha", 1.0) * x @ w
    return y if b is None else y + a.get("beta", 1.0) * b


def _reduce_mean(x: Tensor, axes: Tensor | None = None, **a: Any) -> Tensor:
    dims = [int(d) for d in (axes.tolist() if axes is not None else a.get("axes", range(x.ndim)))]
    return x.mean(dim=dims, keepdim=bool(a.get("keepdims", 1)))


OPS: dict[str, Callable[..., Tensor]] = {
    "Conv": _conv, "Relu": lambda x: F.relu(x), "MaxPool": _maxpool, "Gemm": _gemm,
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "MatMul": torch.matmul,
    "ReduceMean": _reduce_mean, "GlobalAveragePool": lambda x: x.mean(dim=(2, 3), keepdim=True),
    "Reshape": lambda x, shape, **a: x.reshape([int(s) for s in shape.tolist()]),
    "Flatten": lambda x, **a: x.flatten(a.get("axis", 1)),
}


class OnnxModule(nn.Module):
    """An ONNX graph (one input, one output) evaluated with torch ops; weights are frozen buffers.

    Shape: as the graph, here float32 (N, 3, H, W) in [0, 1] -> logits (N, K).
    """

    def __init__(self, model: onnx.ModelProto, name: str = "member") -> None:
        super().__init__()
        graph = model.graph
        unknown = sorted({n.op_type for n in graph.node} - set(OPS))
        if unknown:
            raise BundleError(expected_got(f"ops of {name}", f"the exporter's op set ({', '.join(sorted(OPS))})",
                                           ", ".join(unknown), "Attack it through the runtime (edgeguard attack)."))
        self._names: dict[str, str] = {}
        for i, init in enumerate(graph.initializer):
            self.register_buffer(f"w{i}", torch.from_numpy(numpy_helper.to_array(init).copy()))
            self._names[init.name] = f"w{i}"
        self.nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in graph.node]
        self.input_name, self.output_name = graph.input[0].name, graph.output[0].name

    def forward(self, x: Tensor) -> Tensor:
        env: dict[str, Tensor] = {self.input_name: x}
        for op, inputs, outputs, attrs in self.nodes:
            args = [env[i] if i in env else getattr(self, self._names[i]) if i else None for i in inputs]
            env[outputs[0]] = OPS[op](*args, **attrs)
        return env[self.output_name]


def load_members(bundle: Bundle, *, check: bool = True) -> list[OnnxModule]:
    """The bundle's members as torch modules (manifest order), each checked against onnxruntime on random
    inputs (BundleError when a logit differs by more than PARITY_TOLERANCE)."""
    members = [OnnxModule(onnx.load_from_string(bundle.blobs.get(m.file) or bundle.member_path(m).read_bytes()),
                          m.name).eval() for m in bundle.members]
    if check:
        import onnxruntime as ort

        x = np.random.default_rng(0).random((4, 3, bundle.input.height, bundle.input.width), dtype=np.float32)
        for spec, module in zip(bundle.members, members):
            session = ort.InferenceSession(str(bundle.member_path(spec)), providers=["CPUExecutionProvider"])
            ref = session.run(None, {session.get_inputs()[0].name: x})[0]
            with torch.no_grad():
                diff = float(np.abs(module(torch.from_numpy(x)).numpy() - ref).max())
            if diff > PARITY_TOLERANCE:
                raise BundleError(expected_got(f"torch vs onnxruntime on {spec.name}",
                                               f"logits within {PARITY_TOLERANCE}", f"max difference {diff:.3g}"))
    return members


class Normalized(nn.Module):
    """[0, 1] images -> the manifest's input tensor ((x * 255 * scale - mean) / std) -> the member."""

    def __init__(self, member: nn.Module, scale: float, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.member, self.factor = member, 255.0 * scale
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.member((x * self.factor - self.mean) / self.std)


def bundle_target(path: str | Path | Bundle, *, eot_samples: int = 8, backward: str = "identity",
                  backend: str = "auto", seed: int = 0, members: Sequence[nn.Module] | None = None) -> nn.Module:
    """The bundle as an attack target: float32 (N, 3, H, W) in [0, 1] -> surrogate logits (log mean softmax).

    Per-member JPEG bundles: member i behind BPDA JPEG at its quality, an SLQ member behind BPDA SLQ
    averaged over `eot_samples` draws (EOT); shared SLQ: one draw for all, EOT over the whole ensemble;
    no defense: the members alone. `predict` answers with the manifest's vote (one SLQ draw).
    members: torch modules to use instead of the bundle's (e.g. already loaded).
    """
    bundle = path if isinstance(path, Bundle) else load_bundle(path)
    d, inp = bundle.defense, bundle.input
    if d.in_graph:
        raise BundleError(expected_got("defense.in_graph", "false (the JPEG step on the CPU)", True,
                                       "In-graph DiffJPEG bundles are attacked through the runtime."))
    mods = [Normalized(m, inp.scale, inp.mean, inp.std) for m in (members or load_members(bundle))]
    rng = np.random.default_rng(seed)
    opts = {"subsampling": str(d.subsampling), "backend": backend, "backward": backward}
    qualities = tuple(int(q) for q in d.qualities)
    if d.kind == DefenseKind.NONE:
        return DefendedModel(mods, None, vote=str(bundle.vote))
    if not d.per_member:
        shared = BPDAJPEG(qualities[0], **opts) if d.kind == DefenseKind.JPEG else BPDASLQ(qualities, rng=rng, **opts)
        target = DefendedModel(mods, shared, vote=str(bundle.vote))
        return EOT(target, eot_samples) if d.kind == DefenseKind.SLQ and eot_samples > 1 else target
    targets: list[nn.Module] = []
    defenses: list[nn.Module | None] = []
    for spec, mod in zip(bundle.members, mods):
        if spec.vaccination == Vaccination.JPEG:
            targets.append(mod)
            defenses.append(BPDAJPEG(int(spec.quality), **opts))  # type: ignore[arg-type]
        elif spec.vaccination == Vaccination.SLQ:
            slq = DefendedModel(mod, BPDASLQ(qualities, rng=rng, **opts))
            targets.append(EOT(slq, eot_samples) if eot_samples > 1 else slq)
            defenses.append(None)
        else:
            targets.append(mod)
            defenses.append(None)
    return DefendedModel(targets, defenses, vote=str(bundle.vote))
