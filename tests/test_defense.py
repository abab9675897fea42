"""edge_guard.defense.member_inputs: one function for what each member's graph receives."""

from __future__ import annotations

import numpy as np
import pytest

from edge_guard import jpeg
from edge_guard.defense import member_inputs
from edge_guard.spec import CodecSpec, DefenseSpec, member_spec

CODEC = CodecSpec(backend="opencv", version="x")
BATCH = np.random.default_rng(3).integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)


def _defense(kind: str, qualities, per_member: bool, in_graph: bool = False) -> DefenseSpec:
    return DefenseSpec(kind=kind, qualities=tuple(qualities), per_member=per_member, subsampling="420", codec=CODEC,
                       in_graph=in_graph)


def test_per_member_views_match_the_codec_and_slq_reuses_the_round_trips():
    members = [member_spec("jpeg", 20), member_spec("jpeg", 60), member_spec("slq"), member_spec("none")]
    got = member_inputs(BATCH, _defense("jpeg", (20, 40, 60), True), members, rng=7, backend="opencv")
    assert got.shape == (4, *BATCH.shape)
    assert np.array_equal(got[0], jpeg.roundtrip(BATCH, 20, backend="opencv"))
    assert np.array_equal(got[1], jpeg.roundtrip(BATCH, 60, backend="opencv"))
    # the SLQ member mixes the same round trips: bit-identical to jpeg.slq with the same generator state
    assert np.array_equal(got[2], jpeg.slq(BATCH, (20, 40, 60), rng=7, backend="opencv"))
    assert np.array_equal(got[3], BATCH)


@pytest.mark.parametrize("kind, qualities", [("jpeg", (50,)), ("slq", (20, 80))])
def test_shared_defense_is_one_batch_for_all_members(kind, qualities):
    members = [member_spec("jpeg", 50), member_spec("slq")]
    got = member_inputs(BATCH, _defense(kind, qualities, False), members, rng=1, backend="opencv")
    want = (jpeg.roundtrip(BATCH, 50, backend="opencv") if kind == "jpeg"
            else jpeg.slq(BATCH, qualities, rng=1, backend="opencv"))
    assert got.shape == BATCH.shape and np.array_equal(got, want)


def test_in_graph_defense_feeds_raw_crops_to_the_graphs_and_the_codec_to_the_models():
    members = [member_spec("jpeg", 30)]
    defense = _defense("jpeg", (30,), True, in_graph=True)
    assert member_inputs(BATCH, defense, members, backend="opencv") is BATCH
    seen = member_inputs(BATCH, defense, members, backend="opencv", graph_input=False)
    assert np.array_equal(seen[0], jpeg.roundtrip(BATCH, 30, backend="opencv"))


def test_no_defense_passes_the_batch_through():
    assert member_inputs(BATCH, _defense("none", (), False), [member_spec("none")]) is BATCH
