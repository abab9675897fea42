"""What the hardware allows: this machine's description, its measured matmul peak, and a graph's multiply-adds.

    machine_info()                        # {"cpu": "AMD EPYC", "cores": 2, "platform": ..., ...}
    matmul_peak()                         # {"gflops": 61.2, "n": 1024, "threads": "numpy default"}
    graph_macs("export/x/q40.onnx")       # multiply-adds per image (Conv, Gemm, MatMul), batch 1

The figures a latency is set against: a member's multiply-adds per crop over the peak give the time the
arithmetic alone needs (2 flops per multiply-add). Counting needs the `onnx` package (the dev and train
extras have it); without it graph_macs raises ImportError and `bench` leaves the figure out.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, platform and the library versions that set the speed."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    import cv2
    import onnxruntime

    from edge_guard import jpeg

    return {"cpu": cpu, "cores": cores, **nominal_peak(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
            "opencv": cv2.__version__, "libjpeg_turbo": jpeg.codec_info()["version"],
            "jpeg_backend": jpeg.resolve_backend()}


def nominal_peak() -> dict[str, Any]:
    """An upper bound: float32 flops per cycle per core from the SIMD flags (AVX-512: 64, AVX2+FMA: 32, AVX:
    16, else 8; two full-width FMA units, which not every core has: AMD Zen 4 runs AVX-512 on 256-bit units,
    32) times the clock /proc/cpuinfo reports now. Turbo, thermal limits and hyperthreads sharing a core move
    the real figure; `matmul_peak` measures it. Empty off Linux."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return {}
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    mhz = next((float(line.split(":", 1)[1]) for line in text.splitlines() if line.startswith("cpu MHz")), 0.0)
    simd, per_cycle = (("avx512f", 64) if "avx512f" in flags else ("avx2+fma", 32) if {"avx2", "fma"} <= flags
                       else ("avx", 16) if "avx" in flags else ("sse", 8))
    return {"simd": simd, "cpu_mhz": mhz, "nominal_gflops_per_core": per_cycle * mhz / 1000}


def matmul_peak(n: int = 1024, repeats: int = 9, threads: int | None = None) -> dict[str, Any]:
    """The CPU's float32 throughput as numpy's BLAS reaches it: the best of `repeats` n x n matmuls, in GFLOP/s
    (2 n^3 flops each). threads=None: BLAS's default (all cores) in this process; a number: measured in a
    child process whose BLAS is limited to that many threads (OpenBLAS/MKL/OpenMP read it at start)."""
    if threads is not None:
        env = {**os.environ, **{k: str(threads) for k in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                             "OMP_NUM_THREADS")}}
        code = ("import json; from edge_guard.hardware import matmul_peak; "
                f"print(json.dumps(matmul_peak({n}, {repeats})))")
        try:
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                                 timeout=120)
            return {**json.loads(out.stdout.strip().splitlines()[-1]), "threads": threads}
        except (OSError, ValueError, IndexError, subprocess.SubprocessError) as exc:  # no child interpreter
            return {**matmul_peak(n, repeats), "note": f"measured in-process, all threads ({type(exc).__name__})"}
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    a @ b  # warm-up: page in, spin up threads
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return {"gflops": 2 * n**3 / best / 1e9, "n": n, "threads": "all (BLAS default)"}


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each contender, called round-robin `rounds` times after `warmup` calls each:
    on a noisy machine the load then hits every contender alike, so their ratios hold."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def _dims(value_info: Any) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else 1 for d in value_info.type.tensor_type.shape.dim]


def graph_macs(path: str | Path) -> int:
    """Multiply-adds per image of an ONNX graph's Conv, ConvTranspose, Gemm and MatMul nodes at batch 1
    (the batch and any other symbolic dimension set to 1; shapes from onnx's shape inference)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    for inp in model.graph.input:  # a dynamic batch axis becomes 1
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = 1
    model = shape_inference.infer_shapes(model)
    g = model.graph
    shapes = {v.name: _dims(v) for v in [*g.input, *g.value_info, *g.output]}
    shapes.update({t.name: list(numpy_helper.to_array(t).shape) for t in g.initializer})
    macs = 0
    for node in g.node:
        if node.op_type in ("Conv", "ConvTranspose") and node.output[0] in shapes and node.input[1] in shapes:
            w, out = shapes[node.input[1]], shapes[node.output[0]]  # w: [Cout, Cin/group, kh, kw]
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul") and node.input[0] in shapes and node.output[0] in shapes:
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            transpose_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if transpose_a else a[-1]
            macs += int(np.prod(out)) * int(k)
    return macs
