"""Ensemble inference on the CPU: fused graph vs per-member sessions vs PyTorch eager, at batch 1 and 64.

    python benchmarks/ensemble_inference.py                                 # the default bundle (4 x ResNet-14)
    python benchmarks/ensemble_inference.py --bundle export/gtsrb-shield --batches 1,64 --rounds 30 --out r.json

What runs, on the same per-member inputs ([M, N, 3, 32, 32], one batch per member), interleaved round by
round, medians:
- members: one onnxruntime session per member, called one after the other (the runtime's per-member path);
- fused: the bundle's fused graph (all members in one graph, one call);
- fused, parallel: the same graph with onnxruntime's parallel executor (members' branches on inter-op threads);
- members, concurrent: the member sessions called from a thread pool (onnxruntime releases the GIL);
- grouped: the members fused horizontally into one graph of M-times-wider grouped operators
  (edge_guard.training.export.grouped: every conv of the M members as one conv with groups=M, a block-diagonal
  last layer), built here from the bundle's member graphs; its logits are checked against theirs;
- PyTorch eager: the M member modules (random weights, same architecture) looped, torch.inference_mode.
Each at --threads intra-op threads (1 and 2 by default). Beside each: the members' multiply-adds (counted from
the ONNX graphs) at the numpy matmul peak for that thread count: the time the arithmetic alone needs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_guard.bundle import default_bundle_path, load_bundle
from edge_guard.hardware import graph_macs, interleaved, machine_info, matmul_peak


def session(model: str | bytes, threads: int, parallel: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads if not parallel else 1
    options.inter_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if parallel:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def grouped_graph(files: list[Path]) -> tuple[bytes | None, str]:
    """The members grouped into one graph (edge_guard.training.export.grouped, needs onnx), and a note."""
    try:
        import onnx

        from edge_guard.training.export.grouped import group
    except ImportError as exc:
        return None, f"grouped graph not built ({exc})"
    return group([onnx.load(str(f)) for f in files]).SerializeToString(), "grouped from the members' own weights"


def torch_members(members: int, depth: int, width: int, classes: int, arch: str) -> list | None:
    try:
        import torch  # noqa: F401

        from edge_guard.training.models import create_model
    except ImportError:
        return None
    kwargs = {"depth": depth, "width": width} if arch == "resnet" else {}
    return [create_model("resnet_small" if arch == "resnet" else "compact_cnn", classes, **kwargs).eval()
            for _ in range(members)]


def contenders(x: np.ndarray, members: list, fused: ort.InferenceSession | None,
               fused_parallel: ort.InferenceSession | None, single: list, pool: ThreadPoolExecutor,
               group: ort.InferenceSession | None, eager: list | None) -> dict[str, Callable[[], object]]:
    """The calls timed on per-member inputs x [M, N, 3, 32, 32]."""
    m = x.shape[0]
    xs = [np.ascontiguousarray(x[i]) for i in range(m)]
    c: dict[str, Callable[[], object]] = {"members": lambda: [s.run(None, {"input": xi}) for s, xi in zip(members, xs)]}
    if fused is not None and fused_parallel is not None:
        xf = x if len(fused.get_inputs()[0].shape) == 5 else xs[0]
        c["fused"] = lambda: fused.run(None, {"input": xf})
        c["fused, parallel executor"] = lambda: fused_parallel.run(None, {"input": xf})
    c["members, concurrent"] = lambda: list(pool.map(lambda a: a[0].run(None, {"input": a[1]}), zip(single, xs)))
    if group is not None:
        c["grouped (horizontal fusion)"] = lambda: group.run(None, {"input": x})
    if eager is not None:
        import torch

        tx = [torch.from_numpy(xi) for xi in xs]

        def run_eager() -> None:
            with torch.inference_mode():
                for mod, xi in zip(eager, tx):
                    mod(xi)

        c["PyTorch eager"] = run_eager
    return c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    bundle = load_bundle(args.bundle or default_bundle_path())
    m = len(bundle.members)
    files = [bundle.root / mem.file for mem in bundle.members]
    macs = sum(graph_macs(f) for f in files)
    resnet = "resnet" in bundle.description.lower() or "r14" in bundle.name
    depth, width = 14, 16
    grouped, note = grouped_graph(files)
    eager = torch_members(m, depth, width, bundle.num_classes, "resnet" if resnet else "compact")
    import torch

    lines = [f"$ python {' '.join(sys.argv)}", note,
             f"{bundle.name}: {m} members, {macs / 1e6:.1f} M multiply-adds per crop (all members, from the ONNX "
             f"graphs); {args.rounds} interleaved rounds, medians, ms per call"]
    results = []
    for threads in (int(t) for t in args.threads.split(",")):
        peak = matmul_peak(threads=threads)["gflops"]
        torch.set_num_threads(threads)
        members = [session(str(f), threads) for f in files]
        fused = session(str(bundle.root / bundle.fused.file), threads) if bundle.fused else None
        fused_parallel = session(str(bundle.root / bundle.fused.file), threads, parallel=True) if bundle.fused else None
        single = [session(str(f), 1) for f in files]
        pool = ThreadPoolExecutor(threads)
        group = session(grouped, threads) if grouped else None
        for n in (int(b) for b in args.batches.split(",")):
            x = np.random.default_rng(0).random((m, n, 3, 32, 32), dtype=np.float32)
            c = contenders(x, members, fused, fused_parallel, single, pool, group, eager)
            if group is not None:
                ref = np.stack([s.run(None, {"input": xi})[0] for s, xi in zip(members, x)])
                diff = float(np.abs(group.run(None, {"input": x})[0] - ref).max())
                note_n = f"; grouped vs members max |logit diff| {diff:.1e}"
            else:
                note_n = ""
            t = {k: s * 1000.0 for k, s in interleaved(c, args.rounds, warmup=2).items()}  # ms
            floor = 2 * macs * n / (peak * 1e9) * 1000
            lines.append(f"threads {threads}, batch {n}: arithmetic at the matmul peak ({peak:.0f} GFLOP/s) "
                         f"{floor:.2f} ms{note_n}")
            for k, v in t.items():
                lines.append(f"  {k:<30} {v:8.2f} ms  {v / t['members']:.2f}x members  "
                             f"{100 * floor / v:3.0f}% of peak  {n * 1000 / v:8.0f} crops/s")
            results.append({"threads": threads, "batch": n, "ms": t, "floor_ms": floor, "peak_gflops": peak})
        pool.shutdown()
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps({"command": "python " + " ".join(sys.argv), "bundle": bundle.name,
                                              "macs_per_crop": macs, "results": results, "machine": machine_info(),
                                              "pid": os.getpid()}, indent=2) + "\n", encoding="utf-8")
        Path(args.out).with_suffix(".txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {args.out} and {Path(args.out).with_suffix('.txt')}")


if __name__ == "__main__":
    main()
