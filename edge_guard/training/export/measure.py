"""Numbers measured at export: what each member sees, accuracies through the runtime, gray-box FGSM.

Accuracies are fractions in [0, 1]. The bundle accuracy runs the bundle exactly as a user would:
`edge_guard.guard.Guard` (CPU defense, onnxruntime, vote). Gray-box FGSM: adversarial images are
crafted on a float32 torch model (the base model if the run has one, else the first member) with
FGSM at eps (default 8/255), stored as 8-bit images, and classified through the bundle's full
defense: the attacker knows the model family and weights but not the JPEG defense.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_guard import jpeg

FGSM_EPS = 8 / 255
_CHUNK = 256  # images per classify / attack call


@dataclass(frozen=True)
class Defense:
    """The manifest's defense in the form the exporter needs (see the manifest schema)."""

    kind: str  # "none" | "jpeg" | "slq"
    qualities: tuple[int, ...]
    per_member: bool
    subsampling: str
    in_graph: bool


def member_view(images: np.ndarray, vaccination: str, quality: int | None, defense: Defense, seed: int = 0,
                *, graph_input: bool = True) -> np.ndarray:
    """What a member's graph receives for uint8 (N, H, W, 3) images, as uint8 (N, H, W, 3).

    graph_input=True: raw images when the JPEG is in the graph. graph_input=False: what the member
    model itself sees after the defense (the libjpeg-turbo round trip even for in-graph members).
    SLQ draws are seeded with `seed`, so a view is reproducible.
    """
    opts = {"subsampling": defense.subsampling}
    if defense.kind == "none" or (defense.in_graph and graph_input):
        return images
    if not defense.per_member:
        if defense.kind == "jpeg":
            return jpeg.roundtrip(images, defense.qualities[0], **opts)
        return jpeg.slq(images, defense.qualities, rng=seed, **opts)
    if vaccination == "jpeg" and quality is not None:
        return jpeg.roundtrip(images, quality, **opts)
    if vaccination == "slq":
        return jpeg.slq(images, defense.qualities, rng=seed, **opts)
    return images


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1] (the manifest's scale 1/255, mean 0, std 1)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(labels))) if len(labels) else float("nan")


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


def member_inputs(members: Sequence[Any], defense: Defense, images: np.ndarray | None, seed: int, *,
                  graph_input: bool) -> dict[str, np.ndarray | None]:
    """Member name -> float32 [N, 3, H, W] its graph receives (graph_input=False: its model receives,
    i.e. after the libjpeg-turbo round trip even for in-graph members). None when images is None."""
    if images is None:
        return {m.name: None for m in members}
    return {m.name: to_input(member_view(images, m.vaccination, m.quality, defense, seed, graph_input=graph_input))
            for m in members}


def bundle_numbers(bundle_dir: Path, members: Sequence[Any], defense: Defense, images: np.ndarray,
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
    out: dict[str, Any] = {"accuracy": accuracy(pred, labels), "n": int(len(labels)), "member_accuracy": {}}
    graph_in = member_inputs(members, defense, images, seed, graph_input=True)
    member_pred = {m.name: run_session(session(graphs[m.name]), graph_in[m.name]).argmax(1) for m in members}
    out["member_accuracy"] = {name: accuracy(p, labels) for name, p in member_pred.items()}
    if adv is not None:
        adv_pred = guard_predictions(bundle_dir, adv, seed)
        correct = pred == labels
        flipped = float(np.mean(adv_pred[correct] != labels[correct])) if correct.any() else None
        out["fgsm"] = {"accuracy": accuracy(adv_pred, labels), "misclassification_rate": flipped}
    in_graph = [m for m in members if defense.in_graph and m.vaccination == "jpeg"]
    if in_graph:
        codec_in = member_inputs(in_graph, defense, images, seed, graph_input=False)
        out["in_graph_jpeg_agreement"] = {
            m.name: agreement(member_pred[m.name], run_session(session(plain[m.name]), codec_in[m.name]).argmax(1))
            for m in in_graph}
    return out
