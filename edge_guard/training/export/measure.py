"""Numbers measured at export: what each member sees, accuracies through the runtime, gray-box FGSM.

Accuracies are fractions in [0, 1]. The bundle accuracy runs the bundle exactly as a user would:
`edge_guard.guard.Guard` (CPU defense, onnxruntime, vote). Gray-box FGSM: adversarial images are
crafted on a float32 torch model (the base model if the run has one, else the first member) with
FGSM at eps (default 8/255), stored as 8-bit images, and classified through the bundle's full
defense: the attacker knows the model family and weights but not the JPEG defense.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_guard.defense import member_inputs
from edge_guard.spec import DefenseSpec, InputSpec, MemberSpec, Vaccination
from edge_guard.training.predict import prediction_accuracy

FGSM_EPS = 8 / 255
_CHUNK = 256  # images per classify / attack call


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1]: what every exported graph takes (InputSpec.unit_range)."""
    return InputSpec.unit_range(*images.shape[1:3]).to_tensor(images)


def guard_predictions(bundle_dir: str | Path, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Class ids int64 (N,) for uint8 (N, H, W, 3) images through Guard (full defense, CPU)."""
    from edge_guard.guard import Guard

    guard = Guard.from_bundle(bundle_dir, providers=["cpu"], seed=seed, warn_codec_mismatch=False)
    out = [p.class_id for i in range(0, len(images), _CHUNK) for p in guard.classify(images[i:i + _CHUNK])]
    return np.asarray(out, dtype=np.int64)


def fgsm_images(model: nn.Module, images: np.ndarray, labels: np.ndarray, eps: float = FGSM_EPS) -> np.ndarray:
    """Gray-box FGSM: uint8 (N, H, W, 3) clean images -> uint8 adversarial images crafted on `model`.

    The float adversarial image is rounded to 8 bits (what a camera or file would carry); starting
    from 8-bit pixels, eps = k/255 stays exactly k grey levels.
    """
    from edge_guard.training.attacks.fgsm import FGSM

    attack = FGSM(model.eval(), eps=eps)
    out = []
    for i in range(0, len(images), _CHUNK):
        x = torch.from_numpy(to_input(images[i:i + _CHUNK]))
        y = torch.from_numpy(np.asarray(labels[i:i + _CHUNK], dtype=np.int64))
        adv = attack(x, y)
        out.append((adv * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def agreement(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """Fraction of positions where two prediction arrays agree."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.mean(a == b)) if len(a) else float("nan")


def member_tensors(members: Sequence[MemberSpec], defense: DefenseSpec, images: np.ndarray | None, seed: int, *,
                   graph_input: bool) -> dict[str, np.ndarray | None]:
    """Member name -> float32 [N, 3, H, W] its graph receives (`edge_guard.defense.member_inputs`; graph_input=False:
    what its model receives, i.e. after the libjpeg-turbo round trip even for in-graph members). None when
    images is None. SLQ draws are seeded with `seed`, so the inputs are reproducible."""
    if images is None:
        return {m.name: None for m in members}
    views = member_inputs(images, defense, members, rng=seed, graph_input=graph_input)
    shared = views.ndim == 4
    return {m.name: to_input(views if shared else views[i]) for i, m in enumerate(members)}


def bundle_numbers(bundle_dir: Path, members: Sequence[MemberSpec], defense: DefenseSpec, images: np.ndarray,
                   labels: np.ndarray, adv: np.ndarray | None, graphs: dict[str, Any], plain: dict[str, Any],
                   seed: int = 0) -> dict[str, Any]:
    """What the manifest records about a written bundle, measured on uint8 (N, H, W, 3) images.

    accuracy (via Guard, the full bundle), n, member_accuracy (each member graph on its own input),
    fgsm.accuracy and fgsm.misclassification_rate on the gray-box `adv` images (Das et al.: of the
    images classified correctly, the fraction the attack flipped), and for in-graph JPEG members
    in_graph_jpeg_agreement: the in-graph prediction vs the member fed libjpeg-turbo's round trip.
    graphs / plain: member name -> ONNX model as shipped / without the JPEG step.
    """
    from edge_guard.training.export.onnx_io import run_session, session

    pred = guard_predictions(bundle_dir, images, seed)
    out: dict[str, Any] = {"accuracy": prediction_accuracy(pred, labels), "n": int(len(labels)), "member_accuracy": {}}
    graph_in = member_tensors(members, defense, images, seed, graph_input=True)
    member_pred = {m.name: run_session(session(graphs[m.name]), graph_in[m.name]).argmax(1) for m in members}
    out["member_accuracy"] = {name: prediction_accuracy(p, labels) for name, p in member_pred.items()}
    if adv is not None:
        adv_pred = guard_predictions(bundle_dir, adv, seed)
        correct = pred == labels
        flipped = float(np.mean(adv_pred[correct] != labels[correct])) if correct.any() else None
        out["fgsm"] = {"accuracy": prediction_accuracy(adv_pred, labels), "misclassification_rate": flipped}
    in_graph = [m for m in members if defense.in_graph and m.vaccination == Vaccination.JPEG]
    if in_graph:
        codec_in = member_tensors(in_graph, defense, images, seed, graph_input=False)
        out["in_graph_jpeg_agreement"] = {
            m.name: agreement(member_pred[m.name], run_session(session(plain[m.name]), codec_in[m.name]).argmax(1))
            for m in in_graph}
    return out
