"""A longer fuzz run than the test suite's: mutated frames, byte streams and manifests, bounded in time.

    python benchmarks/fuzz_inputs.py --inputs 12000 --seconds 300 --json benchmarks/results/fuzz_inputs.json

Three targets, each input seeded (rerun with the same --seed to replay):
- frames: mutated and truncated JPEGs through the whole frame loop (`run_stream`: header checks, the
  DCT-scaled decode, regions, the defense, onnxruntime, the vote) with the shipped bundle;
- streams: the same bytes concatenated and cut into random chunks through the MJPEG splitter;
- manifests: the shipped manifest with one value, at a random depth, replaced by random JSON (NaN,
  inf, huge integers, control characters, wrong types), through the schema and the cross-field rules.
An input passes when it ends as a result, a counted FrameError or an EdgeGuardError. Anything else
(another exception) is a crash; an input taking longer than --hang-ms is a hang. Exit code 1 on any.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from edge_guard import Guard, jpeg
from edge_guard.bundle import bundle_from_dict
from edge_guard.errors import EdgeGuardError
from edge_guard.sources.base import StreamSource
from edge_guard.sources.frame import Frame
from edge_guard.sources.mjpeg import split_jpegs
from edge_guard.stream import StreamStats, run_stream

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "export" / "gtsrb-shield"


def mutate(rng: np.random.Generator, data: bytes) -> bytes:
    out = bytearray(data)
    kind = int(rng.integers(5))
    if kind == 0:  # flip bytes
        for pos in rng.integers(0, len(out), size=int(rng.integers(1, 16))):
            out[pos] = int(rng.integers(0, 256))
    elif kind == 1:  # truncate
        out = out[: int(rng.integers(2, len(out)))]
    elif kind == 2:  # duplicate a run
        a, b = sorted(rng.integers(0, len(out), size=2))
        out = out[:b] + out[a:b] + out[b:]
    elif kind == 3:  # delete a run
        a, b = sorted(rng.integers(0, len(out), size=2))
        out = out[:a] + out[b:]
    else:  # rewrite the frame size in the header (bombs and zero sizes)
        i = out.find(b"\xff\xc0")
        if i > 0:
            h, w = (int(v) for v in rng.integers(0, 65536, size=2))
            out[i + 5:i + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    return bytes(out)


def seeds(rng: np.random.Generator) -> list[bytes]:
    shapes = [(32, 32), (48, 64), (120, 160), (240, 320)]
    return [jpeg.encode(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), int(q)) for (h, w) in shapes
            for q in (20, 60, 95)]


def fuzz_frames(guard: Guard, inputs: list[bytes], hang_ms: float) -> dict:
    crashes, hangs, stats = [], 0, StreamStats()
    for i, data in enumerate(inputs):
        t0 = time.perf_counter()
        try:
            for result in run_stream(guard, StreamSource("fuzz", lambda d=data: iter([Frame(i, "fuzz", 0.0, jpeg=d)])),
                                     stats=stats):
                json.dumps(result.to_record("fuzz", ""), allow_nan=False)
        except EdgeGuardError:
            pass
        except Exception as exc:  # a crash: what the run exists to find
            crashes.append({"input": i, "error": f"{type(exc).__name__}: {exc}"})
        hangs += (time.perf_counter() - t0) * 1000 > hang_ms
    return {"inputs": len(inputs), "classified": stats.frames, "refused": dict(stats.corrupt),
            "decoded_with_warnings": stats.warned, "crashes": crashes, "hangs": hangs}


def fuzz_streams(rng: np.random.Generator, inputs: list[bytes]) -> dict:
    crashes, pieces = [], 0
    for start in range(0, len(inputs), 50):
        blob = b"".join(inputs[start:start + 50])
        cuts = np.sort(rng.integers(0, len(blob), size=20))
        chunks = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)])]
        try:
            pieces += sum(1 for _ in split_jpegs(chunks))
        except Exception as exc:
            crashes.append({"input": start, "error": f"{type(exc).__name__}: {exc}"})
    return {"streams": -(-len(inputs) // 50), "pieces": pieces, "crashes": crashes}


def random_json(rng: np.random.Generator, depth: int = 0) -> object:
    """A random JSON value: scalars of every type (NaN, inf, control characters, huge ints), lists, objects."""
    kind = int(rng.integers(9 if depth < 4 else 7))
    if kind == 0:
        return None
    if kind == 1:
        return bool(rng.integers(2))
    if kind == 2:
        return int(rng.choice([0, -1, 1, 100, 101, 2**63, -(2**70), int(rng.integers(-1000, 1000))]))
    if kind == 3:
        return float(rng.choice([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e308, rng.normal()]))
    if kind in (4, 5):
        alphabet = "abc420jpegslq\x00\x1b\n\r\t\u202e/..\\"
        return "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), size=int(rng.integers(0, 12))))
    if kind == 6:
        return str(rng.choice(["none", "jpeg", "slq", "majority", "soft", "420", "NCHW", "RGB", "float32"]))
    if kind == 7:
        return [random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))]
    return {str(random_json(rng, 4)): random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))}


def _replace_somewhere(rng: np.random.Generator, node: object) -> object:
    """A copy of the manifest with one value, at a random depth, replaced by random JSON."""
    if isinstance(node, dict) and node and rng.random() < 0.7:
        key = list(node)[int(rng.integers(len(node)))] if rng.random() < 0.9 else "extra"
        return {**node, key: _replace_somewhere(rng, node.get(key))}
    if isinstance(node, list) and node and rng.random() < 0.7:
        i = int(rng.integers(len(node)))
        return [*node[:i], _replace_somewhere(rng, node[i]), *node[i + 1:]]
    return random_json(rng)


def fuzz_manifests(n: int, seed: int) -> dict:
    manifest = json.loads((BUNDLE / "manifest.json").read_text())
    rng = np.random.default_rng([seed, 1])
    crashes, refused = [], 0
    for i in range(n):
        try:
            bundle_from_dict(_replace_somewhere(rng, manifest), BUNDLE)
        except EdgeGuardError as exc:
            refused += 1
            if not str(exc).isprintable():
                crashes.append({"input": i, "error": f"unprintable message: {exc!r}"})
        except Exception as exc:
            crashes.append({"input": i, "error": f"{type(exc).__name__}: {exc}"})
    return {"inputs": n, "refused": refused, "accepted": n - refused - len(crashes), "crashes": crashes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=12000, help="mutated frames (streams reuse them)")
    parser.add_argument("--manifests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=300, help="stop the frame fuzzing after this long")
    parser.add_argument("--hang-ms", type=float, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    base = seeds(rng)
    inputs = [mutate(rng, base[int(rng.integers(len(base)))]) for _ in range(args.inputs)]
    guard = Guard.from_bundle(BUNDLE, threads=1, seed=0)
    t0 = time.perf_counter()
    frames: dict = {"inputs": 0}
    done = []
    for start in range(0, len(inputs), 500):  # in slices, so --seconds bounds the run
        if time.perf_counter() - t0 > args.seconds:
            break
        done.append(fuzz_frames(guard, inputs[start:start + 500], args.hang_ms))
    frames = {"inputs": sum(d["inputs"] for d in done), "classified": sum(d["classified"] for d in done),
              "refused": {k: sum(d["refused"].get(k, 0) for d in done) for d in done for k in d["refused"]},
              "decoded_with_warnings": sum(d["decoded_with_warnings"] for d in done),
              "crashes": [c for d in done for c in d["crashes"]], "hangs": sum(d["hangs"] for d in done),
              "seconds": round(time.perf_counter() - t0, 1)}
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)
    report = {"command": f"python benchmarks/fuzz_inputs.py {flags}",
              "machine": platform.platform(), "frames": frames, "streams": fuzz_streams(rng, inputs),
              "manifests": fuzz_manifests(args.manifests, args.seed)}
    total = frames["inputs"] + report["manifests"]["inputs"]
    bad = (len(frames["crashes"]) + frames["hangs"] + len(report["streams"]["crashes"])
           + len(report["manifests"]["crashes"]))
    print(f"frames: {frames['inputs']} mutated JPEGs in {frames['seconds']} s: {frames['classified']} classified, "
          f"refused {frames['refused']}, {frames['decoded_with_warnings']} decoded with libjpeg warnings, "
          f"{len(frames['crashes'])} crashes, {frames['hangs']} hangs (> {args.hang_ms:.0f} ms)")
    s = report["streams"]
    print(f"streams: {s['streams']} concatenated streams cut at random: {s['pieces']} pieces, "
          f"{len(s['crashes'])} crashes")
    m = report["manifests"]
    print(f"manifests: {m['inputs']} hostile values: {m['refused']} refused with a BundleError, {m['accepted']} still "
          f"valid, {len(m['crashes'])} crashes")
    print(f"{total} inputs, {bad} crashes or hangs")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
