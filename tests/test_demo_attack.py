"""The demo's attack half: shipped crops, the no-torch fallback, scoring and the panel."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from edge_guard.bundle import SHIPPED_BUNDLES
from edge_guard.demo_attack import (
    EPS_LEVELS,
    SHIPPED_ATTACK,
    UNDEFENDED_BUNDLE,
    AttackSet,
    craft_or_load,
    load_shipped,
    score,
    write_panel,
)
from edge_guard.errors import BundleError


def test_shipped_crops_are_small_attacks_that_the_undefended_bundle_falls_for():
    attack = load_shipped()
    assert attack.clean.shape == attack.adversarial.shape and attack.clean.shape[1:] == (32, 32, 3)
    change = np.abs(attack.adversarial.astype(np.int16) - attack.clean.astype(np.int16))
    assert change.max() <= EPS_LEVELS and change.mean() > 1  # within the budget, and not a no-op
    from edge_guard.guard import Guard

    undefended = score(Guard.from_bundle(SHIPPED_BUNDLES / UNDEFENDED_BUNDLE, threads=1), attack, "undefended")
    assert undefended.clean_right.sum() >= 0.8 * undefended.n and undefended.attacked_right.sum() <= 0.2 * undefended.n


def test_the_shipped_crops_are_what_their_command_makes(tmp_path):
    pytest.importorskip("torch")  # the training extra; the dev set-up always has it
    from edge_guard.training.demo_craft import write_shipped

    made = np.load(write_shipped(tmp_path / SHIPPED_ATTACK))
    shipped = load_shipped()
    np.testing.assert_array_equal(made["clean"], shipped.clean)  # the same rendered, decoded, resized crops
    np.testing.assert_array_equal(made["labels"], shipped.labels)
    # PGD takes the sign of float gradients: allow a rare tie to fall the other way on another CPU
    assert np.mean(made["adversarial"] != shipped.adversarial) < 0.01


def test_without_torch_the_demo_uses_the_shipped_crops(monkeypatch):
    monkeypatch.setitem(sys.modules, "edge_guard.training.demo_craft", None)  # import now raises ImportError
    crops = np.zeros((2, 32, 32, 3), np.uint8)
    attack = craft_or_load(crops, np.array([1, 2]))
    assert "shipped crops" in attack.how and len(attack.clean) == len(load_shipped().clean)


def test_a_corrupt_shipped_file_is_named_with_what_was_expected(tmp_path):
    bad = tmp_path / SHIPPED_ATTACK
    np.savez(bad, clean=np.zeros((2, 32, 32, 3), np.float32), adversarial=np.zeros((2, 32, 32, 3), np.uint8),
             labels=np.zeros(2, np.int16), how=np.array("x"))
    with pytest.raises(BundleError, match=r"expected uint8 \(2, 32, 32, 3\), got float32"):
        load_shipped(bad)
    bad.write_bytes(b"not an npz")
    with pytest.raises(BundleError, match="shipped adversarial crops"):
        load_shipped(bad)


@dataclass
class _Pred:
    class_id: int
    votes: tuple[int, ...]
    confidence: float = 1.0


class _Guard:
    """Answers by the crop's mean brightness: dark crops 0, bright 1; members split on mid-grey ones."""

    class bundle:  # noqa: N801 - stands in for Guard.bundle
        members = (0, 1, 2)

    def classify(self, crops):
        out = []
        for c in crops:
            m = c.mean()
            out.append(_Pred(0, (0, 0, 0)) if m < 100 else _Pred(1, (1, 1, 1)) if m > 150 else _Pred(1, (1, 0, 2)))
        return out


def test_score_counts_right_answers_and_suspect_votes():
    clean = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (10, 200, 200)])
    adversarial = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (128, 200, 10)])
    s = score(_Guard(), AttackSet(clean, adversarial, np.array([0, 1, 1]), "test"), "fake", suspect_below=0.6)
    assert s.clean_right.tolist() == [True, True, True] and s.attacked_right.tolist() == [False, True, False]
    assert s.clean_suspect.tolist() == [False] * 3 and s.attacked_suspect.tolist() == [True, False, False]


def test_the_panel_shows_clean_attacked_and_the_change(tmp_path):
    clean = np.full((3, 8, 8, 3), 100, np.uint8)
    adversarial = clean.copy()
    adversarial[1] += EPS_LEVELS
    panel = cv2.imread(str(write_panel(tmp_path / "p.png", AttackSet(clean, adversarial, np.zeros(3), "t"), scale=1)))
    assert panel.shape == (24, 24, 3)
    assert panel[20, 4].tolist() == [128] * 3 and panel[20, 12].max() > 200  # no change is grey; the change is bright
