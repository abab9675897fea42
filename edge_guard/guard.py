"""The pipeline object users embed: images -> crops -> JPEG defense -> engine -> vote -> Predictions.

    guard = Guard.from_bundle("export/gtsrb-shield", providers=["cuda", "cpu"], seed=0)
    preds = guard.classify(frame_rgb, rois=[(10, 20, 74, 84)])   # one Prediction per crop
    preds[0].class_name, preds[0].confidence, preds[0].votes

Inputs are uint8 RGB, HxWx3 (one image), a list of them (sizes may differ), or an NxHxWx3 batch.
Grayscale HxW or HxWx1 is repeated to 3 channels; HxWx4 RGBA drops alpha. Each crop is resized to
the bundle's input size (INTER_AREA when shrinking both sides, INTER_LINEAR otherwise), then the
defense named in the manifest runs on the CPU (unless the graphs contain it), then the members vote.

A Guard is safe to share between threads: the only shared mutable state is the SLQ random
generator, which a lock guards; sessions and everything else are read-only after construction.
"""

from __future__ import annotations

import numbers
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_guard import jpeg
from edge_guard.bundle import Bundle, default_bundle_path, load_bundle
from edge_guard.defense import member_inputs
from edge_guard.engine import Engine, softmax, vote
from edge_guard.errors import BundleError, InputError, expected_got
from edge_guard.regions import Box

STAGES = ("preprocess", "defense", "inference", "vote", "total")
MAX_CROPS = 4096  # per classify call: ~12 MB of 32x32 crops, far more than a frame has signs


@dataclass(frozen=True)
class Prediction:
    """One classified crop.

    class_id: index into the bundle's classes; class_name: its name; confidence: mean probability
    of the winning class across members, in [0, 1]; votes: each member's predicted class id (manifest
    order); timings_ms: wall time in milliseconds of each stage of the `classify` call that produced
    it (shared by all predictions of that call): preprocess (crop, resize), defense (JPEG/SLQ),
    inference (tensor conversion and onnxruntime), vote, total.
    """

    class_id: int
    class_name: str
    confidence: float
    votes: tuple[int, ...]
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"class_id": self.class_id, "class_name": self.class_name, "confidence": self.confidence,
                "votes": list(self.votes), "timings_ms": dict(self.timings_ms)}


# ----------------------------------------------------------------------------- input checks


def _to_rgb(image: Any, what: str) -> np.ndarray:
    """Check one image and return it as HxWx3 uint8 RGB (gray repeated, alpha dropped)."""
    if not isinstance(image, np.ndarray):
        raise InputError(expected_got(what, "a numpy.ndarray (HxWx3 uint8 RGB)", type(image).__name__))
    image = np.asarray(image)  # a subclass (np.matrix) breaks numpy's own operations on it
    if image.dtype != np.uint8:
        raise InputError(expected_got(f"{what} dtype", "uint8 (0..255)", image.dtype,
                                      "Convert floats in [0,1] with (x * 255).round().astype(np.uint8)."))
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InputError(expected_got(f"{what} shape", "HxWx3 RGB (or HxW / HxWx1 gray, HxWx4 RGBA)", image.shape))
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(expected_got(f"{what} shape", "a non-empty image", image.shape))
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[..., :3] if image.shape[2] == 4 else image


def _as_images(images: Any) -> tuple[list[np.ndarray], bool]:
    """Accept one image, a list of images, or an NxHxWxC batch. Returns (images, was_single)."""
    if isinstance(images, np.ndarray):
        images = np.asarray(images)
        # Rank 3 is one HxWxC image (C in 1, 3, 4); pass gray batches as a list of HxW arrays.
        if images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (1, 3, 4)):
            return [_to_rgb(images, "image")], True
        if images.ndim != 4:
            raise InputError(expected_got("images shape", "HxWx3, NxHxWx3, or a list of HxWx3 arrays", images.shape))
        images = list(images)
    elif not isinstance(images, (list, tuple)):
        raise InputError(expected_got("images", "a numpy array or a list of them", type(images).__name__))
    if len(images) == 0:
        raise InputError(expected_got("images", "at least one image", "none"))
    return [_to_rgb(img, f"images[{i}]") for i, img in enumerate(images)], False


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_box(v: Any) -> bool:
    if isinstance(v, np.ndarray):
        return v.shape == (4,)
    return isinstance(v, (list, tuple)) and len(v) == 4 and all(_is_number(c) for c in v)


def _check_box(box: Any, shape: tuple[int, ...], what: str) -> Box:
    """Pixel box (x1, y1, x2, y2): x1, y1 inclusive, x2, y2 exclusive; floats round to the nearest pixel."""
    h, w = shape[:2]
    try:
        x1, y1, x2, y2 = (int(round(float(c))) for c in box)
    except (TypeError, ValueError, OverflowError):  # OverflowError: inf
        raise InputError(expected_got(what, "4 numbers (x1, y1, x2, y2)", repr(box))) from None
    if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        raise InputError(expected_got(what, f"a non-empty box inside the {w}x{h} image "
                                            f"(0 <= x1 < x2 <= {w}, 0 <= y1 < y2 <= {h})", (x1, y1, x2, y2)))
    return x1, y1, x2, y2


