"""What each member's graph receives: the manifest's defense applied to a batch of crops.

One pure function, used by `Guard`, the exporter's measurements, evaluation and vaccination, so a
member sees the same bytes wherever it runs:

    x = member_inputs(crops, bundle.defense, bundle.members, rng=0)   # uint8 (N,H,W,3) or (M,N,H,W,3)
    tensor = bundle.input.to_tensor(x)                                 # float32 (...,3,H,W)

Each JPEG quality is round-tripped once per batch (all qualities in one `jpeg.roundtrips` call, so
one thread-pool dispatch), shared by the JPEG members at that quality and by an SLQ member, whose
block pick then mixes those same versions (bit-identical to `jpeg.slq`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_guard import jpeg
from edge_guard.spec import DefenseKind, DefenseSpec, MemberSpec, Vaccination


def member_inputs(batch: np.ndarray, defense: DefenseSpec, members: Sequence[MemberSpec], *,
                  rng: np.random.Generator | int | None = None, backend: str = "auto",
                  graph_input: bool = True) -> np.ndarray:
    """uint8 (N, H, W, 3) crops -> uint8 (N, H, W, 3) shared by all members, or (M, N, H, W, 3) one per member
    (manifest order) when the defense is per member.

    rng: SLQ's random block pick (a Generator, a seed, or None for fresh entropy). graph_input=True:
    what the graphs receive (raw crops when the JPEG step is inside them); False: what the member
    models themselves see (the libjpeg-turbo round trip even for in-graph members).
    """
    if defense.kind == DefenseKind.NONE or (defense.in_graph and graph_input):
        return batch
    opts = {"subsampling": str(defense.subsampling), "backend": backend}
    if not defense.per_member:
        if defense.kind == DefenseKind.JPEG:
            return jpeg.roundtrip(batch, defense.qualities[0], **opts)
        return jpeg.slq(batch, defense.qualities, rng=rng, **opts)  # one draw shared by all members
    needed = [int(m.quality) for m in members if m.vaccination == Vaccination.JPEG]  # type: ignore[arg-type]
    if any(m.vaccination == Vaccination.SLQ for m in members):
        needed += list(defense.qualities)
    distinct = list(dict.fromkeys(needed))  # every quality once, in one call (one pool dispatch)
    versions = dict(zip(distinct, jpeg.roundtrips(batch, distinct, **opts))) if distinct else {}
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    out = []
    for member in members:
        if member.vaccination == Vaccination.JPEG:
            out.append(versions[int(member.quality)])  # type: ignore[arg-type]  # the schema requires it for JPEG
        elif member.vaccination == Vaccination.SLQ:
            out.append(jpeg.slq_mix([versions[q] for q in defense.qualities], generator))
        else:
            out.append(batch)
    return np.stack(out)
