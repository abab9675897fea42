"""Latency percentiles, and what a run costs the machine: CPU time per wall time and peak memory."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Sequence

import numpy as np

PERCENTILES = (50, 90, 99)


def percentiles(ms: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, max and mean of a list of milliseconds."""
    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    p = np.percentile(a, PERCENTILES)
    return {**{f"p{q}": float(v) for q, v in zip(PERCENTILES, p)}, "max": float(a.max()), "mean": float(a.mean())}


def stage_stats(timings: Sequence[dict[str, float]], stages: Sequence[str]) -> dict[str, dict[str, float]]:
    """percentiles() of every stage over a list of timings_ms dicts (a missing stage counts as 0)."""
    return {s: percentiles([t.get(s, 0.0) for t in timings]) for s in stages}


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB (ru_maxrss: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class CpuMeter:
    """Process CPU time (all threads: onnxruntime's and the codec pool's) over wall time, summed over the
    calls measured with `with meter:`; cpu_use 1.0 = one core busy all the time."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0

    def __enter__(self) -> CpuMeter:
        self._c, self._w = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu += time.process_time() - self._c
        self.wall += time.perf_counter() - self._w

    @property
    def cpu_use(self) -> float:
        return self.cpu / self.wall if self.wall > 0 else 0.0