def _crops(images: list[np.ndarray], rois: Any, single: bool) -> list[np.ndarray]:
    """Cut the crops in output order: image by image, each image's boxes in the order given."""
    if rois is None:
        return images
    if single and (_is_box(rois) or (isinstance(rois, (list, tuple, np.ndarray)) and len(rois) > 0
                                     and all(_is_box(b) for b in rois))):
        rois = [rois]  # one image: a box or a list of boxes is that image's boxes
    if not isinstance(rois, (list, tuple)) or len(rois) != len(images):
        got = f"{len(rois)} entries" if isinstance(rois, (list, tuple)) else type(rois).__name__
        raise InputError(expected_got("rois", f"a list with one entry per image ({len(images)}): None, a box "
                                              "(x1, y1, x2, y2) or a list of boxes", got))
    crops = []
    for i, (image, entry) in enumerate(zip(images, rois)):
        if entry is None:
            crops.append(image)
            continue
        boxes = [entry] if _is_box(entry) else entry
        if not isinstance(boxes, (list, tuple, np.ndarray)):
            raise InputError(expected_got(f"rois[{i}]", "None, a box (x1, y1, x2, y2) or a list of boxes",
                                          type(entry).__name__))
        for k, box in enumerate(boxes):
            x1, y1, x2, y2 = _check_box(box, image.shape, f"rois[{i}][{k}]")
            crops.append(image[y1:y2, x1:x2])
    return crops


