"""The demo's second half: the defense at work on the clip's own crops.

An attacker who knows only an undefended model of the same task crafts small perturbations (PGD,
Linf eps 8/255, i.e. at most eight grey levels per pixel) that flip that model's answers. The same
attacked crops then go through the vaccinated ensemble with its JPEG defense: most stay right, and
the members' disagreement raises the `suspect` flag on many of those that do not (the gray-box
threat of Das et al. 2017; an attacker who also knows the defense is a harder case, see
docs/results.md).

With the training extra installed (torch), the attack is crafted live on the crops just rendered
(`edge_guard.training.demo_craft`). Without it, the demo uses the adversarial crops it ships: crafted
the same way on rendered signs (never dataset images) by the command in the undefended bundle's
README, and loaded here with plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_guard.bundle import SHIPPED_BUNDLES
from edge_guard.errors import BundleError, expected_got
from edge_guard.guard import Guard
from edge_guard.stream import alarm_thresholds, is_suspect

UNDEFENDED_BUNDLE = "gtsrb-undefended"  # a clean-trained model of the same task, no defense (see its README)
SHIPPED_ATTACK = "demo_attack.npz"  # in the undefended bundle's folder
EPS_LEVELS = 8  # the attack budget in 8-bit grey levels (8/255 in [0, 1] units)


@dataclass(frozen=True)
class AttackSet:
    """clean and adversarial: N x H x W x 3 uint8 RGB crops; labels: N true class ids; how: what made it."""

    clean: np.ndarray
    adversarial: np.ndarray
    labels: np.ndarray
    how: str


@dataclass(frozen=True)
class Scored:
    """How one model read the crops: per crop, right and suspect on the clean and the attacked set."""

    name: str
    members: int
    clean_right: np.ndarray
    attacked_right: np.ndarray
    clean_suspect: np.ndarray
    attacked_suspect: np.ndarray

    @property
    def n(self) -> int:
        return len(self.clean_right)


@dataclass(frozen=True)
class AttackResult:
    attack: AttackSet
    undefended: Scored
    defended: Scored
    panel: Path

    def lines(self) -> list[str]:
        n = self.undefended.n
        out = [f"attack: {self.attack.how}", f"{'':<34}{'clean':>9}{'attacked':>10}   suspect (clean / attacked)"]
        for s in (self.undefended, self.defended):
            flag = (f"   {s.clean_suspect.sum():>3} / {s.attacked_suspect.sum():<3}" if s.members > 1
                    else "   - (one model, no vote)")
            out.append(f"  {s.name:<32}{s.clean_right.sum():>5} / {n:<3}{s.attacked_right.sum():>5} / {n:<3}{flag}")
        flipped = self.undefended.clean_right & ~self.undefended.attacked_right
        d = self.defended
        kept, wrong = int((flipped & d.attacked_right).sum()), flipped & ~d.attacked_right
        out.append(f"of the {int(flipped.sum())} crops the attack flips on the undefended model, the ensemble reads "
                   f"{kept} right; of the {int(wrong.sum())} it gets wrong, {int((wrong & d.attacked_suspect).sum())} "
                   f"are flagged suspect")
        if not d.attacked_suspect.any():
            out.append("  (the flag rises on split votes or low confidence; an attack that moves no member leaves it"
                       " down)")
        out.append(f"wrote {self.panel} (rows: clean, attacked, the change x{127 // EPS_LEVELS})")
        return out


def _check_crops(name: str, value: np.ndarray, like: np.ndarray | None = None) -> np.ndarray:
    """uint8 N x H x W x 3 crops (of `like`'s shape when given), else BundleError."""
    ok = value.shape == like.shape if like is not None else value.ndim == 4 and value.shape[-1] == 3
    if value.dtype != np.uint8 or not ok:
        shape = like.shape if like is not None else value.shape if ok else "(N, H, W, 3)"
        raise BundleError(expected_got(f"{SHIPPED_ATTACK} array {name!r}", f"uint8 {shape}",
                                       f"{value.dtype} {value.shape}", "Regenerate it with the command in the "
                                       f"{UNDEFENDED_BUNDLE} README."))
    return value


def load_shipped(path: str | Path | None = None) -> AttackSet:
    """The adversarial crops shipped beside the undefended bundle (see the module docstring)."""
    path = Path(path) if path is not None else SHIPPED_BUNDLES / UNDEFENDED_BUNDLE / SHIPPED_ATTACK
    try:
        with np.load(path, allow_pickle=False) as data:
            clean, adversarial, labels, how = (data[k] for k in ("clean", "adversarial", "labels", "how"))
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(expected_got("shipped adversarial crops", f"{path} with clean, adversarial, labels, how",
                                       f"{exc.__class__.__name__}: {exc}",
                                       "Reinstall edge-guard, or install the training extra to craft them live.")
                          ) from None
    clean = _check_crops("clean", clean)
    adversarial = _check_crops("adversarial", adversarial, like=clean)
    labels = labels.astype(np.int64)
    if labels.shape != clean.shape[:1]:
        raise BundleError(expected_got(f"{SHIPPED_ATTACK} labels", f"{clean.shape[0]} class ids", labels.shape))
    return AttackSet(clean, adversarial, labels,
                     f"{how} (shipped crops: install the training extra to craft them live)")


def craft_or_load(crops: np.ndarray, labels: np.ndarray) -> AttackSet:
    """Craft the attack live on `crops` when torch is installed, else the shipped crops."""
    try:
        from edge_guard.training.demo_craft import craft_on_undefended
    except ImportError:  # the runtime alone: no torch
        return load_shipped()
    adversarial, how = craft_on_undefended(crops, labels)
    return AttackSet(crops, adversarial, labels, how + " (crafted live on this clip's crops)")


def score(guard: Guard, attack: AttackSet, name: str, suspect_below: float | None = None) -> Scored:
    """Right answers and suspect flags on both sets, flagged as `infer` flags them (`stream.alarm_thresholds`:
    fewer than `suspect_below` of the members agree, else the bundle's measured alarm)."""
    below, confidence_below = alarm_thresholds(guard, suspect_below)
    members = len(guard.bundle.members)
    out = []
    for crops in (attack.clean, attack.adversarial):
        preds = guard.classify(crops)
        out.append(np.array([p.class_id == y for p, y in zip(preds, attack.labels)], bool))
        agreement = np.array([p.votes.count(p.class_id) / members for p in preds])
        confidence = np.array([p.confidence for p in preds])
        out.append(is_suspect(agreement, confidence, below, confidence_below) & (members > 1))
    clean_right, clean_suspect, attacked_right, attacked_suspect = out
    return Scored(name, members, clean_right, attacked_right, clean_suspect, attacked_suspect)


def write_panel(path: Path, attack: AttackSet, scale: int = 3) -> Path:
    """A PNG with the clean crops, the attacked crops and their difference amplified 127 // EPS_LEVELS times
    (x15 at 8 levels), grey where nothing changed."""
    diff = attack.adversarial.astype(np.int16) - attack.clean.astype(np.int16)
    amplified = np.clip(128 + diff * (127 // EPS_LEVELS), 0, 255).astype(np.uint8)
    rows = [np.concatenate(list(block), axis=1) for block in (attack.clean, attack.adversarial, amplified)]
    panel = np.concatenate(rows, axis=0)
    panel = cv2.resize(panel, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(path), np.ascontiguousarray(panel[..., ::-1]))
    return path


def run_attack_demo(folder: Path, crops: np.ndarray, labels: np.ndarray, ensemble: Guard,
                    threads: int | None = 1) -> AttackResult:
    """Attack `crops` (N x H x W x 3 uint8 at the bundle's input size), then score both models on them."""
    attack = craft_or_load(crops, labels)
    undefended = Guard.from_bundle(SHIPPED_BUNDLES / UNDEFENDED_BUNDLE, threads=threads)
    return AttackResult(attack, score(undefended, attack, f"undefended ({UNDEFENDED_BUNDLE})"),
                        score(ensemble, attack, f"vaccinated ({ensemble.bundle.name})"),
                        write_panel(folder / "attack.png", attack))
