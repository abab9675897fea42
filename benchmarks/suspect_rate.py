"""What the `suspect` flag costs on clean images: the share of clean validation images whose members disagree.

    python benchmarks/suspect_rate.py --data ../shared/datasets/gtsrb32 --json benchmarks/results/suspect_rate_gtsrb.json

For each shipped bundle, every image of the track-wise validation split the bundles were trained with
(seed 0, 20% of the tracks) goes through `Guard.classify`; a region is suspect when fewer than the
threshold share of members vote for the winner (`edgeguard infer --suspect-below`). Printed per
threshold: the false-alarm rate on these clean images, and accuracy on flagged and unflagged images
(a useful alarm flags the images the ensemble gets wrong). Needs the training extra (the loader).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from edge_guard import Guard
from edge_guard.training.data import load_dataset, split_by_track

REPO = Path(__file__).resolve().parent.parent
THRESHOLDS = (0.4, 0.6, 0.8, 1.0)


def measure(bundle: Path, images: np.ndarray, labels: np.ndarray, batch: int = 256) -> dict:
    guard = Guard.from_bundle(bundle, seed=0, threads=2, warn_codec_mismatch=False)
    t0 = time.perf_counter()
    preds = [p for i in range(0, len(images), batch) for p in guard.classify(images[i:i + batch])]
    members = len(guard.bundle.members)
    agreement = np.array([p.votes.count(p.class_id) / members for p in preds])
    correct = np.array([p.class_id for p in preds]) == labels
    rows = {}
    for t in THRESHOLDS:
        flagged = agreement < t
        rows[str(t)] = {
            "false_alarm_rate": float(flagged.mean()),
            "accuracy_flagged": float(correct[flagged].mean()) if flagged.any() else None,
            "accuracy_unflagged": float(correct[~flagged].mean()) if (~flagged).any() else None,
            "errors_flagged": float((~correct & flagged).sum() / max(1, (~correct).sum())),
        }
    return {"bundle": guard.bundle.name, "members": members, "n": int(len(labels)), "accuracy": float(correct.mean()),
            "seconds": round(time.perf_counter() - t0, 1), "thresholds": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="GTSRB training set (official layout)")
    parser.add_argument("--bundles", default="export/gtsrb-shield,export/gtsrb-shield-r14")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    dataset = load_dataset(args.data, "train", 32)
    _, val = split_by_track(dataset, 0.2, 0)
    results = {"command": "python benchmarks/suspect_rate.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()
                                                                        if v is not None),
               "machine": platform.platform(), "bundles": []}
    for name in args.bundles.split(","):
        r = measure(REPO / name, val.images, val.labels)
        results["bundles"].append(r)
        print(f"{r['bundle']} ({r['members']} members), {r['n']} clean validation images, accuracy "
              f"{100 * r['accuracy']:.2f}%, {r['seconds']} s")
        for t, row in r["thresholds"].items():
            flagged = "-" if row["accuracy_flagged"] is None else f"{100 * row['accuracy_flagged']:.1f}%"
            print(f"  --suspect-below {t}: flags {100 * row['false_alarm_rate']:.2f}% of clean images "
                  f"(accuracy on them {flagged}, on the rest {100 * (row['accuracy_unflagged'] or 0):.2f}%); "
                  f"catches {100 * row['errors_flagged']:.1f}% of the ensemble's errors")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
