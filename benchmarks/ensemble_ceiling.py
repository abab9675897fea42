"""How far a vote can take a vaccinated ensemble: members, majority and soft vote, and the oracle ceiling.

    python benchmarks/ensemble_ceiling.py runs/gtsrb-shield runs/q40-90 --data ../shared/datasets/gtsrb32

For each ensemble folder (from `edgeguard vaccinate`), every member classifies the evaluation images
through its own deployed preprocessing (JPEG at its quality, or one seeded SLQ draw): the default
defense `edgeguard export` writes, applied by `edge_guard.defense.member_inputs`, as the runtime applies it. Printed per run, in % of images:
- the base model on clean images (what the ensemble gives up for its defense),
- each member on its own preprocessing,
- the majority vote (the shipped rule) and the soft vote (mean probability),
- the oracle ceiling: images at least ONE member gets right. No vote rule can beat it, so when it is
  below an accuracy target the members themselves must get better, not the vote.
Images: the run's held-out validation tracks (--split val, the default) or the dataset's official
test set (--split test). Writes a text table and, with --out, a JSON file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_guard.defense import member_inputs
from edge_guard.engine import softmax, vote
from edge_guard.training.export.pipeline import resolve_defense
from edge_guard.training.predict import predict_logits
from edge_guard.training.run import Run


def measure(path: str, data: str | None, split: str, limit: int, seed: int) -> dict[str, Any]:
    """Accuracies (fractions) of one ensemble folder's base, members, votes and oracle ceiling."""
    t0 = time.perf_counter()
    run = Run.open(path)
    ev = run.dataset(data, limit=limit, calibration=0, split=split)
    x, y = ev.images, ev.labels
    defense = resolve_defense(run, None, False)  # what `edgeguard export` puts in the bundle by default
    views = member_inputs(x, defense, run.member_specs, rng=seed, graph_input=False)  # as the runtime feeds them
    logits = [predict_logits(m.model, views if views.ndim == 4 else views[i]) for i, m in enumerate(run.members)]
    probs = softmax(np.stack(logits).astype(np.float32))  # (members, N, classes)
    right = np.stack([lg.argmax(1) == y for lg in logits])  # (members, N)
    return {
        "run": path, "split": split, "n": int(len(y)),
        "base_clean": None if run.base is None else float((predict_logits(run.base, x).argmax(1) == y).mean()),
        "members": {m.name: float(r.mean()) for m, r in zip(run.members, right)},
        "majority": float((vote(probs, "majority")[0] == y).mean()),
        "soft": float((vote(probs, "soft")[0] == y).mean()),
        "oracle": float(right.any(0).mean()),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def table(rows: list[dict[str, Any]]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}"

    lines = ["| run | images | base clean | members (own preprocessing) | majority | soft | oracle ceiling |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        members = ", ".join(f"{k} {pct(v)}" for k, v in r["members"].items())
        lines.append(f"| {r['run']} | {r['n']} {r['split']} | {pct(r['base_clean'])} | {members} | "
                     f"{pct(r['majority'])} | {pct(r['soft'])} | {pct(r['oracle'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="ensemble folders from edgeguard vaccinate")
    ap.add_argument("--data", default=None, help="dataset folder (default: each run's own)")
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--limit", type=int, default=100_000, help="at most this many images (seeded subset)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the SLQ draws")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(path, args.data, args.split, args.limit, args.seed) for path in args.runs]
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
