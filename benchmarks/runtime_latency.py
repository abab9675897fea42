"""Runtime latency of a bundle per frame: fused graph vs per-member sessions (or any `bench --compare` variant).

    python benchmarks/runtime_latency.py                                   # default bundle, 1920x1080, 4 signs
    python benchmarks/runtime_latency.py --bundle export/gtsrb-shield --synthetic 1280x720 --threads 1 --out r.json
    python benchmarks/runtime_latency.py --compare export/gtsrb-shield    # a second bundle vs the default one

The same measurement as `edgeguard bench` (edge_guard.bench): rendered road scenes sent as JPEG bytes, the
whole frame path (decode, crops, defense, inference, vote), every variant interleaved frame by frame with a
bare libjpeg-turbo decode of the same frames, so the ratios printed compare measurements under the same load.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_guard.bench import BenchConfig, parse_synthetic, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="Bundle directory (default: the shipped one).")
    parser.add_argument("--synthetic", default="1920x1080", help="Rendered frame size WxH.")
    parser.add_argument("--rois", type=int, default=4)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads.")
    parser.add_argument("--compare", action="append", default=[], help="A bench --compare variant; repeatable.")
    parser.add_argument("--out", default=None, help="Write the full report as JSON.")
    args = parser.parse_args()
    config = BenchConfig(frames=args.frames, warmup=args.warmup, rois=args.rois,
                         synthetic=parse_synthetic(args.synthetic), threads=args.threads, compare=tuple(args.compare))
    report = run_bench(args.bundle, config)
    print("$ python " + " ".join(sys.argv))
    for line in report.summary():
        print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
