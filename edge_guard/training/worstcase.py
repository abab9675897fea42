"""The worst case over attacks, per image (the AutoAttack rule of Croce & Hein 2020).

An image counts as robust at a budget eps only if the system classified it correctly when clean AND
it survived every Linf attack run at that eps (FGSM, PGD, APGD-CE, APGD-DLR, ...). Robust accuracy is
the share of such images; it is at most the accuracy under the strongest single attack, and lower
whenever different attacks break different images.

Evaluation cells carry each image's outcome as a bit string (`pack_bits`: 1 = classified correctly),
so the rule is applied to stored cells without re-running anything.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

LINF_ATTACKS = ("fgsm", "pgd", "apgd-ce", "apgd-dlr")  # attacks with an eps budget: one cell per eps


def pack_bits(correct: Sequence[bool] | np.ndarray) -> str:
    """Per-image correctness (N,) -> a compact base64 string (8 images per byte)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii")


def unpack_bits(text: str, n: int) -> np.ndarray:
    """The inverse of `pack_bits` for n images: bool (n,)."""
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)


def robust_mask(clean_correct: np.ndarray, attacked_correct: Iterable[np.ndarray]) -> np.ndarray:
    """bool (n,): correct when clean and after every attack (each (>= n,), the first n images used)."""
    mask = np.asarray(clean_correct, dtype=bool).copy()
    for correct in attacked_correct:
        mask &= np.asarray(correct, dtype=bool)[:len(mask)]
    return mask


def worst_case(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (threat, eps, system) with >= 1 Linf attack cell that carries per-image bits.

    Row: threat, eps (1/255 units), system, attacks (names combined), n, clean_accuracy (on those n),
    accuracy per attack, robust_accuracy (the AutoAttack rule), and the attack that alone is worst.
    Cells of one group may cover different image counts (adaptive limits): the smallest n is used.
    """
    clean = {c["system"]: c for c in cells if c["threat"] == "clean" and "correct_bits" in c}
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for c in cells:
        if c["threat"] != "clean" and c["attack"] in LINF_ATTACKS and "correct_bits" in c and c["system"] in clean:
            groups.setdefault((c["threat"], c["eps"], c["system"]), []).append(c)
    rows = []
    for (threat, eps, system), group in groups.items():
        n = min(c["n"] for c in group)
        clean_ok = unpack_bits(clean[system]["correct_bits"], clean[system]["n"])[:n]
        per = {c["attack"]: unpack_bits(c["correct_bits"], c["n"])[:n] for c in group}
        robust = robust_mask(clean_ok, per.values())
        acc = {a: float((clean_ok & ok).mean()) for a, ok in per.items()}
        rows.append({"threat": threat, "eps": eps, "system": system, "attacks": sorted(per), "n": n,
                     "clean_accuracy": float(clean_ok.mean()), "accuracy": acc,
                     "robust_accuracy": float(robust.mean()), "strongest": min(acc, key=acc.__getitem__)})
    return sorted(rows, key=lambda r: (r["threat"], r["system"], r["eps"]))


def worst_case_table(rows: Sequence[dict[str, Any]], threat: str) -> str:
    """Markdown: one line per system and eps, robust accuracy (%) under the rule and each attack's accuracy."""
    rows = [r for r in rows if r["threat"] == threat]
    if not rows:
        return "(no per-image results: no Linf attack was run for this threat)"
    attacks = sorted({a for r in rows for a in r["attacks"]}, key=LINF_ATTACKS.index)
    lines = ["| system | eps | n | clean | " + " | ".join(attacks) + " | **worst case** |",
             "|---" * (len(attacks) + 5) + "|"]
    for r in rows:
        cells = [f"{100 * r['accuracy'][a]:.1f}" if a in r["accuracy"] else "-" for a in attacks]
        lines.append(f"| {r['system']} | {r['eps']}/255 | {r['n']} | {100 * r['clean_accuracy']:.1f} | "
                     + " | ".join(cells) + f" | **{100 * r['robust_accuracy']:.1f}** |")
    return "\n".join(lines)
