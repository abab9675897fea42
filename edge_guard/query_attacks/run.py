"""Run a query attack on a batch of images against a bundle and summarise it (success, queries, alarm)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_guard.errors import InputError, expected_got
from edge_guard.guard import Guard, resize
from edge_guard.query_attacks.hopskipjump import hopskipjump
from edge_guard.query_attacks.oracle import Oracle
from edge_guard.query_attacks.square import square_attack
from edge_guard.spec import DEFAULT_SUSPECT_BELOW
from edge_guard.stream import alarm_thresholds, is_suspect

QUERY_ATTACKS = ("square", "hopskipjump")


@dataclass(frozen=True)
class QueryAttackResult:
    """One query attack on N images. Success is over the images the bundle classified correctly.

    adv: uint8 (N, H, W, 3) adversarial images (the clean image where the attack failed or did not run);
    correct: the bundle was right on the clean image; fooled: wrong on adv, found within eps and the
    budget; queries: per image, spent until fooled (else the whole budget; 0 when not attacked);
    agreement, confidence: the share of members voting for the decision on adv and the vote's confidence (the
    suspect flag's inputs); suspect_below / confidence_below: the flag's thresholds (`stream.alarm_thresholds`).
    """

    attack: str
    eps: float  # [0, 1] units
    budget: int  # queries per image
    adv: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    correct: np.ndarray = field(repr=False)
    fooled: np.ndarray = field(repr=False)
    queries: np.ndarray = field(repr=False)
    agreement: np.ndarray = field(repr=False)
    confidence: np.ndarray = field(repr=False)
    suspect_below: float = DEFAULT_SUSPECT_BELOW
    confidence_below: float = 0.0
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def success_rate(self) -> float:
        """Fooled / correctly classified (NaN when none was correct)."""
        c = int(self.correct.sum())
        return float(self.fooled.sum()) / c if c else math.nan

    @property
    def median_queries(self) -> float:
        """Median queries over the fooled images (NaN when none was fooled)."""
        return float(np.median(self.queries[self.fooled])) if self.fooled.any() else math.nan

    @property
    def flagged_rate(self) -> float:
        """Share of the fooled images the suspect flag raises (agreement or confidence below its threshold)."""
        flagged = is_suspect(self.agreement, self.confidence, self.suspect_below, self.confidence_below)
        return float(flagged[self.fooled].mean()) if self.fooled.any() else math.nan

    def to_dict(self) -> dict[str, Any]:
        nan = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
        return {"attack": self.attack, "eps": self.eps, "eps_levels": round(self.eps * 255, 3), "budget": self.budget,
                "n": self.n, "n_correct": int(self.correct.sum()), "n_fooled": int(self.fooled.sum()),
                "success_rate": nan(self.success_rate), "median_queries": nan(self.median_queries),
                "mean_queries_attacked": nan(float(self.queries[self.correct].mean()) if self.correct.any()
                                             else math.nan),
                "suspect_below": self.suspect_below,
                "confidence_below": self.confidence_below, "flagged_rate": nan(self.flagged_rate),
                "seconds": round(self.seconds, 2)}

    def lines(self) -> list[str]:
        d = self.to_dict()
        pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        med = "n/a" if d["median_queries"] is None else f"{d['median_queries']:.0f}"
        return [f"{self.attack} eps {d['eps_levels']:g}/255, {self.budget} queries per image: fooled "
                f"{d['n_fooled']} of the {d['n_correct']} images the bundle got right ({pct(d['success_rate'])}), "
                f"median {med} queries; suspect flag raised on {pct(d['flagged_rate'])} of the fooled "
                f"({self.seconds:.0f} s)"]


def query_attack(guard: Guard, images: np.ndarray, labels: np.ndarray | None = None, *, attack: str = "square",
                 eps: float = 8 / 255, queries: int = 1000, seed: int = 0,
                 suspect_below: float | None = None, **options: Any) -> QueryAttackResult:
    """Attack each image the bundle classifies correctly with `attack` ("square" or "hopskipjump").

    images: uint8 (N, H, W, 3) RGB (resized to the bundle's input size as `Guard.classify` would);
    labels: (N,) true class ids, or None to attack the bundle's own clean decisions (flip what the device
    says). eps: Linf budget in [0, 1] units. queries: budget per image. suspect_below: the alarm
    threshold reported on (default: the bundle's, else DEFAULT_SUSPECT_BELOW). options: passed on to
    `square_attack` (p_init) or `hopskipjump` (iterations, gamma, max_evals).
    """
    if attack not in QUERY_ATTACKS:
        raise InputError(expected_got("attack", " or ".join(QUERY_ATTACKS), repr(attack)))
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 1:
        raise InputError(expected_got("queries", "an integer >= 1", repr(queries)))
    if not 0 < eps <= 1:
        raise InputError(expected_got("eps", "a Linf budget in (0, 1] (8/255 = 8 grey levels)", eps))
    b = guard.bundle.input
    x8 = np.stack([resize(np.asarray(im), b.height, b.width) for im in images]) if len(images) else None
    if x8 is None or x8.dtype != np.uint8 or x8.ndim != 4 or x8.shape[3] != 3:
        raise InputError(expected_got("images", "a non-empty batch of uint8 RGB images (N, H, W, 3)",
                                      "empty" if x8 is None else f"{x8.dtype} {x8.shape}"))
    t0 = time.perf_counter()
    oracle = Oracle(guard)
    clean = oracle.labels(x8 / 255.0)
    y = clean if labels is None else np.asarray(labels, dtype=np.int64)
    if y.shape != (len(x8),):
        raise InputError(expected_got("labels", f"({len(x8)},) class ids", y.shape))
    correct = clean == y
    adv, fooled, used = x8.copy(), np.zeros(len(x8), bool), np.zeros(len(x8), np.int64)
    idx = np.nonzero(correct)[0]
    if idx.size:
        fn = square_attack if attack == "square" else hopskipjump
        run = fn(oracle, x8[idx] / 255.0, y[idx], eps=eps, queries=queries, seed=seed, **options)
        adv[idx] = np.clip(np.rint(run.adv * 255), 0, 255).astype(np.uint8)
        fooled[idx], used[idx] = run.fooled, run.queries
    final, agreement, confidence = oracle.decide(adv / 255.0)  # what the device answers on the images handed back
    fooled &= final != y  # a random (SLQ) member may answer differently on a fresh draw: count what it says now
    below, confidence_below = alarm_thresholds(guard, suspect_below)
    return QueryAttackResult(attack, float(eps), queries, adv, y, correct, fooled, used, agreement, confidence,
                             below, confidence_below, time.perf_counter() - t0)


def save_images(folder: str | Path, result: QueryAttackResult, names: list[str]) -> None:
    """Write each adversarial image as a lossless PNG (a JPEG would re-encode the perturbation)."""
    import cv2

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, img in zip(names, result.adv):
        if not cv2.imwrite(str(out / f"{Path(name).stem}.png"), np.ascontiguousarray(img[..., ::-1])):
            raise InputError(expected_got(f"writing {out / name}", "a writable folder", "a failed write"))


def load_images(folder: str | Path, classes: tuple[str, ...], limit: int | None = None
                ) -> tuple[np.ndarray | list[np.ndarray], np.ndarray | None, list[str]]:
    """Images under `folder` (recursively, sorted), with labels from their folder names when every image sits
    in a folder named after a class of the bundle (its name or its id), else None (attack the decisions).

    Returns (images: list of uint8 HxWx3 RGB, labels (N,) or None, file paths as strings).
    """
    from edge_guard.sources.images import list_image_files, read_image

    files = list_image_files([folder], recursive=True)[:limit]
    images, kept = [], []
    for f in files:
        img = read_image(f)
        if img is not None:
            images.append(img)
            kept.append(f)
    if not images:
        raise InputError(expected_got(f"images in {folder}", "at least one decodable image", "none"))
    ids = {name: i for i, name in enumerate(classes)} | {str(i): i for i in range(len(classes))}
    parents = [f.parent.name for f in kept]
    labels = np.array([ids[p] for p in parents], np.int64) if all(p in ids for p in parents) else None
    return images, labels, [str(f) for f in kept]
