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

import numpy as np

from edge_guard import jpeg
from edge_guard.bench import STAGES, BenchConfig, parse_synthetic, run_bench
from edge_guard.hardware import matmul_peak
from edge_guard.scenes import encode_frame, render_scene


def region_decode(size: tuple[int, int], rois: int, frames: int) -> dict[str, float]:
    """Decoding only the signs' regions: libjpeg-turbo's lossless crop of every region (MCU-aligned, one MCU of
    margin, all in one tjTransform call) and a decode of each crop, against the full decode, p50 ms."""
    import time

    import turbojpeg

    handle, flags = jpeg.turbo_handle(), turbojpeg.TJFLAG_ACCURATEDCT
    scene = render_scene(*size, rng=0, signs=rois)
    data = encode_frame(scene.image)
    w, h = size
    regions = []
    for x1, y1, x2, y2 in scene.boxes:
        ax, ay = max(0, (x1 // 16 - 1) * 16), max(0, (y1 // 16 - 1) * 16)
        regions.append((ax, ay, min(w, x2 + 16) - ax, min(h, y2 + 16) - ay))
    times: dict[str, list[float]] = {"full": [], "regions": []}
    for _ in range(frames):
        t0 = time.perf_counter()
        handle.decode(data, pixel_format=turbojpeg.TJPF_RGB, flags=flags)
        t1 = time.perf_counter()
        for part in handle.crop_multiple(data, regions, copynone=True):
            handle.decode(part, pixel_format=turbojpeg.TJPF_RGB, flags=flags)
        t2 = time.perf_counter()
        times["full"].append((t1 - t0) * 1000)
        times["regions"].append((t2 - t1) * 1000)
    return {k: float(np.median(v)) for k, v in times.items()}


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
        region = region_decode(parse_synthetic(size), args.rois, args.frames)
        lines.append(f"{size}: decoding only the {args.rois} regions (lossless crop transform + decode of each) "
                     f"{region['regions']:.2f} ms vs full decode {region['full']:.2f} ms "
                     f"({region['regions'] / region['full']:.2f}x): the transform entropy-decodes the whole frame")
        runs.append({"size": size, "region_decode_ms": region})
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps({"command": "python " + " ".join(sys.argv), "matmul_gflops": peaks,
                                              "runs": runs}, indent=2) + "\n", encoding="utf-8")
        Path(args.out).with_suffix(".txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {args.out} and {Path(args.out).with_suffix('.txt')}")


if __name__ == "__main__":
    main()
