"""Bundles as torch attack targets: the ONNX members in torch equal onnxruntime, the defense is the bundle's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from edge_guard import Guard
from edge_guard.bundle import load_bundle
from edge_guard.errors import BundleError
from edge_guard.training.attacks import APGDCE, EOT
from edge_guard.training.bundle_torch import OnnxModule, bundle_target, load_members
from tests.onnx_fixtures import channel_weights, defense_dict, make_bundle

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def per_member(tmp_path_factory):
    gains = [channel_weights(gain=g) for g in (10.0, 20.0, 30.0)]
    return make_bundle(tmp_path_factory.mktemp("bt") / "b", [
        {"name": "q20", "vaccination": "jpeg", "quality": 20, "weight": gains[0]},
        {"name": "q60", "vaccination": "jpeg", "quality": 60, "weight": gains[1]},
        {"name": "raw", "vaccination": "none", "quality": None, "weight": gains[2]},
    ], defense=defense_dict("jpeg", [20, 60], per_member=True))


def test_members_match_onnxruntime_and_predictions_match_guard(per_member) -> None:
    bundle = load_bundle(per_member)
    assert len(load_members(bundle)) == 3  # parity checked inside (raises otherwise)
    target = bundle_target(bundle)
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(32, 8, 8, 3), dtype=np.uint8)
    x = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
    guard = Guard.from_bundle(per_member, seed=0, threads=1)
    assert target.predict(x).tolist() == [p.class_id for p in guard.classify(u8)]


def test_the_target_is_attackable_through_bpda(per_member) -> None:
    target = bundle_target(per_member)
    x = torch.full((4, 3, 8, 8), 0.4)
    x[:, 0] = 0.44  # red a little ahead of green: class 0
    y = torch.zeros(4, dtype=torch.int64)
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(target(x)[:, 0].sum(), x)
    assert float(g[:, 0].mean()) > 0 > float(g[:, 1].mean())  # identity BPDA: the linear members' direction
    adv = APGDCE(target, eps=8 / 255, steps=10)(x.detach(), y)
    assert (target.predict(adv) != y).all()


def test_slq_members_get_eot(tmp_path) -> None:
    root = make_bundle(tmp_path / "s", [{"name": "q40", "vaccination": "jpeg", "quality": 40},
                                        {"name": "slq", "vaccination": "slq", "quality": None}],
                       defense=defense_dict("jpeg", [20, 40], per_member=True))
    target = bundle_target(root, eot_samples=3)
    assert isinstance(target.members[1], EOT) and target.members[1].samples == 3
    assert target(torch.rand(2, 3, 8, 8)).shape == (2, 4)


def test_unknown_ops_are_refused() -> None:
    graph = helper.make_graph([helper.make_node("Sigmoid", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])])
    with pytest.raises(BundleError, match="Sigmoid"):
        OnnxModule(helper.make_model(graph))
