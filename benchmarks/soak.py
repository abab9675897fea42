"""Soak: stream frames through `Guard.run` for a set time; report memory, descriptors and latency over time.

    python benchmarks/soak.py --seconds 600 --json benchmarks/results/soak.json

Frames are 640x480 JPEGs of a drawn scene (a grey road, sky, a few sign-like discs and triangles that
move each frame, camera noise), generated on the fly and fed as a live camera would (raw JPEG bytes,
decoded at the DCT scale the two regions allow). Every `--sample` seconds the process's resident memory
(VmRSS), its open file descriptors and the latency percentiles of that window are recorded. After the
warm-up (the first 10% of the run), RSS must grow less than 5% and descriptors not at all: exit 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from edge_guard import Guard, jpeg
from edge_guard.sources.base import StreamSource
from edge_guard.sources.frame import Frame

REPO = Path(__file__).resolve().parent.parent
ROIS = [(120, 140, 248, 268), (400, 120, 528, 248)]


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def scene(rng: np.random.Generator, t: int) -> np.ndarray:
    img = np.empty((480, 640, 3), np.uint8)
    img[:240] = (150, 180, 215)  # sky
    img[240:] = (90, 90, 95)  # road
    for i, (x1, y1, x2, y2) in enumerate(ROIS):
        cx, cy, r = (x1 + x2) // 2 + int(8 * np.sin(t / 9 + i)), (y1 + y2) // 2, 50
        if i == 0:
            cv2.circle(img, (cx, cy), r, (200, 20, 20), -1)
            cv2.circle(img, (cx, cy), r - 12, (240, 240, 240), -1)
        else:
            pts = np.array([[cx, cy - r], [cx + r, cy + r], [cx - r, cy + r]], np.int32)
            cv2.fillPoly(img, [pts], (220, 30, 30))
    noise = rng.integers(-12, 13, img.shape, dtype=np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def frames(seconds: float, rng: np.random.Generator) -> Iterator[Frame]:
    end, index = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        yield Frame(index, "soak", time.time(), jpeg=jpeg.encode(scene(rng, index), 85))
        index += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--sample", type=float, default=10, help="seconds per sample")
    parser.add_argument("--bundle", default=str(REPO / "export" / "gtsrb-shield"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    guard = Guard.from_bundle(args.bundle, threads=1, seed=0)
    rng = np.random.default_rng(0)
    samples, window, next_at, t0 = [], [], time.monotonic() + args.sample, time.monotonic()
    for result in guard.run(StreamSource("soak", lambda: frames(args.seconds, rng)), rois=ROIS):
        window.append(result.timings_ms["total"])
        if time.monotonic() >= next_at:
            p50, p99 = np.percentile(window, [50, 99])
            samples.append({"t": round(time.monotonic() - t0, 1), "frames": result.index + 1, "rss_kb": rss_kb(),
                            "fds": open_fds(), "p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2)})
            last = samples[-1]
            print(f"{last['t']:7.1f} s  frames {last['frames']:7d}  rss {last['rss_kb'] / 1024:7.1f} MB  "
                  f"fds {last['fds']:3d}  total p50 {p50:.2f} ms  p99 {p99:.2f} ms", flush=True)
            window, next_at = [], next_at + args.sample
    warm = [s for s in samples if s["t"] >= 0.1 * args.seconds] or samples
    growth = (warm[-1]["rss_kb"] - warm[0]["rss_kb"]) / warm[0]["rss_kb"]
    fd_growth = warm[-1]["fds"] - warm[0]["fds"]
    ok = growth < 0.05 and fd_growth <= 0
    verdict = (f"after warm-up: RSS {warm[0]['rss_kb'] / 1024:.1f} -> {warm[-1]['rss_kb'] / 1024:.1f} MB "
               f"({100 * growth:+.2f}%), descriptors {warm[0]['fds']} -> {warm[-1]['fds']}: "
               + ("pass (< 5% RSS, no new descriptors)" if ok else "FAIL"))
    print(verdict)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": f"python benchmarks/soak.py --seconds {args.seconds:g} --sample {args.sample:g}",
            "machine": platform.platform(), "bundle": guard.bundle.name, "samples": samples,
            "rss_growth_after_warmup": growth, "fd_growth_after_warmup": fd_growth, "pass": ok,
            "verdict": verdict}, indent=2) + "\n")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
