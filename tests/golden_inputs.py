"""Fixed inputs for the shipped-bundle golden test (tests/test_shipped_bundles.py).

Seeded noise crops, a colour gradient and simple sign-like shapes, plus one larger frame cut by
three boxes, so both the whole-image and the ROI path are covered. Regenerate the recorded values
with `python -m tests.golden_inputs tests/data/shipped_predictions.json` only when a change is meant
to alter predictions, and say so in the commit.
"""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np

BUNDLES = ("gtsrb-shield", "gtsrb-shield-r14", "gtsrb-shield-robust")
FRAME_BOXES = [(0, 0, 64, 64), (30, 20, 94, 84), (100, 50, 160, 120)]


def crops() -> list[np.ndarray]:
    """Six 32x32 noise crops, a 48x48 gradient and three 40x40 shapes (uint8 RGB)."""
    rng = np.random.default_rng(1234)
    images = list(rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8))
    yy, xx = np.mgrid[0:48, 0:48]
    images.append(np.stack([(xx * 5) % 256, (yy * 5) % 256, ((xx + yy) * 3) % 256], -1).astype(np.uint8))
    for color, shape in (((200, 30, 30), "disc"), ((30, 60, 200), "disc"), ((220, 40, 40), "triangle")):
        img = np.full((40, 40, 3), 235, np.uint8)
        if shape == "disc":
            cv2.circle(img, (20, 20), 16, color, -1)
        else:
            cv2.fillPoly(img, [np.array([[20, 4], [37, 35], [3, 35]], np.int32)], color)
        images.append(img)
    return images


def frame() -> np.ndarray:
    """A 120x160 noise frame with a red disc inside the second box."""
    img = np.random.default_rng(99).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    cv2.circle(img, (62, 52), 26, (210, 20, 20), -1)
    return img


def predictions(guard) -> list[dict]:
    preds = [p for img in crops() for p in guard.classify(img)] + guard.classify(frame(), rois=FRAME_BOXES)
    return [{"class_id": p.class_id, "confidence": round(p.confidence, 6), "votes": list(p.votes)} for p in preds]


def record(path: str) -> None:
    from edge_guard import Guard, jpeg

    out = {}
    for backend in jpeg.available_backends():
        for name in BUNDLES:
            for fused in (False, True):
                guard = Guard.from_bundle(f"export/{name}", seed=0, backend=backend, use_fused=fused, threads=1,
                                          warn_codec_mismatch=False)
                out[f"{name}/{backend}/{'fused' if fused else 'members'}"] = predictions(guard)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    record(sys.argv[1])
