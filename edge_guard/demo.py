"""`edgeguard demo`: the main job on built-in defaults, with nothing downloaded.

1. Render a short dash-cam clip: a road, sky and roadside, with traffic signs of known GTSRB classes
   drawn procedurally (speed limits with their digits, stop, yield, no entry, priority road, keep right,
   ahead only, no vehicles) at varied scale, rotation, blur, lighting and sensor noise, moving as the car
   drives on. It is written as an MJPEG AVI, with the renderer's boxes as a `--boxes` file standing in for
   an upstream detector.
2. Run it through exactly the `infer` path (`run_infer`: the video source, the boxes, the defense, the
   ensemble, the JSON lines, the annotated clip).
3. Score every region against the class that was drawn, and report per-sign accuracy and latency.
4. Attack crops of the same clip on an undefended model and show what the vaccinated ensemble and its
   suspect flag make of them (`edge_guard.demo_attack`).

The printed accuracy is what it measures on these renders: drawn signs are cleaner and flatter than
the photographs the bundle learned from, so some classes read better than others.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_guard.bundle import default_bundle_path, load_bundle
from edge_guard.demo_attack import AttackResult, run_attack_demo
from edge_guard.errors import ConfigError, expected_got
from edge_guard.guard import Guard, resize
from edge_guard.infer import InferOptions, InferSummary, run_infer
from edge_guard.sources import open_source
from edge_guard.sources.frame import decode_frame

RED, WHITE, BLACK, BLUE, YELLOW = (200, 25, 30), (245, 245, 245), (20, 20, 20), (20, 70, 170), (250, 200, 20)
SIZE = (640, 360)  # width, height of the clip
SIGNS = {  # GTSRB class id -> how it is drawn
    1: ("limit", "30"), 2: ("limit", "50"), 3: ("limit", "60"), 4: ("limit", "70"), 5: ("limit", "80"),
    7: ("limit", "100"), 12: ("priority", ""), 13: ("yield", ""), 14: ("stop", ""), 15: ("ring", ""),
    17: ("no_entry", ""), 35: ("ahead", ""), 38: ("keep_right", ""),
}


def draw_sign(kind: str, text: str, side: int) -> np.ndarray:
    """One sign on a transparent square (RGBA, side x side), drawn as GTSRB shows it."""
    img = np.zeros((side, side, 4), np.uint8)
    c, r = side // 2, int(side * 0.45)

    def disc(color, radius):
        cv2.circle(img, (c, c), radius, (*color, 255), -1, cv2.LINE_AA)

    if kind in ("limit", "ring"):
        disc(RED, r)
        disc(WHITE, int(r * 0.8))
        if text:  # GTSRB's digits are tall and bold, filling most of the white disc
            _paste_text(img, text, (c, c), int(r * 1.25 * (1 if len(text) < 3 else 1.1)), int(r * 0.95))
    elif kind == "stop":
        pts = [(c + r * math.cos(math.pi / 8 + k * math.pi / 4), c + r * math.sin(math.pi / 8 + k * math.pi / 4))
               for k in range(8)]
        cv2.fillPoly(img, [np.array(pts, np.int32)], (*RED, 255), cv2.LINE_AA)
        scale = side / 110
        (tw, th), _ = cv2.getTextSize("STOP", cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, side // 24))
        cv2.putText(img, "STOP", (c - tw // 2, c + th // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (*WHITE, 255),
                    max(1, side // 24), cv2.LINE_AA)
    elif kind == "yield":
        outer = np.array([(c - r, c - r * 0.7), (c + r, c - r * 0.7), (c, c + r)], np.int32)
        inner = np.array([(c - r * 0.62, c - r * 0.48), (c + r * 0.62, c - r * 0.48), (c, c + r * 0.55)], np.int32)
        cv2.fillPoly(img, [outer], (*RED, 255), cv2.LINE_AA)
        cv2.fillPoly(img, [inner], (*WHITE, 255), cv2.LINE_AA)
    elif kind == "priority":
        diamond = np.array([(c, c - r), (c + r, c), (c, c + r), (c - r, c)], np.int32)
        small = np.array([(c, c - r * 0.7), (c + r * 0.7, c), (c, c + r * 0.7), (c - r * 0.7, c)], np.int32)
        cv2.fillPoly(img, [diamond], (*WHITE, 255), cv2.LINE_AA)
        cv2.fillPoly(img, [small], (*YELLOW, 255), cv2.LINE_AA)
    elif kind == "no_entry":
        disc(RED, r)
        cv2.rectangle(img, (c - int(r * 0.7), c - int(r * 0.16)), (c + int(r * 0.7), c + int(r * 0.16)),
                      (*WHITE, 255), -1)
    else:  # blue mandatory signs with a white arrow
        disc(BLUE, r)
        if kind == "ahead":
            tip, tail = (c, c - int(r * 0.6)), (c, c + int(r * 0.6))
        else:  # keep right: an arrow pointing down and to the right
            tip, tail = (c + int(r * 0.45), c + int(r * 0.45)), (c - int(r * 0.45), c - int(r * 0.45))
        cv2.arrowedLine(img, tail, tip, (*WHITE, 255), max(2, side // 9), cv2.LINE_AA, tipLength=0.45)
    return img


def _paste_text(img: np.ndarray, text: str, centre: tuple[int, int], width: int, height: int) -> None:
    """Draw bold black text stretched to width x height, centred (on an RGBA image)."""
    canvas = np.zeros((120, 60 * len(text) + 20), np.uint8)
    cv2.putText(canvas, text, (10, 100), cv2.FONT_HERSHEY_DUPLEX, 3.2, 255, 9, cv2.LINE_AA)
    ys, xs = np.nonzero(canvas)
    glyphs = cv2.resize(canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1], (width, height),
                        interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255
    x, y = centre[0] - width // 2, centre[1] - height // 2
    patch = img[y:y + height, x:x + width].astype(np.float32)
    ink = np.array([*BLACK, 255], np.float32)
    img[y:y + height, x:x + width] = (patch * (1 - glyphs) + ink * glyphs).astype(np.uint8)


def _background(rng: np.random.Generator, t: int) -> np.ndarray:
    w, h = SIZE
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2] = (135, 175, 215)  # sky
    img[h // 2:] = (95, 95, 100)  # road
    img[h // 2: h // 2 + 40, :] = (70, 110, 60)  # verge
    for k in range(6):  # lane dashes moving towards the camera
        y = h // 2 + 40 + ((k * 40 + t * 6) % 140)
        cv2.rectangle(img, (w // 2 - 4, y), (w // 2 + 4, y + 14), (230, 230, 230), -1)
    return img


@dataclass(frozen=True)
class Placed:
    class_id: int
    box: tuple[int, int, int, int]


def render_clip(folder: Path, *, frames: int = 48, signs_per_frame: int = 3, seed: int = 0) -> tuple[Path, Path, list]:
    """Write folder/demo.avi (MJPEG) and folder/boxes.jsonl; returns them and, per frame, the signs drawn."""
    rng = np.random.default_rng(seed)
    classes = list(SIGNS)
    tracks = []  # each sign drives past: it starts small and far, grows and drifts outwards
    for i in range(signs_per_frame):
        tracks.append({"class": classes[int(rng.integers(len(classes)))], "phase": i / signs_per_frame,
                       "side": (1 if i % 2 else -1), "angle": float(rng.uniform(-12, 12))})
    video = folder / "demo.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, SIZE)
    truth, lines = [], []
    w, h = SIZE
    for t in range(frames):
        img = _background(rng, t).astype(np.float32)
        placed = []
        for track in tracks:
            p = (track["phase"] + 3 * t / frames) % 1.0  # each track passes three signs in the clip
            if p < 3 / frames:  # a new sign comes into view
                track["class"] = classes[int(rng.integers(len(classes)))]
                track["angle"] = float(rng.uniform(-12, 12))
            side = int(36 + 90 * p)  # pixels
            cx = int(w / 2 + track["side"] * (60 + 230 * p) + 30 * track["phase"])
            cy = int(h * 0.40 - 30 * p)
            x1, y1 = cx - side // 2, cy - side // 2
            if x1 < 0 or y1 < 0 or x1 + side > w or y1 + side > h:
                continue
            kind, text = SIGNS[track["class"]]
            sign = draw_sign(kind, text, side)
            rot = cv2.getRotationMatrix2D((side / 2, side / 2), track["angle"], 1.0)
            sign = cv2.warpAffine(sign, rot, (side, side))
            blur = int(rng.integers(0, 2)) * 2 + 1
            sign = cv2.GaussianBlur(sign, (blur, blur), 0)
            alpha = sign[..., 3:4].astype(np.float32) / 255
            light = float(rng.uniform(0.7, 1.15))  # sun and shade
            region = img[y1:y1 + side, x1:x1 + side]
            img[y1:y1 + side, x1:x1 + side] = region * (1 - alpha) + sign[..., :3] * light * alpha
            pad = side // 10  # GTSRB crops keep a margin around the sign
            placed.append(Placed(track["class"], (max(0, x1 - pad), max(0, y1 - pad), min(w, x1 + side + pad),
                                                  min(h, y1 + side + pad))))
        img += rng.normal(0, 6, img.shape)  # sensor noise
        frame = np.clip(img, 0, 255).astype(np.uint8)
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
        truth.append(placed)
        lines.append(json.dumps({"frame": t, "boxes": [list(s.box) for s in placed]}))
    writer.release()
    boxes = folder / "boxes.jsonl"
    boxes.write_text("\n".join(lines) + "\n")
    return video, boxes, truth


def clip_crops(video: Path, truth: list[list[Placed]], *, every: int = 4, size: tuple[int, int] = (32, 32)
               ) -> tuple[np.ndarray, np.ndarray]:
    """The drawn signs of every `every`-th frame, cut from the decoded clip and resized as infer does.

    Returns (N x height x width x 3 uint8 RGB crops, N class ids); size is (height, width).
    """
    crops, labels = [], []
    with open_source(str(video)) as source:
        for frame in source:
            if frame.index % every or frame.index >= len(truth):
                continue
            image, _ = decode_frame(frame)
            for sign in truth[frame.index]:
                x1, y1, x2, y2 = sign.box
                crops.append(resize(image[y1:y2, x1:x2], *size))
                labels.append(sign.class_id)
    return np.stack(crops), np.array(labels, np.int64)


@dataclass(frozen=True)
class DemoResult:
    folder: Path
    summary: InferSummary
    per_class: dict[str, tuple[int, int]]  # class name -> (correct, seen)
    suspect: int
    attack: AttackResult | None = None

    def lines(self) -> list[str]:
        seen = sum(n for _, n in self.per_class.values())
        right = sum(c for c, _ in self.per_class.values())
        out = [f"rendered {self.summary.stats.frames} frames with {seen} signs; read "
               f"{right} of them right ({100 * right / max(1, seen):.1f}%), {self.suspect} flagged suspect"]
        for name, (c, n) in sorted(self.per_class.items(), key=lambda kv: -kv[1][1]):
            out.append(f"  {name:<45} {c:3d} / {n:3d}")
        total = self.summary.stats.percentiles("total")
        out.append(f"latency per frame: p50 {total['p50']:.1f} ms, p99 {total['p99']:.1f} ms "
                   f"({self.summary.bundle}, {self.summary.provider})")
        out.append(f"wrote {self.folder / 'annotated.avi'} (boxes, labels, suspect in red), "
                   f"{self.folder / 'results.jsonl'} and the clip {self.folder / 'demo.avi'}")
        if self.attack is not None:
            out += [""] + self.attack.lines()
        return out


def run_demo(folder: str | Path = "demo-output", *, bundle: str | None = None, frames: int = 48,
             threads: int | None = 1, seed: int = 0, attack: bool = True) -> DemoResult:
    """Render the clip into `folder`, classify it through the infer path, score it (see the module docstring)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission, a read-only disk
        raise ConfigError(expected_got("--out", "a folder the demo can create or write into",
                                       f"{folder} ({exc.strerror})", "Pass another folder.")) from None
    video, boxes, truth = render_clip(folder, frames=frames, seed=seed)
    summary = run_infer(InferOptions(sources=(str(video),), bundle=bundle, threads=threads, seed=seed,
                                     boxes=str(boxes), output=str(folder / "results.jsonl"),
                                     annotate=str(folder / "annotated.avi"), status=False))
    if summary.interrupted:  # infer stops cleanly on Ctrl-C; the demo must not go on to score half a clip
        raise KeyboardInterrupt
    per_class: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    suspect = 0
    path = bundle or default_bundle_path()
    names = load_bundle(path, verify=False).classes
    for line in (folder / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        drawn = truth[record["frame"]]
        for region, sign in zip(record["regions"], drawn):
            entry = per_class[names[sign.class_id]]
            entry[0] += region["class_id"] == sign.class_id
            entry[1] += 1
            suspect += region["suspect"]
    attacked = None
    if attack:  # the same bundle again, as a Guard of its own (run_infer's stays inside the infer path)
        guard = Guard.from_bundle(path, threads=threads, seed=seed)
        crops, labels = clip_crops(video, truth, size=(guard.bundle.input.height, guard.bundle.input.width))
        attacked = run_attack_demo(folder, crops, labels, guard, threads=threads)
    return DemoResult(folder, summary, {k: (v[0], v[1]) for k, v in per_class.items()}, suspect, attacked)
