"""Defended models as attack targets: members behind their JPEG/SLQ preprocessing, with a vote.

A `DefendedModel` is an nn.Module the attacks can differentiate (through BPDA defenses) and the
evaluation can score with the deployed decision rule:
  - forward(x) -> (N, K) logits of the surrogate the attacks follow: one member's logits, or for
    an ensemble the log of the mean softmax over members (a soft vote; argmax = soft-vote class),
    or the mean logits (surrogate="logits").
  - predict(x) -> (N,) class ids with the bundle's vote rule: "soft" (argmax of mean softmax) or
    "majority" (most member votes; ties go to the tied class with the highest mean softmax).
Builders below cover the defenses EdgeGuard ships: base+JPEG(q), per-member JPEG ensembles, and
SLQ (+EOT) ensembles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from edge_guard import jpeg
from edge_guard.engine import softmax
from edge_guard.engine import vote as engine_vote
from edge_guard.errors import InputError, expected_got
from edge_guard.spec import Vaccination, VoteRule
from edge_guard.training.attacks.bpda import BPDAJPEG, BPDASLQ
from edge_guard.training.attacks.eot import EOT

VOTES = VoteRule.values()
SURROGATES = ("probs", "logits")


class DefendedModel(nn.Module):
    """Members, each behind its preprocessing, combined by a vote.

    Arguments:
        members (nn.Module | Sequence[nn.Module]): classifiers, float32 (N, 3, H, W) in [0, 1] -> logits (N, K).
        defenses (nn.Module | Sequence[nn.Module | None] | None): None: raw input; one module: the
            same preprocessing for all members (computed once, as the runtime's shared defense);
            a sequence: member i sees defenses[i] (None for raw), as per-member bundles.
        vote (str): "soft" or "majority" (used by `predict`). (Default: "soft")
        surrogate (str): ensemble output for attacks: "probs" (log mean softmax) or "logits" (mean logits).

    Shape: (N, 3, H, W) float32 in [0, 1] -> (N, K) float32.

    Example:
        >>> target = DefendedModel([m20, m40], [BPDAJPEG(20), BPDAJPEG(40)], vote="majority")
        >>> adv = PGD(target)(images, labels); robust_pred = target.predict(adv)
    """

    def __init__(self, members: nn.Module | Sequence[nn.Module],
                 defenses: nn.Module | Sequence[nn.Module | None] | None = None,
                 vote: str = "soft", surrogate: str = "probs") -> None:
        super().__init__()
        members = [members] if isinstance(members, nn.Module) else list(members)
        if not members or not all(isinstance(m, nn.Module) for m in members):
            raise InputError(expected_got("members", "one nn.Module or a non-empty list of them", repr(members)))
        if vote not in VOTES:
            raise InputError(expected_got("vote", " or ".join(repr(v) for v in VOTES), repr(vote)))
        if surrogate not in SURROGATES:
            raise InputError(expected_got("surrogate", "'probs' or 'logits'", repr(surrogate)))
        self.members = nn.ModuleList(members)
        self.shared = defenses is None or isinstance(defenses, nn.Module)
        if self.shared:
            self.defenses = nn.ModuleList([defenses if defenses is not None else nn.Identity()])
        else:
            defenses = list(defenses)  # type: ignore[arg-type]
            if len(defenses) != len(members):
                raise InputError(expected_got("defenses", f"one per member ({len(members)})", len(defenses)))
            self.defenses = nn.ModuleList(d if d is not None else nn.Identity() for d in defenses)
        self.vote = vote
        self.surrogate = surrogate

    def member_logits(self, x: Tensor) -> Tensor:
        """(M, N, K) logits of every member on its own preprocessed input."""
        if self.shared:
            seen = self.defenses[0](x)
            return torch.stack([member(seen) for member in self.members])
        return torch.stack([member(defense(x)) for member, defense in zip(self.members, self.defenses)])

    def forward(self, x: Tensor) -> Tensor:
        logits = self.member_logits(x)
        if len(self.members) == 1:
            return logits[0]
        if self.surrogate == "logits":
            return logits.mean(dim=0)
        return torch.logsumexp(logits.log_softmax(dim=-1), dim=0) - math.log(len(self.members))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """(N,) int64 class ids with the vote rule (what the deployed ensemble answers)."""
        return vote(self.member_logits(x), self.vote)


def vote(member_logits: Tensor, rule: str = "soft") -> Tensor:
    """Combine (M, N, K) member logits into (N,) int64 class ids with the runtime's vote rule
    ("soft" or "majority", edge_guard.engine.vote), so evaluation decides exactly as a bundle does."""
    probs = softmax(member_logits.detach().float().cpu().numpy())
    return torch.from_numpy(engine_vote(probs, rule)[0]).to(member_logits.device)


def make_defense(kind: str, *, quality: int | None = None, qualities: Sequence[int] = jpeg.DEFAULT_SLQ_QUALITIES,
                 subsampling: str = "420", backend: str = "auto", backward: str = "identity",
                 rounding: str = "ste", rng: np.random.Generator | int | None = None) -> nn.Module | None:
    """The BPDA preprocessing for a manifest defense kind: "none" -> None, "jpeg" (needs quality), "slq"."""
    if kind == Vaccination.NONE:
        return None
    if kind == Vaccination.JPEG:
        if quality is None:
            raise InputError(expected_got("quality for a 'jpeg' defense", "an integer 1..100", None))
        return BPDAJPEG(quality, subsampling, backend, backward, rounding)
    if kind == Vaccination.SLQ:
        return BPDASLQ(qualities, subsampling, backend, backward, rounding, rng)
    raise InputError(expected_got("defense kind", " or ".join(repr(k) for k in Vaccination.values()), repr(kind)))


def jpeg_defended(model: nn.Module, quality: int, *, backward: str = "identity", subsampling: str = "420",
                  backend: str = "auto") -> DefendedModel:
    """One model behind the real JPEG round trip at `quality` (BPDA gradients).

    Example:
        >>> target = jpeg_defended(base, 50, backward="diffjpeg")
    """
    return DefendedModel(model, BPDAJPEG(quality, subsampling, backend, backward))


def ensemble_defended(members: Sequence[nn.Module], qualities: Sequence[int], *, vote: str = "majority",
                      backward: str = "identity", subsampling: str = "420", backend: str = "auto") -> DefendedModel:
    """Vaccinated members, member i behind JPEG at qualities[i] (per-member preprocessing).

    Example:
        >>> target = ensemble_defended([m20, m40, m60, m80], [20, 40, 60, 80], vote="majority")
    """
    if len(members) != len(qualities):
        raise InputError(expected_got("qualities", f"one per member ({len(members)})", len(qualities)))
    defenses = [BPDAJPEG(q, subsampling, backend, backward) for q in qualities]
    return DefendedModel(members, defenses, vote=vote)


def slq_defended(members: nn.Module | Sequence[nn.Module], qualities: Sequence[int] = jpeg.DEFAULT_SLQ_QUALITIES,
                 *, eot_samples: int = 8, vote: str = "majority", backward: str = "identity",
                 subsampling: str = "420", backend: str = "auto",
                 rng: np.random.Generator | int | None = None) -> nn.Module:
    """Members behind one shared SLQ draw per image, averaged over `eot_samples` draws (EOT).

    Returns EOT(DefendedModel) when eot_samples > 1 (its `predict` is one real SLQ draw), else the
    DefendedModel itself.

    Example:
        >>> target = slq_defended([m20, m40, m60, m80, m_slq], eot_samples=8, backward="diffjpeg", rng=0)
    """
    target = DefendedModel(members, BPDASLQ(qualities, subsampling, backend, backward, rng=rng), vote=vote)
    return EOT(target, eot_samples) if eot_samples > 1 else target
