"""The whole frame path (decode, crops, defense, inference, vote) against a bare libjpeg-turbo decode of the frame.

    python benchmarks/frame_path.py                                        # 1080p and 720p, both shipped bundles
    python benchmarks/frame_path.py --sizes 1920x1080 --bundles export/gtsrb-shield --frames 60 --out r.json

Each frame is a rendered road scene with --rois signs (edge_guard.scenes), sent as JPEG bytes (q90, 4:2:0)
as an MJPEG camera sends it, and goes through `classify_frame` (the `infer` path: decode at the largest DCT
scale that keeps every sign >= the model input, crops, JPEG defense, onnxruntime, vote) via `edge_guard.bench`:
1 onnxruntime thread, then 2 (threads=2), interleaved frame by frame with the bare decodes of the same frame
(full size; and 1/8 scale, which is the entropy decoding alone: the floor of any decode of that frame).
Printed per size, bundle and thread count: end to end p50 / bare full decode p50, each stage's share, and the
floor the hardware sets: (1/8-scale decode + the members' multiply-adds at the measured matmul peak) / full decode.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_guard.bench import STAGES, BenchConfig, parse_synthetic, run_bench
from edge_guard.hardware import matmul_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1920x1080,1280x720")
    parser.add_argument("--bundles", default="export/gtsrb-shield,export/gtsrb-shield-r14")
    parser.add_argument("--rois", type=int, default=4)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=None, help="Write the results as JSON (and the printed lines beside it).")
    args = parser.parse_args()
    peaks = {1: matmul_peak(threads=1)["gflops"], 2: matmul_peak(threads=2)["gflops"]}
    lines = [f"$ python {' '.join(sys.argv)}",
             f"matmul peak (numpy, float32): {peaks[1]:.1f} GFLOP/s on 1 thread, {peaks[2]:.1f} on 2"]
    runs = []
    for size in args.sizes.split(","):
        for bundle in args.bundles.split(","):
            config = BenchConfig(frames=args.frames, warmup=args.warmup, rois=args.rois,
                                 synthetic=parse_synthetic(size), threads=1, compare=("threads=2",))
            report = run_bench(bundle, config, progress=False)
            ref = report.reference
            full, floor = ref["decode_full"]["p50"], ref["decode_floor"]["p50"]
            lines.append(f"{size} {report.bundle}, {report.frames['crops_per_frame']:g} signs: bare decode full "
                         f"{full:.2f} ms, 1/8 scale {floor:.2f} ms ({floor / full:.2f}x)")
            for name, r in report.results.items():
                s = r["stages"]
                threads = 2 if name == "threads=2" else 1
                macs = report.limits.get(name, {}).get("macs_per_crop", 0)
                arith = 2 * macs * report.frames["crops_per_frame"] / (peaks[threads] * 1e9) * 1000
                shares = ", ".join(f"{k} {s[k]['p50']:.2f}" for k in STAGES[:-1])
                lines.append(f"  {threads} thread(s): end to end p50 {s['total']['p50']:.2f} ms"
                             f" = {s['total']['p50'] / full:.2f}x the full decode (p99 {s['total']['p99']:.2f}); "
                             f"{shares}; decode at 1/{r['decode_scale']}; floor (1/8 decode + "
                             f"{macs / 1e6:.1f} M MACs/crop at peak) {(floor + arith) / full:.2f}x")
            runs.append({"size": size, "bundle": bundle, "report": report.to_dict()})
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps({"command": "python " + " ".join(sys.argv), "matmul_gflops": peaks,
                                              "runs": runs}, indent=2) + "\n", encoding="utf-8")
        Path(args.out).with_suffix(".txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {args.out} and {Path(args.out).with_suffix('.txt')}")


if __name__ == "__main__":
    main()
