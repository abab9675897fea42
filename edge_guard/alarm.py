"""The attack alarm: member disagreement (and low confidence) as a detector, measured as a ROC.

A region is *suspect* when fewer than `suspect_below` of the members vote for the winner, or (when
set) when the ensemble's confidence is below `confidence_below`. The detector's score for an image is
its suspicion: 1 - agreement, with 1 - confidence breaking ties (`suspicion`), so one number orders
images from "members agree, confident" to "members split, unsure".

`roc` and `auc` compare the scores of clean images (negatives) against attacked ones (positives);
`choose_alarm` picks the thresholds that flag at most a target share of clean images (1% by default)
and reports what they catch. The chosen thresholds go into the bundle manifest (`AlarmSpec`), and
`edge_guard.stream` raises the suspect flag with them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge_guard.errors import InputError, expected_got

TIE_WEIGHT = 1e-3  # confidence only orders images of equal agreement (agreement steps are >= 1/M, M <= 100)


def suspicion(agreement: np.ndarray, confidence: np.ndarray | None = None) -> np.ndarray:
    """(N,) detector score, larger = more suspicious: 1 - agreement (+ TIE_WEIGHT * (1 - confidence))."""
    s = 1.0 - np.asarray(agreement, dtype=np.float64)
    if confidence is not None:
        s = s + TIE_WEIGHT * (1.0 - np.asarray(confidence, dtype=np.float64))
    return s


def _check(neg: Sequence[float] | np.ndarray, pos: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, p = np.asarray(neg, dtype=np.float64).ravel(), np.asarray(pos, dtype=np.float64).ravel()
    if n.size == 0 or p.size == 0 or not (np.isfinite(n).all() and np.isfinite(p).all()):
        raise InputError(expected_got("detector scores", "finite scores for >= 1 clean and >= 1 attacked image",
                                      f"{n.size} clean, {p.size} attacked"))
    return n, p


def roc(neg: Sequence[float] | np.ndarray, pos: Sequence[float] | np.ndarray
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): flagging score >= threshold, for every distinct score (descending), from
    (0, 0) at threshold +inf to (1, 1). neg: scores of clean images; pos: of attacked ones."""
    n, p = _check(neg, pos)
    thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([n, p]))[::-1]])
    ns, ps = np.sort(n), np.sort(p)
    fpr = (n.size - np.searchsorted(ns, thresholds, side="left")) / n.size
    tpr = (p.size - np.searchsorted(ps, thresholds, side="left")) / p.size
    return fpr, tpr, thresholds


def auc(neg: Sequence[float] | np.ndarray, pos: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC = P(score of an attacked image > a clean one's) + 0.5 P(equal) (Mann-Whitney)."""
    fpr, tpr, _ = roc(neg, pos)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def detection_at(neg: Sequence[float] | np.ndarray, pos: Sequence[float] | np.ndarray,
                 max_fpr: float = 0.01) -> tuple[float, float, float]:
    """(threshold, fpr, tpr) of the lowest threshold whose false-alarm rate on `neg` is <= max_fpr."""
    fpr, tpr, thr = roc(neg, pos)
    i = int(np.nonzero(fpr <= max_fpr)[0][-1])  # fpr rises as the threshold falls; index 0 (inf) always fits
    return float(thr[i]), float(fpr[i]), float(tpr[i])


@dataclass(frozen=True)
class AlarmChoice:
    """Thresholds for the suspect flag and what they do: fpr on clean images, detection per attack."""

    suspect_below: float  # agreement threshold: suspect when agreement < suspect_below
    confidence_below: float  # 0: off; else also suspect when confidence < confidence_below
    clean_fpr: float
    detection: dict[str, float]
    auc: dict[str, float]
    n_clean: int


def flags(agreement: np.ndarray, confidence: np.ndarray, suspect_below: float, confidence_below: float = 0.0
          ) -> np.ndarray:
    """bool (N,): the suspect flag as `edge_guard.stream` raises it."""
    return (np.asarray(agreement) < suspect_below) | (np.asarray(confidence) < confidence_below)


def choose_alarm(clean: tuple[np.ndarray, np.ndarray], attacks: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 max_fpr: float = 0.01) -> AlarmChoice:
    """The thresholds (agreement, confidence) that flag at most max_fpr of the clean images and catch the
    most attacked images on average over `attacks`. Each entry is (agreement (N,), confidence (N,)).

    Candidates: every agreement level seen (suspect_below just above it), each combined with the
    confidence threshold that spends the rest of the clean budget (or none).
    """
    ca, cc = (np.asarray(v, dtype=np.float64) for v in clean)
    levels = np.unique(np.concatenate([ca] + [np.asarray(a[0], dtype=np.float64) for a in attacks.values()]))
    best: tuple[float, float, float] | None = None
    for i, level in enumerate([-1.0, *levels]):  # -1: flag on agreement never
        nxt = levels[i] if i < len(levels) else level + 0.02
        below = max(0.0, round((level + nxt) / 2, 4))  # halfway to the next level: flags agreement <= level
        base = ca < below
        if base.mean() > max_fpr:
            continue
        # the largest confidence threshold keeping the clean fpr within budget, on the unflagged images
        rest = np.sort(cc[~base])
        allowed = int(np.floor(max_fpr * len(ca))) - int(base.sum())
        conf = float(rest[allowed]) if 0 < allowed < len(rest) else 0.0
        rate = np.mean([flags(a, c, below, conf).mean() for a, c in attacks.values()]) if attacks else 0.0
        if best is None or rate > best[2]:
            best = (below, conf, float(rate))
    assert best is not None  # level -1 flags nothing, so one candidate always fits
    below, conf, _ = best
    return AlarmChoice(
        suspect_below=below, confidence_below=conf, clean_fpr=float(flags(ca, cc, below, conf).mean()),
        detection={k: float(flags(a, c, below, conf).mean()) for k, (a, c) in attacks.items()},
        auc={k: auc(suspicion(ca, cc), suspicion(a, c)) for k, (a, c) in attacks.items()}, n_clean=len(ca))
