"""ONNX graph surgery for bundles: chain two graphs, fuse members into one graph, sort, label.

Everything here works on `onnx.ModelProto` in memory and is independent of how the graphs were
made (torch exporter, float16 conversion, int8 quantization), so the same code builds the fused and
in-graph-JPEG variants of fp32, fp16 and int8 members.

    composite = chain(jpeg_graph, member_graph)          # input "input" -> JPEG -> member -> "logits"
    fused = fuse([m0, m1, m2], per_member_input=True)     # input [M,N,3,H,W] -> "member_logits" [M,N,C]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_guard.errors import BundleError, expected_got

INPUT = "input"
LOGITS = "logits"
MEMBER_LOGITS = "member_logits"


@dataclass(frozen=True)
class _Part:
    """One graph renamed under a prefix, ready to be embedded in a bigger graph."""

    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    value_info: list[onnx.ValueInfoProto]
    functions: list[onnx.FunctionProto]
    input: str  # the (renamed) name of its single input edge
    output: str  # the (renamed) name of its single output edge
    model: onnx.ModelProto  # the renamed model (for shapes and opsets)


def _single_io(model: onnx.ModelProto, what: str) -> tuple[str, str]:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    outputs = [o.name for o in model.graph.output]
    if len(inputs) != 1 or len(outputs) != 1:
        raise BundleError(expected_got(f"{what} graph", "exactly one input and one output",
                                       f"inputs {inputs}, outputs {outputs}"))
    return inputs[0], outputs[0]


def _embed(model: onnx.ModelProto, prefix: str, what: str) -> _Part:
    """Rename every node, edge, initializer and function of `model` with `prefix`."""
    renamed = onnx.compose.add_prefix(model, prefix)
    src, dst = _single_io(renamed, what)
    g = renamed.graph
    return _Part(list(g.node), list(g.initializer), list(g.value_info), list(renamed.functions), src, dst, renamed)


def _opsets(models: Sequence[onnx.ModelProto]) -> list[onnx.OperatorSetIdProto]:
    """Union of the models' opset imports, the highest version per domain."""
    best: dict[str, int] = {}
    for m in models:
        for op in m.opset_import:
            best[op.domain] = max(best.get(op.domain, 0), op.version)
    return [helper.make_opsetid(domain, version) for domain, version in sorted(best.items())]


def _model(graph: onnx.GraphProto, parts: Sequence[_Part], sources: Sequence[onnx.ModelProto]) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=_opsets(sources))
    model.ir_version = max(m.ir_version for m in sources)
    model.producer_name = sources[0].producer_name or "edgeguard"
    model.producer_version = sources[0].producer_version
    for part in parts:
        model.functions.extend(part.functions)
    return model


def chain(first: onnx.ModelProto, second: onnx.ModelProto, *, output_name: str = LOGITS) -> onnx.ModelProto:
    """One graph computing second(first(x)): input "input", output `output_name`.

    first: e.g. the JPEG graph (images [N,3,H,W] -> images [N,3,H,W]); second: a member graph.
    """
    a, b = _embed(first, "jpeg_", "first"), _embed(second, "net_", "second")
    in_vi = onnx.ValueInfoProto()
    in_vi.CopyFrom(next(i for i in a.model.graph.input if i.name == a.input))
    in_vi.name = INPUT
    out_vi = onnx.ValueInfoProto()
    out_vi.CopyFrom(b.model.graph.output[0])
    out_vi.name = output_name
    nodes = [helper.make_node("Identity", [INPUT], [a.input], name="chain_in"), *a.nodes,
             helper.make_node("Identity", [a.output], [b.input], name="chain_mid"), *b.nodes,
             helper.make_node("Identity", [b.output], [output_name], name="chain_out")]
    graph = helper.make_graph(nodes, f"{first.graph.name}+{second.graph.name}", [in_vi], [out_vi],
                              initializer=a.initializers + b.initializers, value_info=a.value_info + b.value_info)
    return _model(graph, [a, b], [first, second])


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "N") for d in vi.type.tensor_type.shape.dim]


def fuse(members: Sequence[onnx.ModelProto], *, per_member_input: bool) -> onnx.ModelProto:
    """All member graphs in one graph with output "member_logits" float32 [M, N, C].

    per_member_input: True -> input "input" [M, N, 3, H, W], member i reads input[i] (each member
    its own CPU preprocessing, manifest order); False -> input [N, 3, H, W] shared by every member.
    """
    if not members:
        raise BundleError(expected_got("members to fuse", "at least one graph", "none"))
    parts = [_embed(m, f"m{i}_", f"member {i}") for i, m in enumerate(members)]
    inits: list[onnx.TensorProto] = [numpy_helper.from_array(np.array([0], np.int64), "fuse_axis0")]
    nodes: list[onnx.NodeProto] = []
    stacked = []
    for i, part in enumerate(parts):
        if per_member_input:
            inits.append(numpy_helper.from_array(np.array(i, np.int64), f"fuse_index{i}"))
            nodes.append(helper.make_node("Gather", [INPUT, f"fuse_index{i}"], [part.input], axis=0,
                                          name=f"fuse_pick{i}"))
        else:
            nodes.append(helper.make_node("Identity", [INPUT], [part.input], name=f"fuse_in{i}"))
        nodes.extend(part.nodes)
        nodes.append(helper.make_node("Unsqueeze", [part.output, "fuse_axis0"], [f"fuse_out{i}"], name=f"fuse_unsq{i}"))
        stacked.append(f"fuse_out{i}")
        inits.extend(part.initializers)
    nodes.append(helper.make_node("Concat", stacked, [MEMBER_LOGITS], axis=0, name="fuse_concat"))
    first_in = next(i for i in parts[0].model.graph.input if i.name == parts[0].input)
    in_shape = _dims(first_in)
    in_shape[0] = "N"
    out_shape = _dims(parts[0].model.graph.output[0])
    out_shape[0] = "N"
    m = len(members)
    graph = helper.make_graph(
        nodes, "edgeguard_fused",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ([m] if per_member_input else []) + in_shape)],
        [helper.make_tensor_value_info(MEMBER_LOGITS, TensorProto.FLOAT, [m] + out_shape)],
        initializer=inits, value_info=[v for p in parts for v in p.value_info],
    )
    return _model(graph, parts, list(members))


def toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy whose nodes are in topological order (onnx.checker requires it).

    Some converters (e.g. the float16 converter) append Cast nodes at the end of the node list.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({n for node in rest for n in node.input if n not in ready})[:5]
            raise BundleError(expected_got("ONNX graph", "an acyclic graph whose edges all have producers",
                                           f"{len(rest)} nodes waiting on {missing}"))
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
    return out


def set_metadata(model: onnx.ModelProto, props: Mapping[str, object]) -> onnx.ModelProto:
    """Set metadata_props (non-strings are stored as JSON), replacing keys already there."""
    keep = {p.key: p.value for p in model.metadata_props if p.key not in props}
    keep.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()})
    del model.metadata_props[:]
    helper.set_model_props(model, keep)
    return model


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    """metadata_props as a dict."""
    return {p.key: p.value for p in model.metadata_props}
