"""Square Attack and HopSkipJump through the runtime on a tiny linear bundle with known answers.

The members predict the brightest RGB channel on average (tests/onnx_fixtures.py). An image with red
6 grey levels above green is flipped by Linf eps 8/255 (red -3, green +3 everywhere suffices) and
cannot be flipped by eps 2/255 (the gap closes by at most 4 levels), so success and failure are
both known in advance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_guard import Guard
from edge_guard.cli import app
from edge_guard.errors import InputError
from edge_guard.query_attacks import Oracle, hopskipjump, query_attack, square_attack
from edge_guard.query_attacks.square import margin, p_selection
from tests.onnx_fixtures import make_bundle

N = 3


@pytest.fixture(scope="module")
def guard(tmp_path_factory) -> Guard:
    return Guard.from_bundle(make_bundle(tmp_path_factory.mktemp("qa") / "b"), seed=0, threads=1)


def images(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 8, 8, 3): red = 120 + k, green = 114 + k, blue 60, noise of +-2 levels; all class red (0)."""
    rng = np.random.default_rng(0)
    base = np.array([120, 114, 60], np.int64) + np.arange(n)[:, None]
    x = base[:, None, None, :] + rng.integers(-2, 3, size=(n, 8, 8, 3))
    return np.clip(x, 0, 255).astype(np.uint8), np.zeros(n, np.int64)


def test_p_schedule_halves_at_the_papers_iterations() -> None:
    assert p_selection(0.8, 0, 10000) == 0.8
    assert p_selection(0.8, 11, 10000) == 0.4
    assert p_selection(0.8, 201, 10000) == 0.1
    assert p_selection(0.8, 9999, 10000) == pytest.approx(0.8 / 512)
    assert p_selection(0.8, 100, 1000) == pytest.approx(0.8 / 16)  # 1000 of 10000 rescaled


def test_margin_is_negative_exactly_when_misclassified() -> None:
    scores = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    m = margin(scores, np.array([0, 0]))
    assert m[0] == pytest.approx(np.log(0.6 / 0.3)) and m[1] == pytest.approx(np.log(0.2 / 0.5))


def test_square_fools_within_eps_and_counts_queries(guard) -> None:
    x, y = images()
    oracle = Oracle(guard)
    run = square_attack(oracle, x / 255.0, y, eps=8 / 255, queries=200, seed=0)
    assert run.fooled.all()
    adv8 = np.rint(run.adv * 255)
    assert np.abs(adv8 - x).max() <= 8 and np.allclose(adv8, run.adv * 255, atol=1e-3)  # on the 8-bit grid
    assert (oracle.labels(run.adv) != y).all()
    assert oracle.queries == run.queries.sum() + N  # one query per image per iteration, plus that check


def test_square_cannot_do_the_impossible_and_spends_the_budget(guard) -> None:
    x, y = images()
    run = square_attack(Oracle(guard), x / 255.0, y, eps=2 / 255, queries=40, seed=0)
    assert not run.fooled.any() and (run.queries == 40).all()


def test_hopskipjump_uses_labels_only_and_finds_a_close_adversarial(guard, monkeypatch) -> None:
    x, y = images(2)
    oracle = Oracle(guard)
    monkeypatch.setattr(oracle, "scores", lambda _x: pytest.fail("a decision-based attack must not read scores"))
    run = hopskipjump(oracle, x / 255.0, y, eps=8 / 255, queries=600, seed=0)
    assert run.fooled.all() and (run.queries <= 600).all()
    assert oracle.queries <= 2 * 600
    adv8 = np.rint(run.adv * 255)
    assert np.abs(adv8 - x).max() <= 8 and (oracle.labels(run.adv) != y).all()


def test_hopskipjump_respects_the_budget_when_eps_is_out_of_reach(guard) -> None:
    x, y = images(1)
    oracle = Oracle(guard)
    run = hopskipjump(oracle, x / 255.0, y, eps=2 / 255, queries=150, seed=0)
    assert not run.fooled.any() and run.queries[0] == 150 and oracle.queries == 150


def test_query_attack_summary_and_own_decisions(guard) -> None:
    x, y = images()
    x[2] = np.array([10, 10, 200], np.uint8)  # a blue image: wrong for label red, not attacked
    result = query_attack(guard, x, y, attack="square", eps=8 / 255, queries=300)
    assert result.correct.tolist() == [True, True, False] and result.queries[2] == 0
    assert result.success_rate == 1.0 and result.median_queries >= 1
    assert 0 <= result.agreement.min() and result.agreement.max() <= 1
    d = result.to_dict()
    assert d["n_fooled"] == 2 and d["eps_levels"] == 8 and "fooled 2 of the 2" in result.lines()[0]
    own = query_attack(guard, x, None, attack="square", eps=8 / 255, queries=5)  # flip what the device says
    assert own.correct.all()


def test_query_attack_bad_input(guard) -> None:
    x, y = images()
    with pytest.raises(InputError):
        query_attack(guard, x, y, attack="boundary")
    with pytest.raises(InputError):
        query_attack(guard, x, y, queries=0)
    with pytest.raises(InputError):
        query_attack(guard, x, y[:2])
    assert math.isnan(query_attack(guard, x, np.full(N, 2), queries=3).success_rate)  # none correct


def test_cli_attack(guard, tmp_path) -> None:
    import cv2

    x, _ = images()
    folder = tmp_path / "imgs" / "red"  # class-folder layout: the folder names the true class
    folder.mkdir(parents=True)
    for i, im in enumerate(x):
        cv2.imwrite(str(folder / f"{i}.png"), im[..., ::-1])
    out = tmp_path / "adv"
    r = CliRunner().invoke(app, ["attack", "--bundle", str(guard.bundle.root), "--images", str(tmp_path / "imgs"),
                                 "--attack", "square", "--queries", "300", "--eps", "8", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "fooled 3 of the 3" in r.output and "labels from folder names" in r.output
    assert len(list(out.glob("*.png"))) == 3 and (out / "results.json").is_file()
    bad = CliRunner().invoke(app, ["attack", "--bundle", str(guard.bundle.root), "--images", str(tmp_path / "none")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_flagged_rate_uses_both_alarm_thresholds_on_the_fooled_images_only():
    from edge_guard.query_attacks import QueryAttackResult

    fooled = np.array([True, True, True, False])
    agreement = np.array([0.5, 1.0, 1.0, 0.25])  # the first fooled image splits the members
    confidence = np.array([0.9, 0.1, 0.9, 0.05])  # the second is unsure; the fourth is not fooled
    z = np.zeros(4)
    result = QueryAttackResult("square", 8 / 255, 10, np.zeros((4, 2, 2, 3), np.uint8), z, np.ones(4, bool), fooled,
                               z, agreement, confidence, suspect_below=0.6, confidence_below=0.2)
    assert result.flagged_rate == pytest.approx(2 / 3)
    assert result.to_dict()["confidence_below"] == 0.2
