"""The attack alarm: ROC/AUC on synthetic scores with known answers, the threshold choice, the manifest
field (optional, backward compatible) and the suspect flag reading it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_guard import Guard
from edge_guard.alarm import auc, choose_alarm, detection_at, flags, roc, suspicion
from edge_guard.bundle import load_bundle, write_manifest
from edge_guard.errors import BundleError, InputError
from edge_guard.regions import Regions
from edge_guard.sources.frame import Frame
from edge_guard.spec import DEFAULT_SUSPECT_BELOW
from edge_guard.stream import alarm_thresholds, classify_frame
from tests.onnx_fixtures import const_bias, make_bundle, read_manifest, solid


def test_auc_known_values() -> None:
    assert auc([0, 1, 2], [3, 4, 5]) == 1.0  # perfectly separated
    assert auc([3, 4, 5], [0, 1, 2]) == 0.0  # perfectly wrong
    assert auc([1, 1, 1], [1, 1]) == 0.5  # all tied
    # Mann-Whitney by hand: pairs (neg, pos) with pos > neg count 1, ties 1/2
    neg, pos = [0.1, 0.4, 0.35, 0.8], [0.9, 0.4, 0.65]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    assert auc(neg, pos) == pytest.approx(wins / 12)
    rng = np.random.default_rng(0)  # two unit normals one sigma apart: AUC = Phi(1 / sqrt 2) = 0.7602
    assert auc(rng.normal(0, 1, 20000), rng.normal(1, 1, 20000)) == pytest.approx(0.7602, abs=0.01)


def test_roc_endpoints_and_detection_at_one_percent() -> None:
    neg = np.arange(100) / 100  # 0.00 .. 0.99
    pos = np.array([0.985, 0.995, 2.0, 0.5])
    fpr, tpr, thr = roc(neg, pos)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1) and np.all(np.diff(fpr) >= 0)
    t, f, d = detection_at(neg, pos, 0.01)
    assert t == 0.985 and f == 0.01 and d == 0.75  # flags 0.99 of the clean, three of the four attacked
    with pytest.raises(InputError):
        auc([], [1.0])


def test_suspicion_orders_by_agreement_then_confidence() -> None:
    s = suspicion(np.array([1.0, 1.0, 0.5]), np.array([0.9, 0.6, 0.99]))
    assert s[0] < s[1] < s[2]


def test_choose_alarm_keeps_the_clean_budget_and_catches_what_it_can() -> None:
    rng = np.random.default_rng(0)
    clean = (np.where(rng.random(1000) < 0.005, 0.5, 1.0), rng.uniform(0.6, 1.0, 1000))  # 0.5% split votes
    attacked = (np.where(rng.random(200) < 0.5, 0.5, 1.0), rng.uniform(0.3, 0.7, 200))  # half split, unsure
    choice = choose_alarm(clean, {"pgd": attacked}, max_fpr=0.01)
    assert choice.clean_fpr <= 0.01 and 0.5 < choice.suspect_below <= 1.0
    assert choice.confidence_below > 0.6  # spends the rest of the budget on confidence
    assert choice.detection["pgd"] == pytest.approx(flags(*attacked, choice.suspect_below,
                                                          choice.confidence_below).mean())
    assert choice.detection["pgd"] > 0.5 and choice.auc["pgd"] > 0.9


def _two_against_one(tmp_path, alarm=None):
    root = make_bundle(tmp_path / "b", [{"name": f"m{i}", "vaccination": "none", "quality": None,
                                         "weight": np.zeros((192, 4), np.float32), "bias": const_bias(c)}
                                        for i, c in enumerate((0, 0, 1))])  # agreement 2/3
    if alarm is not None:
        manifest = read_manifest(root)
        manifest["alarm"] = alarm
        write_manifest(root, manifest)
    return root


def test_manifest_alarm_is_optional_and_drives_the_suspect_flag(tmp_path) -> None:
    plain = _two_against_one(tmp_path / "plain")
    assert "alarm" not in read_manifest(plain) and load_bundle(plain).alarm is None
    guard = Guard.from_bundle(plain, seed=0)
    assert alarm_thresholds(guard) == (DEFAULT_SUSPECT_BELOW, 0.0)
    frame = Frame(index=0, source_id="x", source_ts=0.0, wall_ts=0.0, image=solid((9, 9, 9), 8, 8))
    region = classify_frame(guard, frame, Regions.center()).regions[0]
    assert region.agreement == pytest.approx(2 / 3) and not region.suspect  # 0.67 >= 0.6

    strict = _two_against_one(tmp_path / "strict", {"suspect_below": 0.7, "measured": {"clean_fpr": 0.01}})
    guard = Guard.from_bundle(strict, seed=0)
    assert guard.bundle.alarm.suspect_below == 0.7 and guard.bundle.alarm.confidence_below == 0.0
    assert classify_frame(guard, frame, Regions.center()).regions[0].suspect  # 0.67 < 0.7
    assert not classify_frame(guard, frame, Regions.center(), suspect_below=0.5).regions[0].suspect  # caller wins
    assert json.loads((strict / "manifest.json").read_text())["alarm"]["suspect_below"] == 0.7


def test_a_bad_alarm_is_refused(tmp_path) -> None:
    with pytest.raises(BundleError):
        _two_against_one(tmp_path, {"suspect_below": 1.5})
    with pytest.raises(BundleError):
        _two_against_one(tmp_path / "n", {"suspect_below": -0.1})
    with pytest.raises(BundleError):
        _two_against_one(tmp_path / "u", {"suspect_below": 0.5, "threshold": 0.2})
