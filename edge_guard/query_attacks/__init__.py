"""Query-based black-box attacks on a deployed bundle, through the runtime alone (no torch).

The attacker can only feed the device images and read what it reveals: the ensemble's scores
(`square_attack`, Andriushchenko et al. 2020) or just its decision (`hopskipjump`, Chen et al. 2020).
Both go through `Oracle`, which runs the bundle as the device does (8-bit input, the real JPEG codec,
onnxruntime, the vote) and counts every query. `query_attack` runs one of them on a batch and
summarises it:

    from edge_guard import Guard
    from edge_guard.query_attacks import query_attack
    result = query_attack(Guard.from_bundle("export/gtsrb-shield", seed=0), images, labels,
                          attack="square", eps=8 / 255, queries=1000)
    result.success_rate, result.median_queries
"""

from edge_guard.query_attacks.hopskipjump import hopskipjump
from edge_guard.query_attacks.oracle import Oracle, to_uint8
from edge_guard.query_attacks.run import QUERY_ATTACKS, QueryAttackResult, query_attack
from edge_guard.query_attacks.square import AttackRun, square_attack

__all__ = ["QUERY_ATTACKS", "AttackRun", "Oracle", "QueryAttackResult", "hopskipjump", "query_attack",
           "square_attack", "to_uint8"]
