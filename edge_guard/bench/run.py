"""run_bench: every variant over the same frames, interleaved frame by frame, beside a bare decode of them."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_guard import jpeg
from edge_guard.bench.config import BenchConfig, Variant, parse_variant
from edge_guard.bench.frames import BenchFrames, bench_frames, encoded_again
from edge_guard.bench.report import STAGES, BenchReport
from edge_guard.bench.stats import CpuMeter, peak_rss_mb, percentiles, stage_stats
from edge_guard.errors import ConfigError, expected_got
from edge_guard.guard import Guard
from edge_guard.progress import progress_bar
from edge_guard.stream import classify_frame


def _guard(bundle: str | Path | None, variant: Variant, config: BenchConfig) -> Guard:
    path: str | Path | None = variant.bundle or bundle
    if variant.precision is not None:
        from edge_guard.bundle import default_bundle_path

        base = Path(path) if path is not None else default_bundle_path()
        path = base.parent / f"{base.name}-{variant.precision}"
        if not path.is_dir():
            raise ConfigError(expected_got(f"--compare {variant.name}", f"a bundle folder {path}", "none",
                                           f"Export one with `edgeguard export ... --precision {variant.precision}`."))
    return Guard.from_bundle(
        path, providers=list(variant.providers or config.providers),
        threads=variant.threads if variant.threads is not None else config.threads, use_fused=variant.use_fused,
        seed=config.seed, trusted_keys=list(config.trusted_keys) or None, provider_options=config.provider_options,
        strict_providers=not config.allow_fallback, spin=config.spin if variant.spin is None else variant.spin)


def _variants(bundle: str | Path | None, config: BenchConfig) -> dict[str, Guard]:
    """The bundle in its default form first, then each --compare variant (per-member sessions by default
    when the bundle has a fused graph)."""
    first = _guard(bundle, Variant("default"), config)
    base = "fused" if first.engine.use_fused else "members"
    guards = {base: first}
    specs = config.compare or (("members",) if first.engine.use_fused else ())
    for spec in specs:
        variant = parse_variant(spec)
        if variant.name not in guards:
            guards[variant.name] = _guard(bundle, variant, config)
    return guards


def _bare_decoders(backend: str) -> tuple[Any, Any]:
    """Full-size and 1/8-scale decodes straight through libjpeg-turbo (PyTurboJPEG or OpenCV)."""
    if backend == "turbojpeg":
        import turbojpeg

        handle, flags = jpeg.turbo_handle(), turbojpeg.TJFLAG_ACCURATEDCT
        return (lambda d: handle.decode(d, pixel_format=turbojpeg.TJPF_RGB, flags=flags),
                lambda d: handle.decode(d, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=(1, 8), flags=flags))
    return (lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR),
            lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_REDUCED_COLOR_8))


def _limits(guards: dict[str, Guard], crops: float, threads: int | None) -> dict[str, Any]:
    """Multiply-adds per crop of each variant's graphs against the measured matmul peak at the run's thread
    count (all cores unless threads is given; needs `onnx` for the count)."""
    from edge_guard.hardware import graph_macs, matmul_peak

    peak = matmul_peak(threads=threads if threads else None)
    out: dict[str, Any] = {"matmul_gflops": peak["gflops"], "matmul": peak}
    for name, guard in guards.items():
        b = guard.bundle
        try:
            files = [b.fused.file] if guard.engine.use_fused and b.fused is not None else [m.file for m in b.members]
            macs = sum(graph_macs(b.root / f) for f in files)
        except ImportError:
            out["note"] = "multiply-adds not counted: install onnx (pip install onnx)"
            return out
        except Exception as exc:  # a graph the counter does not understand must not cost the run its results
            out[name] = {"note": f"multiply-adds not counted: {type(exc).__name__}: {exc}"}
            continue
        out[name] = {"macs_per_crop": macs, "arithmetic_ms": 2 * macs * crops / (peak["gflops"] * 1e9) * 1000}
    return out


def run_bench(bundle: str | Path | None = None, config: BenchConfig = BenchConfig(), *,
              progress: bool = True) -> BenchReport:
    """Time the whole frame path (decode, crop+resize, defense, inference, vote) of every variant on the same
    frames, interleaved frame by frame so load from other processes hits all alike. Returns a BenchReport."""
    config.check()
    guards = _variants(bundle, config)
    first = next(iter(guards.values()))
    frames = bench_frames(config, max(first.bundle.input.height, first.bundle.input.width))
    backend = jpeg.resolve_backend()
    full, floor = _bare_decoders(backend)
    ref_frames = encoded_again(frames)
    timings: dict[str, list[dict[str, float]]] = {n: [] for n in guards}
    scales: dict[str, list[int]] = {n: [] for n in guards}
    meters = {n: CpuMeter() for n in guards}
    ref: dict[str, list[float]] = {"decode_full": [], "decode_floor": []}
    n_frames = len(frames.frames)
    with progress_bar(enabled=progress, transient=True) as bar:
        task = bar.add_task("bench", total=config.warmup + config.frames)
        for i in range(config.warmup + config.frames):
            frame = frames.frames[i % n_frames]
            timed = i >= config.warmup
            data = ref_frames.frames[i % len(ref_frames.frames)].jpeg
            pairs = (("decode_full", full), ("decode_floor", floor))
            for key, decode in pairs if i % 2 else pairs[::-1]:  # alternated: neither always follows the variants
                t0 = time.perf_counter()
                decode(data)
                if timed:
                    ref[key].append((time.perf_counter() - t0) * 1000.0)
            for name, guard in guards.items():
                _one(name, guard, frame, frames, config, timings, scales, meters, timed)
            bar.advance(task)
    return _report(bundle, config, frames, guards, timings, scales, meters, ref)


def _one(name: str, guard: Guard, frame: Any, frames: BenchFrames, config: BenchConfig,
         timings: dict[str, list[dict[str, float]]], scales: dict[str, list[int]], meters: dict[str, CpuMeter],
         timed: bool) -> None:
    session_ms: list[float] = []
    with meters[name] if timed else _Null():
        result = classify_frame(guard, frame, frames.regions, dct_scaling=config.dct_scaling,
                                backend=str(guard.backend or "auto"), session_ms=session_ms)
    if not timed:
        return
    labels = ["fused"] if guard.engine.use_fused else [m.name for m in guard.bundle.members]
    t = dict(result.timings_ms)
    t.update({f"session:{label}": ms for label, ms in zip(labels, session_ms)})
    timings[name].append(t)
    scales[name].append(result.decode_scale)


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _report(bundle: str | Path | None, config: BenchConfig, frames: BenchFrames, guards: dict[str, Guard],
            timings: dict[str, list[dict[str, float]]], scales: dict[str, list[int]], meters: dict[str, CpuMeter],
            ref: dict[str, list[float]]) -> BenchReport:
    from edge_guard.hardware import machine_info

    crops = frames.crops_per_frame()
    results: dict[str, dict[str, Any]] = {}
    for name, guard in guards.items():
        ts = timings[name]
        labels = sorted({k for t in ts for k in t if k.startswith("session:")}, key=list(ts[0]).index)
        stats = stage_stats(ts, STAGES)
        per_s = 1000.0 / stats["total"]["mean"] if stats["total"]["mean"] > 0 else 0.0
        results[name] = {
            "stages": stats, "sessions": {k.removeprefix("session:"): percentiles([t[k] for t in ts]) for k in labels},
            "frames_per_s": per_s, "crops_per_s": per_s * crops, "cpu_use": meters[name].cpu_use,
            "decode_scale": int(np.median(scales[name])), "providers": list(guard.engine.active_providers),
            "bundle": guard.bundle.name, "path": str(guard.bundle.root), "fused": guard.engine.use_fused,
            "members": len(guard.bundle.members), "defense": {
                "kind": str(guard.bundle.defense.kind), "per_member": guard.bundle.defense.per_member,
                "in_graph": guard.bundle.defense.in_graph, "backend": guard.backend}}
    reference = {k: percentiles(v) for k, v in ref.items()}
    names = list(results)
    p50 = {n: results[n]["stages"]["total"]["p50"] for n in names}
    ratios = {n: {"over_first": p50[n] / p50[names[0]],
                  "over_full_decode": p50[n] / max(reference["decode_full"]["p50"], 1e-9)} for n in names}
    first = guards[names[0]]
    cfg = dataclasses.asdict(config)
    cfg["synthetic"] = list(config.synthetic)
    return BenchReport(
        bundle=first.bundle.name, path=str(first.bundle.root), config=cfg,
        frames={"origin": frames.origin, "size": list(frames.size), "distinct": len(frames.frames),
                "crops_per_frame": crops, "jpeg": frames.jpeg,
                "decode_timed": frames.jpeg},
        variants=tuple(names), results=results, reference=reference, ratios=ratios,
        limits=_limits(guards, crops, config.threads), machine=machine_info(), peak_rss_mb=peak_rss_mb())
