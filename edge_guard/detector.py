"""An upstream ONNX object detector (YOLO as Ultralytics exports it) proposing sign boxes to classify.

    detector = Detector("yolov8n.onnx", score=0.25, iou=0.45, classes=[11])   # classes: keep only these ids
    for d in detector.detect(frame_rgb): d.box, d.score, d.class_id

Input: one letterboxed image, float32 [1, 3, S, S] RGB in [0, 1] (S from the graph, grey 114 padding),
as `yolo export format=onnx` expects. Output layouts accepted (batch 1, the first output):
- [1, 4 + C, N]  YOLOv8/YOLO11: centre x, y, width, height, then C class scores (no objectness);
- [1, N, 5 + C]  YOLOv5/YOLOv7: centre x, y, width, height, objectness, then C class scores;
- [1, N, 6]      end-to-end exports (YOLOv10, `nms=True`): x1, y1, x2, y2, score, class id, already NMS'd.
A [1, N, 6] output is read as end-to-end; otherwise the layout is told apart by which axis is the
longer one (N, the candidate count, is in the thousands). Boxes are mapped back to frame pixels,
filtered by score and class, and non-maximum suppressed per class (OpenCV's NMSBoxes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from edge_guard.errors import BundleError, ConfigError, InputError, expected_got

PAD = 114  # Ultralytics' letterbox grey


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
    score: float
    class_id: int


def letterbox(image: np.ndarray, size: int | tuple[int, int]) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping the aspect ratio into size (side, or (height, width)) with grey padding. Returns
    (float32 [1,3,H,W] in [0,1], scale, (pad_x, pad_y)) so that frame = (letterboxed - pad) / scale."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    scale = min(out_h / h, out_w / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((out_h, out_w, 3), PAD, np.uint8)
    top, left = (out_h - nh) // 2, (out_w - nw) // 2
    canvas[top:top + nh, left:left + nw] = resized
    x = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)
    return x, scale, (float(left), float(top))


def decode_output(out: np.ndarray, *, score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """A detector output -> (boxes xyxy float32 [K, 4] in letterbox pixels, scores [K], class ids [K], nms_done)."""
    if out.ndim != 3 or out.shape[0] != 1:
        raise InputError(expected_got("detector output", "[1, 4+C, N], [1, N, 5+C] or [1, N, 6]", out.shape))
    rows = out[0]
    if rows.shape[1] == 6 and rows.shape[0] != 6:  # end-to-end: x1, y1, x2, y2, score, class
        keep = rows[:, 4] >= score
        return rows[keep, :4], rows[keep, 4], rows[keep, 5].astype(np.int64), True
    if rows.shape[0] < rows.shape[1]:  # [4 + C, N]: YOLOv8 / YOLO11
        rows = rows.T
        cls_scores = rows[:, 4:]
    else:  # [N, 5 + C]: YOLOv5 with objectness
        cls_scores = rows[:, 5:] * rows[:, 4:5]
    if cls_scores.shape[1] == 0:
        raise InputError(expected_got("detector output", "at least one class score per box", out.shape))
    class_ids = cls_scores.argmax(1)
    scores = cls_scores[np.arange(len(rows)), class_ids]
    keep = scores >= score
    cx, cy, bw, bh = (rows[keep, i] for i in range(4))
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    return boxes, scores[keep], class_ids[keep].astype(np.int64), False


class Detector:
    """An ONNX detector session (see the module docstring for the layouts). score: minimum confidence;
    iou: NMS overlap threshold; classes: detector class ids to keep (None: all); max_boxes: per frame."""

    def __init__(self, path: str | Path, *, score: float = 0.25, iou: float = 0.45,
                 classes: Sequence[int] | None = None, max_boxes: int = 32, providers: Sequence[str] = ("cpu",),
                 threads: int | None = None) -> None:
        from edge_guard.engine import resolve_providers

        if not 0 <= score <= 1 or not 0 <= iou <= 1:
            raise ConfigError(expected_got("detector score and iou thresholds", "numbers in [0, 1]", (score, iou)))
        path = Path(path)
        if not path.is_file():
            raise ConfigError(expected_got("--detector", "an ONNX detector file", f"{path} (not found)"))
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=resolve_providers(list(providers)))
        except Exception as exc:  # onnxruntime raises its own types for a bad graph
            raise BundleError(f"{path}: onnxruntime could not load the detector "
                              f"({type(exc).__name__}: {exc}).") from exc
        shape = self.session.get_inputs()[0].shape
        h, w = (d if isinstance(d, int) and d > 0 else 640 for d in (list(shape) + [640, 640])[2:4])
        self.size, self.side, self.score, self.iou = (int(h), int(w)), max(int(h), int(w)), score, iou
        self.classes = None if classes is None else {int(c) for c in classes}
        self.max_boxes = max_boxes
        self._input = self.session.get_inputs()[0].name

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Detections in a uint8 RGB frame, best first, at most max_boxes."""
        x, scale, (px, py) = letterbox(image, self.size)
        try:
            out = np.asarray(self.session.run(None, {self._input: x})[0], dtype=np.float32)
        except Exception as exc:  # onnxruntime's own error types
            raise BundleError(f"the detector failed on a {self.size[1]}x{self.size[0]} input "
                              f"({type(exc).__name__}: {exc}). Check it is a YOLO export with one image input.") \
                from exc
        boxes, scores, class_ids, nms_done = decode_output(out, score=self.score)
        if self.classes is not None:
            keep = np.isin(class_ids, list(self.classes))
            boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
        if not nms_done and len(boxes):
            # per-class NMS: offset each class's boxes so boxes of different classes never overlap
            offset = class_ids[:, None].astype(np.float32) * (4.0 * self.side)
            shifted = boxes + offset
            xywh = np.concatenate([shifted[:, :2], shifted[:, 2:] - shifted[:, :2]], axis=1)
            kept = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.score, self.iou)
            idx = np.asarray(kept, dtype=np.int64).reshape(-1)
            boxes, scores, class_ids = boxes[idx], scores[idx], class_ids[idx]
        order = np.argsort(-scores)[: self.max_boxes]
        h, w = image.shape[:2]
        frame_boxes = (boxes[order] - np.array([px, py, px, py], np.float32)) / np.float32(scale)
        frame_boxes = np.clip(frame_boxes, 0, [w, h, w, h])
        return [Detection(tuple(float(v) for v in b), float(s), int(c))  # type: ignore[arg-type]
                for b, s, c in zip(frame_boxes, scores[order], class_ids[order])]
