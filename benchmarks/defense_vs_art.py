"""The JPEG defense on batches of 32x32 crops: edge_guard vs ART's JpegCompression vs bare codec loops.

    python benchmarks/defense_vs_art.py                                    # 2,048 rendered sign crops, q50
    python benchmarks/defense_vs_art.py --data ../shared/datasets/gtsrb32 --n 1961 --out r.json

Contenders, each over the same batch, interleaved round by round (medians of --rounds):
- edge_guard: `jpeg.roundtrip` (libturbojpeg through ctypes, persistent handles, chunks on a thread pool of
  `codec_batch.codec_threads()` workers), and the same with 1 thread;
- ART 1.20's `JpegCompression` (Pillow, one image at a time), as a user of ART calls it;
- a bare PyTurboJPEG loop (encode + decode per image, the pinned settings: 4:2:0, accurate DCT) and a bare
  OpenCV imencode/imdecode loop: what a careful hand-written loop gets.
Also the per-member defense of a 4-member bundle (q40/q60/q80/q90 per crop: `defense.member_inputs`) against
ART called once per quality. edge_guard's output is checked bit-identical to the bare PyTurboJPEG loop.

ART is only a reference here, not a dependency: pip install adversarial-robustness-toolbox
--data reads GTSRB-style folders of images at run time (Final_Training/Images/*/*.ppm); nothing is stored.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from edge_guard import codec_batch, jpeg
from edge_guard.defense import member_inputs
from edge_guard.hardware import interleaved, machine_info
from edge_guard.scenes import sign_crops
from edge_guard.spec import CodecSpec, DefenseSpec, member_spec


def load_crops(data: str | None, n: int, seed: int) -> tuple[np.ndarray, str]:
    if data is None:
        return sign_crops(n, 32, rng=seed), f"{n} rendered sign crops (edge_guard.scenes.sign_crops, seed {seed})"
    paths = sorted(Path(data).expanduser().glob("**/*.ppm")) or sorted(Path(data).expanduser().glob("**/*.png"))
    if not paths:
        sys.exit(f"error: no .ppm or .png images under {data}")
    pick = np.random.default_rng(seed).choice(len(paths), size=min(n, len(paths)), replace=False)
    crops = [cv2.resize(cv2.imread(str(paths[i]))[..., ::-1], (32, 32), interpolation=cv2.INTER_AREA) for i in pick]
    return np.ascontiguousarray(np.stack(crops)), f"{len(crops)} images from {data} (seeded pick, seed {seed})"


def art_jpeg(quality: int) -> Callable[[np.ndarray], np.ndarray]:
    try:
        from art.defences.preprocessor import JpegCompression
    except ImportError:
        sys.exit("error: this benchmark compares against the Adversarial Robustness Toolbox, which is not installed.\n"
                 "Install it for the benchmark only: pip install adversarial-robustness-toolbox")
    art = JpegCompression(clip_values=(0, 255), quality=quality, channels_first=False, apply_predict=True)
    return lambda x: art(x)[0]


def bare_turbo(quality: int) -> Callable[[np.ndarray], np.ndarray]:
    import turbojpeg

    handle = turbojpeg.TurboJPEG()
    kw = {"pixel_format": turbojpeg.TJPF_RGB, "flags": turbojpeg.TJFLAG_ACCURATEDCT}
    return lambda x: np.stack([handle.decode(handle.encode(im, quality=quality, jpeg_subsample=turbojpeg.TJSAMP_420,
                                                           **kw), **kw) for im in x])


def bare_opencv(quality: int) -> Callable[[np.ndarray], np.ndarray]:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]
    return lambda x: np.stack([cv2.imdecode(cv2.imencode(".jpg", im, params)[1], cv2.IMREAD_COLOR) for im in x])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="GTSRB-style image folder read at run time (default: rendered).")
    parser.add_argument("--n", type=int, default=2048, help="Crops in the batch.")
    parser.add_argument("--quality", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="Write the results as JSON.")
    args = parser.parse_args()
    x, origin = load_crops(args.data, args.n, args.seed)
    n, q = len(x), args.quality
    art = art_jpeg(q)
    single = {
        "edge_guard": lambda: jpeg.roundtrip(x, q),
        "edge_guard, 1 thread": lambda: jpeg.roundtrips(x, [q], threads=1),
        "ART JpegCompression": lambda: art(x),
        "bare PyTurboJPEG loop": lambda: bare_turbo(q)(x),
        "bare OpenCV loop": lambda: bare_opencv(q)(x),
    }
    identical = bool(np.array_equal(jpeg.roundtrip(x, q, backend="turbojpeg"), bare_turbo(q)(x)))
    qualities = (40, 60, 80, 90)
    defense = DefenseSpec(kind="jpeg", qualities=qualities, per_member=True, subsampling="420",
                          codec=CodecSpec(backend=jpeg.resolve_backend(), version="-"), in_graph=False)
    members = [member_spec("jpeg", qq) for qq in qualities]
    arts = [art_jpeg(qq) for qq in qualities]
    per_member = {
        "edge_guard member_inputs": lambda: member_inputs(x, defense, members),
        "ART, once per quality": lambda: [a(x) for a in arts],
    }
    t1 = interleaved(single, args.rounds)
    t4 = interleaved(per_member, args.rounds)
    rate = {k: n / v for k, v in t1.items()}
    rate4 = {k: n * len(qualities) / v for k, v in t4.items()}
    threads = codec_batch.codec_threads()
    lines = [f"$ python {' '.join(sys.argv)}", f"{origin}; JPEG q{q} 4:2:0; {args.rounds} interleaved rounds, medians; "
             f"codec threads {threads}", *(f"  {k:<28} {v:>9,.0f} img/s  ({v / rate['ART JpegCompression']:.1f}x ART)"
                                           for k, v in rate.items()),
             f"edge_guard output bit-identical to the bare PyTurboJPEG loop: {identical}",
             f"per-member defense q{'/'.join(map(str, qualities))} (round trips/s):",
             *(f"  {k:<28} {v:>9,.0f} round trips/s" for k, v in rate4.items()),
             f"  ratio {rate4['edge_guard member_inputs'] / rate4['ART, once per quality']:.1f}x ART",
             f"limit: {threads} threads x the 1-thread rate = {threads * rate['edge_guard, 1 thread']:,.0f} img/s; "
             f"reached {100 * rate['edge_guard'] / (threads * rate['edge_guard, 1 thread']):.0f}% of it"]
    print("\n".join(lines))
    if args.out:
        out = {"command": "python " + " ".join(sys.argv), "origin": origin, "quality": q, "n": n,
               "rounds": args.rounds, "codec_threads": threads, "seconds": t1, "images_per_s": rate,
               "ratio_vs_art": {k: v / rate["ART JpegCompression"] for k, v in rate.items()},
               "bit_identical": identical, "per_member": {"qualities": list(qualities), "seconds": t4,
                                                          "round_trips_per_s": rate4},
               "machine": machine_info()}
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        Path(args.out).with_suffix(".txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {args.out} and {Path(args.out).with_suffix('.txt')}")


if __name__ == "__main__":
    main()