def resize(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize HxWx3 uint8 to height x width: INTER_AREA when shrinking both sides, else INTER_LINEAR."""
    h, w = crop.shape[:2]
    if (h, w) == (height, width):
        return crop
    interp = cv2.INTER_AREA if h >= height and w >= width else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=interp)


# ----------------------------------------------------------------------------- guard


class Guard:
    """A loaded bundle with its engine and defense. Build with `Guard.from_bundle`."""

    def __init__(self, bundle: Bundle, engine: Engine, *, seed: int | None = None, backend: str = "auto",
                 warn_codec_mismatch: bool = True) -> None:
        self.bundle = bundle
        self.engine = engine
        d = bundle.defense
        self.cpu_defense = d.on_cpu
        # The JPEG backend the CPU defense uses (None when the bundle needs none on the CPU).
        self.backend: str | None = jpeg.resolve_backend(backend) if self.cpu_defense else None
        if self.cpu_defense and d.per_member and engine.use_fused and not engine.fused_per_member:
            raise BundleError(expected_got("fused graph input", "per-member batches [M,N,3,H,W] (defense.per_member)",
                                           "a shared input [N,3,H,W]",
                                           "Re-export the bundle, or pass use_fused=False."))
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
        if self.cpu_defense and warn_codec_mismatch and self.backend != d.codec.backend:
            self._warn_codec_mismatch()

    @classmethod
    def from_bundle(
        cls,
        path: str | Path | None = None,
        *,
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        use_fused: bool | None = None,
        seed: int | None = None,
        backend: str = "auto",
        warn_codec_mismatch: bool = True,
        strict_providers: bool = True,
        verify: bool = True,
        trusted_keys: Sequence[Any] | None = None,
        require_signed: bool = False,
        provider_options: dict[str, dict[str, Any]] | None = None,
        spin: bool = True,
    ) -> Guard:
        """Load a bundle (None: the shipped default) and open its sessions.

        providers: ordered execution providers, e.g. ["tensorrt", "cuda", "cpu"] (default ["cpu"]).
        threads: onnxruntime intra-op threads (None: onnxruntime's choice). use_fused: None uses the
        fused graph when the bundle has one. seed: seeds the SLQ generator. backend: JPEG backend
        ("auto", "turbojpeg", "opencv"). verify: check every file's sha256. trusted_keys (public key files) /
        require_signed: refuse a bundle that is not signed by one of them (`edge_guard.signing`).
        spin: onnxruntime's worker threads spin-wait between calls (False: they sleep; see `Engine`).
        """
        bundle = load_bundle(default_bundle_path() if path is None else path, verify=verify,
                             trusted_keys=trusted_keys, require_signed=require_signed)
        engine = Engine(bundle, providers=providers, intra_op_threads=threads, use_fused=use_fused,
                        strict=strict_providers, provider_options=provider_options, spin=spin)
        return cls(bundle, engine, seed=seed, backend=backend, warn_codec_mismatch=warn_codec_mismatch)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.bundle.classes

    def _warn_codec_mismatch(self) -> None:
        codec = self.bundle.defense.codec
        fix = ("install libturbojpeg (apt-get install libturbojpeg0) so backend 'turbojpeg' loads"
               if codec.backend == "turbojpeg" else "pass backend='opencv'")
        warnings.warn(
            f"bundle {self.bundle.name!r} was vaccinated with JPEG backend {codec.backend!r} "
            f"(libjpeg-turbo {codec.version}) but this runtime uses {self.backend!r}; predictions may "
            f"differ slightly. To fix: {fix}.", RuntimeWarning, stacklevel=4)

    def _slq_rng(self) -> np.random.Generator:
        """A child generator drawn under the lock, so SLQ itself runs outside it (in parallel)."""
        with self._rng_lock:
            return np.random.default_rng(self._rng.integers(0, 2**63))

    def defend(self, batch: np.ndarray) -> np.ndarray:
        """Apply the manifest's CPU defense to NxHxWx3 uint8 RGB crops (`edge_guard.defense.member_inputs`).

        Returns NxHxWx3 (shared preprocessing, or none) or MxNxHxWx3 (per member, manifest order).
        """
        if not self.cpu_defense:
            return batch
        return member_inputs(batch, self.bundle.defense, self.bundle.members, rng=self._slq_rng(),
                             backend=str(self.backend))

    def to_tensor(self, images: np.ndarray) -> np.ndarray:
        """uint8 ...xHxWx3 -> float32 ...x3xHxW with x = (uint8 * scale - mean) / std (the manifest's input)."""
        return self.bundle.input.to_tensor(images)

    def warmup(self, n: int = 2) -> None:
        """Run `n` dummy batches through the engine."""
        self.engine.warmup(n)

    def classify(self, images: np.ndarray | Sequence[np.ndarray], rois: Any = None, *,
                 session_ms: list[float] | None = None) -> list[Prediction]:
        """Classify images or their regions of interest.

        images: HxWx3 uint8 RGB, a list of them, or an NxHxWx3 batch (gray and RGBA are converted).
        rois: None (each whole image), or one entry per image: None (whole image), a box
            (x1, y1, x2, y2) in pixels (x2, y2 exclusive), or a list of boxes. With a single image,
            a box or a list of boxes may be passed directly.
        Returns one Prediction per crop, image by image, each image's boxes in the order given.
        session_ms: a list that receives each onnxruntime call's wall time in ms (`Engine.run`).
        """
        t0 = time.perf_counter()
        imgs, single = _as_images(images)
        crops = _crops(imgs, rois, single)
        if len(crops) > MAX_CROPS:
            raise InputError(expected_got("crops per classify call", f"at most {MAX_CROPS}", len(crops),
                                          "Classify in smaller batches."))
        if not crops:
            return []
        h, w = self.bundle.input.height, self.bundle.input.width
        batch = np.stack([resize(c, h, w) for c in crops])
        t1 = time.perf_counter()
        defended = self.defend(batch)
        t2 = time.perf_counter()
        logits = self.engine.run(self.to_tensor(defended), session_ms=session_ms)
        t3 = time.perf_counter()
        class_ids, confidence, votes = vote(softmax(logits), self.bundle.vote)
        t4 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "defense": t2 - t1, "inference": t3 - t2, "vote": t4 - t3, "total": t4 - t0}
        timings = {k: v * 1000.0 for k, v in timings.items()}
        return [
            Prediction(class_id=int(c), class_name=self.bundle.classes[int(c)], confidence=float(p),
                       votes=tuple(int(v) for v in vs), timings_ms=dict(timings))
            for c, p, vs in zip(class_ids, confidence, votes)
        ]

    def run(self, source: Any, *, rois: Sequence[Box] | None = None, regions: Any = None, detector: Any = None,
            min_confidence: float = 0.0, suspect_below: float | None = None, max_frames: int | None = None,
            stats: Any = None, **source_options: Any) -> Iterator[Any]:
        """Classify every frame of a source; yields one `edge_guard.stream.FrameResult` per frame.

        source: a spec `edge_guard.sources.open_source` reads (a video file, images, a folder, a camera
        index or /dev/videoN, "-" for MJPEG on stdin, an rtsp:// or http:// URL) or an open Source.
        Regions: `rois` (the same boxes in every frame), a `detector` (edge_guard.detector.Detector), or
        `regions` (edge_guard.regions.Regions); none of them: the centre square of each frame.

            for result in guard.run("/dev/video0", rois=[(600, 200, 728, 328)]):
                act_on(result.regions[0].class_id, result.regions[0].suspect)
        """
        from edge_guard.regions import Regions
        from edge_guard.sources import Source, open_source
        from edge_guard.stream import run_stream

        if regions is None:
            regions = Regions.from_detector(detector) if detector is not None else Regions.fixed(rois or [])
        opened = source if isinstance(source, Source) else open_source(source, **source_options)
        return run_stream(self, opened, regions, min_confidence=min_confidence, max_frames=max_frames, stats=stats,
                          suspect_below=suspect_below,  # None: the manifest's alarm, else DEFAULT_SUSPECT_BELOW
                          backend=str(self.backend or "auto"))
