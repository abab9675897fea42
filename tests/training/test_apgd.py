"""APGD-CE / APGD-DLR on the tiny synthetic model: schedule, budget, and at least torchattacks' strength."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edge_guard.errors import InputError
from edge_guard.training.attacks import APGD, APGDCE, APGDDLR, PGD, create_attack, dlr_loss, predict
from edge_guard.training.attacks.apgd import checkpoints
from tests.training.test_attacks import synthetic, trained_tiny_net

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return trained_tiny_net()


@pytest.fixture(scope="module")
def batch(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = synthetic(64, seed=1)
    keep = predict(model, x) == y  # attack the correctly classified ones
    return x[keep], y[keep]


def test_checkpoints_follow_the_paper() -> None:
    # p = 0, 0.22, 0.41 (0.22 + 0.19), 0.57 (+0.16), 0.70 (+0.13), 0.80 (+0.10), 0.87 (+0.07), 0.93, 0.99, 1.05
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]


def test_dlr_loss_known_values() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, -5.0]])
    labels = torch.tensor([0, 0])
    # image 0: correct, margin 3 - 1 = 2, scale z1 - z3 = 3 - 0 -> -2/3; image 1: wrong, (0 - 2) / (2 - 0) -> +1
    assert dlr_loss(logits, labels).tolist() == pytest.approx([-2 / 3, 1.0])
    assert dlr_loss(10 * logits + 7, labels).tolist() == pytest.approx([-2 / 3, 1.0])  # scale/shift invariant


@pytest.mark.parametrize("cls", [APGDCE, APGDDLR])
def test_apgd_stays_in_the_ball_and_ce_beats_pgd_of_the_same_budget(model, batch, cls) -> None:
    x, y = batch
    eps = 4 / 255
    adv = cls(model, eps=eps, steps=20, seed=0)(x, y)
    assert float((adv - x).abs().max()) <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    ours = float((predict(model, adv) != y).float().mean())
    pgd = float((predict(model, PGD(model, eps=eps, alpha=eps / 4, steps=20)(x, y)) != y).float().mean())
    assert ours > 0.3  # the model is fooled on a good share at 4/255
    if cls is APGDCE:  # the same loss as PGD: APGD's schedule must not lose to a fixed step
        assert ours >= pgd


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_at_least_as_strong_as_torchattacks(model, batch, loss) -> None:
    torchattacks = pytest.importorskip("torchattacks")  # a dev dependency (pyproject [dev])
    x, y = batch
    for eps in (3 / 255, 4 / 255, 5 / 255):  # from ~15% to ~60% fooled
        ours = APGD(model, eps=eps, steps=20, n_restarts=1, loss=loss, seed=0)(x, y)
        theirs = torchattacks.APGD(model, eps=eps, steps=20, n_restarts=1, loss=loss, seed=0)(x, y)
        fooled_ours = int((predict(model, ours) != y).sum())
        fooled_theirs = int((predict(model, theirs) != y).sum())
        assert fooled_ours >= fooled_theirs > 0, (eps, fooled_ours, fooled_theirs)


def test_restarts_only_help_and_are_reproducible(model, batch) -> None:
    x, y = batch
    one = APGDCE(model, eps=3 / 255, steps=10, n_restarts=1, seed=3)(x, y)
    again = APGDCE(model, eps=3 / 255, steps=10, n_restarts=1, seed=3)(x, y)
    three = APGDCE(model, eps=3 / 255, steps=10, n_restarts=3, seed=3)(x, y)
    assert torch.equal(one, again)
    fooled = lambda a: int((predict(model, a) != y).sum())  # noqa: E731
    assert fooled(three) >= fooled(one)


def test_registry_and_bad_arguments(model) -> None:
    attack = create_attack("apgd-dlr", model, eps=4 / 255, steps=5)
    assert isinstance(attack, APGDDLR) and attack.loss == "dlr" and attack.steps == 5
    with pytest.raises(InputError):
        APGD(model, loss="hinge")
    with pytest.raises(InputError):
        APGD(model, steps=0)
