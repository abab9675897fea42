"""Speed-up of an evaluation sweep on a local Ray with 1 and 2 workers, against one process.

    python benchmarks/eval_scale.py --models runs/shield --data data/gtsrb32 --limit 256 --rounds 1 \
        --out benchmarks/results/eval_scale.json

Each variant runs the same sweep (`edgeguard evaluate` settings below) into a fresh folder:
  single-1t   one process, 1 torch thread          single-2t   one process, 2 torch threads (the default)
  ray-1       a local Ray of 1 CPU (one task at a time, 1 thread)
  ray-2       a local Ray of 2 CPUs (two tasks at a time, 1 thread each)
Ray variants include starting and stopping Ray and its workers (their torch import). Variants run in
interleaved rounds, so machine noise hits all alike; the table gives the median wall time and the
speed-ups ray-1 / ray-2 (what a second worker buys) and single-2t / ray-2 (Ray's cells against torch's
threads on the same 2 cores). Every variant's cells (timings left out) must equal single-1t's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from edge_guard.training.evaluate import EvalConfig, evaluate
from edge_guard.training.provenance import versions

VARIANTS = {"single-1t": (None, 1), "single-2t": (None, 2), "ray-1": (1, 1), "ray-2": (2, 1)}  # (Ray CPUs, threads)
TIMINGS = ("attack_seconds", "eval_seconds")


def sweep(args: argparse.Namespace, threads: int) -> EvalConfig:
    return EvalConfig(attacks=("fgsm", "pgd", "deepfool"), eps=(4, 8), qualities=(40, 80), limit=args.limit,
                      adaptive_attacks=("fgsm", "pgd"), adaptive_limit=args.limit // 2, pgd_steps=5, eot_samples=2,
                      batch_size=args.batch_size, threads=threads, device="cpu")


def run_variant(name: str, args: argparse.Namespace, work: Path) -> tuple[float, list[dict[str, Any]]]:
    cpus, threads = VARIANTS[name]
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    if cpus is not None:
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        result = evaluate(args.models, out, sweep(args, threads), data=args.data, progress=False,
                          ray="local" if cpus is not None else None)
    finally:
        if cpus is not None:
            ray.shutdown()
    seconds = time.perf_counter() - t0
    return seconds, [{k: v for k, v in c.items() if k not in TIMINGS} for c in result.results["cells"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", required=True, help="ensemble folder (edgeguard vaccinate)")
    parser.add_argument("--data", required=True, help="its dataset folder")
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/eval_scale.json")
    args = parser.parse_args()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    reference, equal = None, {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name in VARIANTS:
                seconds, cells = run_variant(name, args, Path(tmp))
                times[name].append(seconds)
                reference = cells if reference is None else reference
                equal[name] = equal.get(name, True) and cells == reference
                print(f"{name:>10}: {seconds:7.1f} s  cells equal to single-1t: {equal[name]}", flush=True)
    med = {v: statistics.median(t) for v, t in times.items()}
    ratios = {"ray-1 / ray-2 (speed-up of a 2nd worker)": med["ray-1"] / med["ray-2"],
              "single-1t / ray-2": med["single-1t"] / med["ray-2"],
              "single-2t / ray-2": med["single-2t"] / med["ray-2"],
              "single-1t / ray-1 (Ray overhead, 1 CPU)": med["single-1t"] / med["ray-1"]}
    lines = [f"evaluation sweep, {args.limit} images ({len(reference or [])} cells): median wall time of "
             f"{args.rounds} round(s)", *(f"  {v:>10}: {med[v]:7.1f} s" for v in VARIANTS),
             *(f"  {k}: {r:.2f}x" for k, r in ratios.items()),
             f"  cells equal to single-1t: {all(equal.values())}"]
    print("\n".join(lines))
    record = {"command": "python benchmarks/eval_scale.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
              "sweep": {k: v for k, v in vars(sweep(args, 1)).items() if k != "threads"},
              "seconds": times, "median_s": med, "ratios": ratios, "cells_equal": equal,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_avg_at_end": os.getloadavg()},
              "versions": {**versions(("ray",), with_platform=False)}}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    Path(args.out).with_suffix(".txt").write_text(record["command"] + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
