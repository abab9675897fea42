"""Craft the demo's attack on the undefended model (torch), live or into the shipped crops.

`edgeguard demo` calls `craft_on_undefended` on the crops it just rendered when torch is installed.
This module's command writes the crops the demo ships for the runtime alone (rendered signs only):

    python -m edge_guard.training.demo_craft --out export/gtsrb-undefended/demo_attack.npz
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from edge_guard.bundle import SHIPPED_BUNDLES
from edge_guard.demo_attack import EPS_LEVELS, UNDEFENDED_BUNDLE
from edge_guard.training.attacks import PGD
from edge_guard.training.bundle_torch import bundle_target

STEPS, ALPHA_LEVELS = 10, 2  # PGD iterations and step size (grey levels): Madry et al.'s CIFAR budget


def craft_on_undefended(crops: np.ndarray, labels: np.ndarray, bundle: str | Path | None = None
                        ) -> tuple[np.ndarray, str]:
    """PGD (no random start, so repeatable) on N x H x W x 3 uint8 crops; returns uint8 crops and a description.

    The attacked model is the undefended bundle's own ONNX graph run in torch (`bundle_target`). The result
    is rounded to 8-bit pixels and stays within EPS_LEVELS grey levels of the input, as an attacker who
    must hand the camera pipeline a real image would.
    """
    model = bundle_target(bundle or SHIPPED_BUNDLES / UNDEFENDED_BUNDLE)
    images = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255
    attack = PGD(model, eps=EPS_LEVELS / 255, alpha=ALPHA_LEVELS / 255, steps=STEPS, random_start=False)
    with torch.inference_mode(False):
        adv = attack(images, torch.as_tensor(labels, dtype=torch.int64))
    adv = np.rint(adv.permute(0, 2, 3, 1).numpy() * 255)
    base = crops.astype(np.int16)
    adv = np.clip(adv, base - EPS_LEVELS, base + EPS_LEVELS).clip(0, 255).astype(np.uint8)
    how = f"PGD-{STEPS}, Linf eps {EPS_LEVELS}/255, crafted on the undefended model {UNDEFENDED_BUNDLE}"
    return adv, how


def write_shipped(out: Path, *, frames: int = 48, seed: int = 0) -> Path:
    """Render the demo clip (its defaults), cut its crops as the demo does, attack them, save an .npz."""
    from edge_guard.demo import clip_crops, render_clip

    with tempfile.TemporaryDirectory() as tmp:
        video, _, truth = render_clip(Path(tmp), frames=frames, seed=seed)
        crops, labels = clip_crops(video, truth)
    adversarial, how = craft_on_undefended(crops, labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, clean=crops, adversarial=adversarial, labels=labels.astype(np.int16), how=np.array(how))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SHIPPED_BUNDLES / UNDEFENDED_BUNDLE / "demo_attack.npz")
    args = parser.parse_args(argv)
    print(f"wrote {write_shipped(args.out)}")


if __name__ == "__main__":
    main()
