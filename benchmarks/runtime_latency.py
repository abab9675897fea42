"""Runtime latency of the shipped bundle: fused graph vs per-member sessions, and the JPEG defense's share.

    python benchmarks/runtime_latency.py                                  # default bundle, batches 1,8,32
    python benchmarks/runtime_latency.py --bundle export/other --batch 1,8 --iterations 30 --out r.json
    python benchmarks/runtime_latency.py --compare export/gtsrb-shield-r14   # a second bundle vs the shipped one

All variants (and --compare's bundle) run in the same process, interleaved call by call
(edge_guard.bench), so the ratios printed compare measurements taken under the same load. Frames are 64x64 uniform noise (the JPEG
defense's worst case); every stage is wall time of Guard.classify on the CPU execution provider.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from edge_guard.bench import BenchConfig, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="Bundle directory (default: the shipped one).")
    parser.add_argument("--batch", default="1,8,32", help="Comma-separated batch sizes.")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads.")
    parser.add_argument("--compare", default=None, help="A second bundle, timed interleaved with the first.")
    parser.add_argument("--out", default=None, help="Write the full report as JSON.")
    args = parser.parse_args()
    config = BenchConfig(batches=tuple(int(b) for b in args.batch.split(",")), iterations=args.iterations,
                         warmup=args.warmup, threads=args.threads)
    report = run_bench(args.bundle, config, compare=args.compare).to_dict()
    report["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    print(f"{report['bundle']}: {report['members']} members, defense {report['defense']}, "
          f"{report['providers'][0]}, {args.iterations} calls per cell")
    ratios = report["ratios"]
    for b in report["results"][report["variants"][0]]:
        cells = []
        if "fused_over_members" in ratios:
            cells.append(f"fused/per-member total latency (p50) {ratios['fused_over_members'][b]:.2f}x")
        if report["compare"]:
            c = report["compare"]
            cells.append(f"{c['bundle']} ({c['members']} members)/{report['bundle']} {c['against']} total latency "
                         f"(p50) {ratios['compare_over_bundle'][b]:.2f}x")
        for v in report["variants"]:
            r = report["results"][v][b]
            cells.append(f"{v}: total p50 {r['stages']['total']['p50']:.2f} ms, JPEG defense "
                         f"{100 * ratios['defense_share'][v][b]:.0f}% of total, {r['images_per_s']:.0f} images/s")
        print(f"batch {b:>3}: " + "; ".join(cells))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
