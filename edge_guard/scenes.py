"""Rendered road scenes at any size, for `bench` and the benchmarks: realistic frames, not noise.

    scene = render_scene(1920, 1080, rng=0, signs=4)     # uint8 RGB (1080, 1920, 3), boxes, class ids
    data = encode_frame(scene.image)                     # what an MJPEG camera sends (q90, 4:2:0)
    batch = sign_crops(256, size=32, rng=0)              # (256, 32, 32, 3) uint8 crops of rendered signs

The signs are `edge_guard.demo`'s procedural GTSRB signs (speed limits with digits, stop, yield, ...),
pasted with rotation, blur and lighting onto a road, verge, sky and textured roadside, with sensor
noise: a JPEG codec sees the entropy of a camera frame, which noise frames (nothing compresses) and
flat frames (everything does) both misstate. Box sides scale with the frame: 7-13% of its height.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_guard import jpeg
from edge_guard.demo import SIGNS, draw_sign
from edge_guard.regions import Box

CAMERA_QUALITY = 90  # a typical MJPEG camera's JPEG quality


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # uint8 RGB (H, W, 3)
    boxes: tuple[Box, ...]  # (x1, y1, x2, y2) in pixels, x2/y2 exclusive: each sign with a margin
    classes: tuple[int, ...]  # GTSRB class id drawn in each box


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _background(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Sky, roadside texture, verge and road with lane marks, float32 RGB."""
    img = np.empty((h, w, 3), np.float32)
    horizon = int(h * 0.45)
    img[:horizon] = np.linspace(190, 130, horizon)[:, None, None] * np.array([0.75, 0.9, 1.1])  # sky gradient
    img[horizon:] = (95, 95, 100)  # road
    verge = max(2, h // 10)
    img[horizon:horizon + verge] = (70, 110, 60)
    # roadside trees and buildings: coarse random blobs, upsampled (low-frequency texture)
    blobs = rng.uniform(40, 160, (max(2, h // 40), max(2, w // 40), 3)).astype(np.float32)
    tex = cv2.resize(blobs, (w, horizon // 2), interpolation=cv2.INTER_CUBIC)
    img[horizon - horizon // 2:horizon] = 0.5 * img[horizon - horizon // 2:horizon] + 0.5 * tex
    for k in range(6):  # lane dashes
        y = horizon + verge + int((k / 6) * (h - horizon - verge))
        half = max(2, int(w * 0.004 * (1 + 2 * (y - horizon) / h)))
        cv2.rectangle(img, (w // 2 - half, y), (w // 2 + half, y + max(2, h // 40)), (230, 230, 230), -1)
    return img


def render_scene(width: int, height: int, *, rng: np.random.Generator | int | None = None,
                 signs: int = 4) -> Scene:
    """One dash-cam frame with `signs` traffic signs side by side above the horizon (see the module docstring)."""
    g = _rng(rng)
    img = _background(width, height, g)
    classes = list(SIGNS)
    boxes, drawn = [], []
    slot = width // max(1, signs)
    for i in range(signs):
        side = max(16, int(height * g.uniform(0.07, 0.13)))
        side = min(side, slot - 4, height // 2)
        if side < 8:
            break
        x1 = i * slot + int(g.integers(0, max(1, slot - side)))
        y1 = int(height * 0.12) + int(g.integers(0, max(1, int(height * 0.2))))
        cls = classes[int(g.integers(len(classes)))]
        sign = draw_sign(*SIGNS[cls], side)
        rot = cv2.getRotationMatrix2D((side / 2, side / 2), float(g.uniform(-10, 10)), 1.0)
        sign = cv2.GaussianBlur(cv2.warpAffine(sign, rot, (side, side)), (3, 3), 0)
        alpha = sign[..., 3:4].astype(np.float32) / 255
        region = img[y1:y1 + side, x1:x1 + side]
        img[y1:y1 + side, x1:x1 + side] = region * (1 - alpha) + sign[..., :3] * float(g.uniform(0.7, 1.15)) * alpha
        pad = side // 10  # GTSRB crops keep a margin around the sign
        boxes.append((max(0, x1 - pad), max(0, y1 - pad), min(width, x1 + side + pad), min(height, y1 + side + pad)))
        drawn.append(cls)
    img += g.normal(0, 5, img.shape).astype(np.float32)  # sensor noise
    return Scene(np.clip(img, 0, 255).astype(np.uint8), tuple(boxes), tuple(drawn))


def encode_frame(image: np.ndarray, quality: int = CAMERA_QUALITY) -> bytes:
    """A frame as an MJPEG camera sends it: JPEG at `quality`, 4:2:0."""
    return jpeg.encode(image, quality)


def sign_crops(n: int, size: int = 32, *, rng: np.random.Generator | int | None = None,
               distinct: int = 256) -> np.ndarray:
    """(n, size, size, 3) uint8 RGB crops of rendered signs on rendered roadside, resized as Guard resizes.
    At most `distinct` signs are drawn (a sign takes ~10 ms); the rest repeat them with fresh sensor noise."""
    from edge_guard.guard import resize

    g = _rng(rng)
    k = min(n, distinct)
    base = np.empty((k, size, size, 3), np.uint8)
    done = 0
    while done < k:
        scene = render_scene(1280, 360, rng=g, signs=10)
        for x1, y1, x2, y2 in scene.boxes[: k - done]:
            base[done] = resize(scene.image[y1:y2, x1:x2], size, size)
            done += 1
    if n == k:
        return base
    out = base[np.arange(n) % k].astype(np.float32) + g.normal(0, 3, (n, size, size, 3)).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)
