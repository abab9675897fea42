"""edge_guard.training.export.grouped: members grouped into one graph give the members' own logits."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edge_guard.errors import BundleError
from edge_guard.training.export.grouped import group
from edge_guard.training.models import create_model


def _onnx(model: torch.nn.Module) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, 16, 16),), buf, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _run(model: onnx.ModelProto | bytes, x: np.ndarray) -> np.ndarray:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.mark.parametrize("name, kwargs", [("resnet_small", {"depth": 8, "width": 4}),
                                          ("compact_cnn", {"widths": (4, 8), "input_size": (16, 16)})])
def test_grouped_graph_gives_each_members_logits(name, kwargs):
    torch.manual_seed(0)
    members = []
    for _ in range(3):
        model = create_model(name, 5, **kwargs)
        for p in model.parameters():  # members differ, as vaccinated ones do
            p.data.normal_(0, 0.3)
        members.append(_onnx(model))
    grouped = group(members)
    x = np.random.default_rng(0).random((3, 2, 3, 16, 16), dtype=np.float32)
    got = _run(grouped, x)
    want = np.stack([_run(m, x[i]) for i, m in enumerate(members)])
    assert got.shape == (3, 2, 5) and np.abs(got - want).max() < 1e-4
    assert not np.allclose(want[0], want[1])  # the members really differ, so a mix-up would show
    convs = [sum(n.op_type == "Conv" for n in g.graph.node) for g in (grouped, members[0])]
    assert convs[0] == convs[1]  # one wide conv per layer, not one per member


def test_members_of_different_architectures_are_refused():
    a = _onnx(create_model("compact_cnn", 5, widths=(4, 8), input_size=(16, 16)))
    b = _onnx(create_model("resnet_small", 5, depth=8, width=4))
    with pytest.raises(BundleError, match="different graph"):
        group([a, b])
