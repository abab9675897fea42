"""Query-based black-box attacks on the shipped bundles through the runtime alone: success and queries.

    python benchmarks/query_attacks.py --data ../shared/datasets/gtsrb32 --n 100 \
        --json benchmarks/results/query_attacks_gtsrb.json

Each bundle is attacked exactly as deployed (`edge_guard.query_attacks`: Guard's 8-bit input, the real
codec, onnxruntime, the vote) on a seeded sample of the track-wise validation split (seed 0, 20% of the
tracks, as the bundles were trained): Square Attack on the ensemble's mean softmax and HopSkipJump on
the label alone, Linf, with a query budget per image. Reported per (bundle, attack, eps): success rate
over the images the bundle got right, median queries to success, the share of fooled images the suspect
flag raises, and wall time. Needs the training extra only for the dataset loader.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from edge_guard import Guard
from edge_guard.query_attacks import query_attack
from edge_guard.training.data import load_dataset, split_by_track


def sample(data: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n seeded validation images (uint8 NHWC) and labels."""
    _, val = split_by_track(load_dataset(data, "train", 32), 0.2, 0)
    idx = np.random.default_rng(seed).choice(len(val.labels), n, replace=False)
    return val.images[idx], np.asarray(val.labels)[idx]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="GTSRB training set (official layout)")
    p.add_argument("--bundles", default="export/gtsrb-shield,export/gtsrb-shield-r14",
                   help="bundle folders; an undefended one (export --defense none) gives the reference row")
    p.add_argument("--n", type=int, default=100, help="images per bundle (Square); HopSkipJump gets --n-hsj")
    p.add_argument("--n-hsj", type=int, default=50, help="images for HopSkipJump (sequential per image)")
    p.add_argument("--queries", type=int, default=1000, help="query budget per image")
    p.add_argument("--eps", default="4,8", help="Linf budgets in 1/255 units (Square)")
    p.add_argument("--hsj-eps", default="8", help="Linf budgets in 1/255 units (HopSkipJump)")
    p.add_argument("--attacks", default="square,hopskipjump")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    x, y = sample(args.data, max(args.n, args.n_hsj), args.seed)
    rows = []
    for bundle in args.bundles.split(","):
        guard = Guard.from_bundle(bundle, seed=args.seed, threads=args.threads, warn_codec_mismatch=False)
        for attack in args.attacks.split(","):
            n = args.n if attack == "square" else args.n_hsj
            for eps in (int(e) for e in (args.eps if attack == "square" else args.hsj_eps).split(",")):
                t0 = time.perf_counter()
                r = query_attack(guard, x[:n], y[:n], attack=attack, eps=eps / 255, queries=args.queries,
                                 seed=args.seed)
                rows.append({"bundle": guard.bundle.name, **r.to_dict(), "seconds": round(time.perf_counter() - t0, 1)})
                print(f"{guard.bundle.name:<18} " + r.lines()[0], flush=True)
    out = {"command": "python benchmarks/query_attacks.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": platform.platform(), "python": sys.version.split()[0], "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        args.json.with_suffix(".txt").write_text(out["command"] + "\n" + out["machine"] + "\n\n" + "\n".join(
            f"{r['bundle']:<18} {r['attack']:<12} eps {r['eps_levels']:g}/255  budget {r['budget']}  n_correct "
            f"{r['n_correct']}  success {r['success_rate']:.3f}  median queries {r['median_queries']}  "
            f"flagged {r['flagged_rate']}  {r['seconds']} s" for r in rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
