"""The AutoAttack rule on hand-made cells: an image is robust only if it survives every attack."""

from __future__ import annotations

import numpy as np
import pytest

from edge_guard.training.worstcase import pack_bits, robust_mask, unpack_bits, worst_case, worst_case_table


def test_bits_round_trip_for_any_length() -> None:
    for n in (1, 7, 8, 9, 200):
        bits = np.random.default_rng(n).random(n) < 0.5
        assert np.array_equal(unpack_bits(pack_bits(bits), n), bits)


def test_different_attacks_breaking_different_images_add_up() -> None:
    clean = np.array([1, 1, 1, 1, 1, 0], bool)
    a = np.array([0, 1, 1, 1, 1, 1], bool)  # breaks image 0
    b = np.array([1, 0, 1, 1, 1, 1], bool)  # breaks image 1
    assert robust_mask(clean, [a, b]).tolist() == [False, False, True, True, True, False]

    def cell(threat, attack, bits):
        return {"threat": threat, "attack": attack, "eps": 4 if attack != "none" else None, "system": "ensemble",
                "n": 6, "correct_bits": pack_bits(bits)}

    cells = [cell("clean", "none", clean), cell("adaptive", "pgd", a), cell("adaptive", "apgd-ce", b),
             {**cell("adaptive", "deepfool", np.zeros(6, bool)), "eps": None}]  # minimum-norm: not in the rule
    (row,) = worst_case(cells)
    assert row["attacks"] == ["apgd-ce", "pgd"]
    assert row["accuracy"] == {"pgd": pytest.approx(4 / 6), "apgd-ce": pytest.approx(4 / 6)}
    assert row["robust_accuracy"] == pytest.approx(3 / 6)  # below both single attacks
    assert "**50.0**" in worst_case_table([row], "adaptive")
