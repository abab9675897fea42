"""Tiny ONNX models and bundles for runtime tests, built with onnx.helper (no torch).

Every member is linear: logits = flatten(x) @ W + b, x float32 [N, 3, H, W]. W = 0 gives a member
that always predicts argmax(b); `channel_weights` gives one whose class is the brightest RGB channel.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_guard import jpeg
from edge_guard.bundle import sha256_file, write_manifest

H = W = 8
CLASSES = ("red", "green", "blue", "other")
OPSET = 17
IR_VERSION = 8


def channel_weights(h: int = H, w: int = W, num_classes: int = len(CLASSES), gain: float = 20.0) -> np.ndarray:
    """W [3*h*w, C]: logit c (c < 3) = gain * mean of channel c, so the brightest channel wins."""
    weight = np.zeros((3 * h * w, num_classes), np.float32)
    for c in range(3):
        weight[c * h * w:(c + 1) * h * w, c] = gain / (h * w)
    return weight


def const_bias(class_id: int, num_classes: int = len(CLASSES), margin: float = 3.0) -> np.ndarray:
    """Bias [C] whose argmax is `class_id`."""
    bias = np.zeros(num_classes, np.float32)
    bias[class_id] = margin
    return bias


def _linear_nodes(prefix: str, source: str, weight: np.ndarray, bias: np.ndarray, out: str) -> tuple[list, list]:
    inits = [numpy_helper.from_array(weight.astype(np.float32), f"{prefix}_W"),
             numpy_helper.from_array(bias.astype(np.float32), f"{prefix}_b")]
    nodes = [
        helper.make_node("Flatten", [source], [f"{prefix}_flat"], axis=1),
        helper.make_node("MatMul", [f"{prefix}_flat", f"{prefix}_W"], [f"{prefix}_mm"]),
        helper.make_node("Add", [f"{prefix}_mm", f"{prefix}_b"], [out]),
    ]
    return nodes, inits


def _save(graph: onnx.GraphProto, path: Path, props: dict[str, str]) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def linear_member(path: Path, weight: np.ndarray, bias: np.ndarray, *, h: int = H, w: int = W,
                  props: dict[str, str] | None = None) -> Path:
    """Member graph: input "input" [N,3,h,w] -> output "logits" [N,C]."""
    c = bias.shape[0]
    nodes, inits = _linear_nodes("m", "input", weight, bias, "logits")
    graph = helper.make_graph(
        nodes, "member",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", c])],
        initializer=inits,
    )
    return _save(graph, path, props or {})


def fused_graph(path: Path, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray], *, per_member: bool,
                h: int = H, w: int = W) -> Path:
    """All members in one graph. per_member: input [M,N,3,h,w], else [N,3,h,w]; output member_logits [M,N,C]."""
    m, c = len(weights), biases[0].shape[0]
    nodes: list = []
    inits: list = [numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    for i, (wt, b) in enumerate(zip(weights, biases)):
        source = "input"
        if per_member:
            inits.append(numpy_helper.from_array(np.array(i, np.int64), f"idx{i}"))
            nodes.append(helper.make_node("Gather", ["input", f"idx{i}"], [f"x{i}"], axis=0))
            source = f"x{i}"
        member_nodes, member_inits = _linear_nodes(f"m{i}", source, wt, b, f"logits{i}")
        nodes += member_nodes + [helper.make_node("Unsqueeze", [f"logits{i}", "axis0"], [f"u{i}"])]
        inits += member_inits
    nodes.append(helper.make_node("Concat", [f"u{i}" for i in range(m)], ["member_logits"], axis=0))
    shape: list[Any] = ([m] if per_member else []) + ["N", 3, h, w]
    graph = helper.make_graph(
        nodes, "fused",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("member_logits", TensorProto.FLOAT, [m, "N", c])],
        initializer=inits,
    )
    return _save(graph, path, {})


def defense_dict(kind: str = "none", qualities: Sequence[int] = (), *, per_member: bool = False,
                 in_graph: bool = False, backend: str | None = None) -> dict[str, Any]:
    """A defense section; the codec defaults to the backend this machine runs (no mismatch warning)."""
    info = jpeg.codec_info()
    return {"kind": kind, "qualities": list(qualities), "per_member": per_member, "subsampling": "420",
            "codec": {"backend": backend or info["backend"], "version": info["version"]}, "in_graph": in_graph}


def make_bundle(
    root: Path,
    members: Sequence[dict[str, Any]] | None = None,
    *,
    defense: dict[str, Any] | None = None,
    fused: bool = False,
    vote: str = "majority",
    classes: Sequence[str] = CLASSES,
    h: int = H,
    w: int = W,
) -> Path:
    """Write a bundle directory and return it.

    members: dicts with name, vaccination ("none"|"jpeg"|"slq"), quality, and optional weight
    [3hw, C] / bias [C] (defaults: channel_weights and zero bias). Default: three channel members.
    fused: also write fused.onnx (per-member input when defense.per_member and not in_graph).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    defense = defense or defense_dict()
    if members is None:
        members = [{"name": f"m{i}", "vaccination": "none", "quality": None} for i in range(3)]
    entries, weights, biases = [], [], []
    for spec in members:
        wt = spec.get("weight", channel_weights(h, w, len(classes)))
        b = spec.get("bias", np.zeros(len(classes), np.float32))
        path = linear_member(root / f"{spec['name']}.onnx", wt, b, h=h, w=w,
                             props={"edgeguard.classes": json.dumps(list(classes)),
                                    "edgeguard.defense": json.dumps(defense),
                                    "edgeguard.member": spec["name"]})
        weights.append(wt)
        biases.append(b)
        entries.append({"name": spec["name"], "file": path.name, "sha256": sha256_file(path),
                        "vaccination": spec["vaccination"], "quality": spec["quality"]})
    manifest: dict[str, Any] = {
        "format_version": 1,
        "name": "tiny",
        "description": "tiny test bundle",
        "classes": list(classes),
        "input": {"height": h, "width": w, "layout": "NCHW", "color": "RGB", "dtype": "float32",
                  "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        "defense": defense,
        "members": entries,
        "fused": None,
        "vote": vote,
        "metrics": {"clean_accuracy": 1.0},
        "provenance": {"command": "pytest", "created": "2024-05-01T12:00:00+00:00",
                       "versions": {"edge-guard": "0.1.0"}},
    }
    if fused:
        per_member = defense["per_member"] and not defense["in_graph"]
        path = fused_graph(root / "fused.onnx", weights, biases, per_member=per_member, h=h, w=w)
        manifest["fused"] = {"file": path.name, "sha256": sha256_file(path)}
    write_manifest(root, manifest)
    return root


def read_manifest(root: Path) -> dict[str, Any]:
    return json.loads((Path(root) / "manifest.json").read_text())


def write_raw_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json without validation (to test what load_bundle refuses)."""
    (Path(root) / "manifest.json").write_text(json.dumps(manifest))


def solid(color: Sequence[int], h: int = 16, w: int = 16) -> np.ndarray:
    """HxWx3 uint8 image of one RGB color."""
    return np.broadcast_to(np.asarray(color, np.uint8), (h, w, 3)).copy()
