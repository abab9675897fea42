"""Horizontal fusion: M members of the same architecture as one graph of M-times-wider, grouped operators.

    graph = group([m0, m1, m2, m3])     # input [M,N,3,H,W] -> "member_logits" [M,N,C], like the fused graph

`graph_ops.fuse` puts the members side by side: M copies of every operator, called one after the other.
Here layer k of every member becomes one operator: convolutions' weights are stacked along the output
channels with `group` multiplied by M (each member's slice of channels sees only its own), per-channel
constants (normalization, batch norm) are concatenated, element-wise operators and pooling act on the
wide tensors unchanged, and the last linear layer is one block-diagonal Gemm. At batch 1 that is a
quarter of the operator calls with 4x wider ones (benchmarks/ensemble_inference.py measures it against
the side-by-side graph). Members must have the same operators in the same order with the same attributes;
anything else, or an operator not in SUPPORTED, raises BundleError, and callers keep `fuse`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_guard.errors import BundleError, expected_got

INPUT, LOGITS, MEMBER_LOGITS = "input", "logits", "member_logits"
SUPPORTED = ("Sub", "Div", "Mul", "Conv", "BatchNormalization", "Relu", "Add", "MaxPool", "AveragePool",
             "GlobalAveragePool", "ReduceMean", "Reshape", "Flatten", "Gemm")


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _check_same(members: Sequence[onnx.ModelProto]) -> None:
    first = members[0].graph.node
    for i, m in enumerate(members[1:], 1):
        ops = m.graph.node
        if [n.op_type for n in ops] != [n.op_type for n in first] or any(
                _attrs(a) != _attrs(b) for a, b in zip(ops, first)):
            raise BundleError(expected_got(f"member {i}'s graph", "the operators and attributes of member 0",
                                           "a different graph", "Members of different architectures cannot be "
                                           "grouped."))
    bad = sorted({n.op_type for n in first} - set(SUPPORTED))
    if bad:
        raise BundleError(expected_got("operators to group", ", ".join(SUPPORTED), ", ".join(bad)))


def _block_diagonal(weights: list[np.ndarray], trans_b: bool) -> np.ndarray:
    """Gemm weights [C, K] (transB) or [K, C] per member -> one [M*C, M*K] (or [M*K, M*C]) block-diagonal."""
    blocks = [w if trans_b else w.T for w in weights]
    c, k = blocks[0].shape
    out = np.zeros((len(blocks) * c, len(blocks) * k), blocks[0].dtype)
    for m, w in enumerate(blocks):
        out[m * c:(m + 1) * c, m * k:(m + 1) * k] = w
    return out if trans_b else out.T


def _constant(node: onnx.NodeProto, slot: int, values: list[np.ndarray], attrs: dict, m: int) -> np.ndarray:
    """The grouped form of input `slot` of `node`, a constant with one value per member (see the docstring)."""
    op, v0 = node.op_type, values[0]
    if op == "Conv" or op == "BatchNormalization":
        return np.concatenate(values, axis=0)  # weights [Cout, Cin/g, k, k], biases and BN vectors [C]
    if op == "Gemm":
        return _block_diagonal(values, bool(attrs.get("transB", 0))) if slot == 1 else np.concatenate(values)
    if op == "Reshape":  # flatten to [N, K]: now [N, M*K]
        if v0.shape != (2,) or v0[0] not in (-1, 0):
            raise BundleError(expected_got("Reshape to group", "a flatten to [N, K]", v0.tolist()))
        return np.array([v0[0], m * int(v0[1])], v0.dtype)
    if op == "ReduceMean" or all(np.array_equal(v0, v) for v in values[1:]) and (v0.ndim < 2 or v0.shape[1] == 1):
        return v0  # axes, scalars and constants without a channel axis: shared
    if v0.ndim == 4 and v0.shape[0] == 1:
        return np.concatenate(values, axis=1)  # per-channel [1, C, 1, 1] (normalization): [1, M*C, 1, 1]
    raise BundleError(expected_got(f"{op} constant to group", "per-channel [1, C, 1, 1] or shared", v0.shape))


def group(members: Sequence[onnx.ModelProto]) -> onnx.ModelProto:
    """Group member graphs (input "input" [N,3,H,W] -> "logits" [N,C]) into one graph taking [M,N,3,H,W] and
    returning "member_logits" [M,N,C]. Raises BundleError when they cannot be grouped."""
    m = len(members)
    _check_same(members)
    inits = [{t.name: numpy_helper.to_array(t) for t in mem.graph.initializer} for mem in members]
    g0 = members[0].graph
    shape = [d.dim_value for d in g0.input[0].type.tensor_type.shape.dim][1:]  # [3, H, W]
    c_in, h, w = shape
    nodes = [helper.make_node("Transpose", [INPUT], ["g_nm"], perm=[1, 0, 2, 3, 4]),
             helper.make_node("Reshape", ["g_nm", "g_in_shape"], ["g_input"])]
    initializers = [numpy_helper.from_array(np.array([-1, m * c_in, h, w], np.int64), "g_in_shape")]
    rename = {INPUT: "g_input"}
    for k, node in enumerate(g0.node):
        attrs = _attrs(node)
        inputs = []
        for slot, name in enumerate(node.input):
            if name in inits[0]:
                members_node = [mem.graph.node[k] for mem in members]
                value = _constant(node, slot, [inits[j][members_node[j].input[slot]] for j in range(m)], attrs, m)
                new = f"g_c{k}_{slot}"
                initializers.append(numpy_helper.from_array(value, new))
                inputs.append(new)
            elif name == "":
                inputs.append("")
            else:
                inputs.append(rename[name])
        if node.op_type == "Conv":
            attrs["group"] = int(attrs.get("group", 1)) * m
        outputs = [f"g_{name}" for name in node.output]
        rename.update(zip(node.output, outputs))
        nodes.append(helper.make_node(node.op_type, inputs, outputs, name=f"g_{k}_{node.op_type}", **attrs))
    classes = [d.dim_value for d in g0.output[0].type.tensor_type.shape.dim][-1]
    initializers.append(numpy_helper.from_array(np.array([-1, m, classes], np.int64), "g_out_shape"))
    nodes += [helper.make_node("Reshape", [rename[LOGITS], "g_out_shape"], ["g_nmc"]),
              helper.make_node("Transpose", ["g_nmc"], [MEMBER_LOGITS], perm=[1, 0, 2])]
    graph = helper.make_graph(
        nodes, "edgeguard_grouped",
        [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, [m, "batch", c_in, h, w])],
        [helper.make_tensor_value_info(MEMBER_LOGITS, onnx.TensorProto.FLOAT, [m, "batch", classes])],
        initializers)
    model = helper.make_model(graph, opset_imports=list(members[0].opset_import))
    model.ir_version = members[0].ir_version
    onnx.checker.check_model(model)
    return model
