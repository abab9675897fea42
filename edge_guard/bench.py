"""Per-stage latency of the Guard pipeline on synthetic frames.

    report = run_bench(None, BenchConfig(batches=(1, 8, 32)))      # None: the shipped default bundle
    report.results["fused"]["8"]["stages"]["total"]["p50"]         # ms per classify call of 8 frames
    report.ratios["fused_over_members"]["8"]                       # fused / per-member sessions, p50 total
    report.to_dict()                                               # what `edgeguard bench --json` writes

Frames are seeded uniform-noise uint8 RGB, size x size; each `classify` call gets one batch and
records `Prediction.timings_ms` (preprocess, defense, inference, vote, total, in ms). Noise is the
worst case for the JPEG defense (nothing compresses), so `defense` is an upper bound for camera images.
When the bundle has a fused graph, the fused graph and the per-member sessions are both measured,
interleaved call by call, so load from other processes hits both alike and their ratio is fair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from edge_guard.errors import ConfigError, expected_got
from edge_guard.guard import STAGES, Guard
from edge_guard.progress import progress_bar

_POOL = 4  # distinct synthetic batches per batch size, cycled through the iterations


@dataclass(frozen=True)
class BenchConfig:
    """batches: images per classify call; iterations: timed calls per batch size and variant;
    warmup: untimed calls before them; size: synthetic frame side in pixels (each is resized to the
    model input); providers/threads: as Guard.from_bundle; seed: frames and SLQ."""

    batches: tuple[int, ...] = (1, 8, 32)
    iterations: int = 50
    warmup: int = 5
    size: int = 64
    providers: tuple[str, ...] = ("cpu",)
    threads: int | None = None
    seed: int = 0
    trusted_keys: tuple[str, ...] = ()  # public key files: the bundles must be signed by one of them
    provider_options: dict[str, dict[str, Any]] | None = None  # per provider, e.g. TensorRT fp16 and engine cache
    allow_fallback: bool = False  # a provider that fails to start: the next one runs (logged) instead of an error

    def check(self) -> None:
        for name, value, lo in (("iterations", self.iterations, 1), ("warmup", self.warmup, 0), ("size", self.size, 1)):
            if value < lo:
                raise ConfigError(expected_got(f"bench {name}", f"an integer >= {lo}", value))
        if not self.batches or any(b < 1 for b in self.batches):
            raise ConfigError(expected_got("bench batches", "one or more batch sizes >= 1", list(self.batches)))


@dataclass(frozen=True)
class BenchReport:
    """What run_bench measured. results[variant][str(batch)] = {"stages": {stage: {p50, p90, mean}},
    "images_per_s"}; ratios: fused_over_members[str(batch)] (p50 total fused / members; only with a fused
    graph), compare_over_bundle[str(batch)] (p50 total of "compare" / the bundle's first variant; only with
    compare), defense_share[variant][str(batch)] (mean defense / mean total)."""

    bundle: str
    path: str
    config: BenchConfig
    providers: tuple[str, ...]  # the execution providers that really ran
    defense: dict[str, Any]
    members: int
    input: tuple[int, int]
    variants: tuple[str, ...]
    results: dict[str, dict[str, Any]]
    ratios: dict[str, Any]
    compare: dict[str, Any] | None = None  # the second bundle: bundle, path, members, against

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**asdict(self), "providers": list(self.providers), "input": list(self.input),
                "variants": list(self.variants)}

    def table(self) -> Table:
        """p50 ms per stage and images/s, one row per variant and batch size."""
        table = Table(title=f"{self.bundle} on {self.providers[0]}: p50 ms per call (p90 of total; all in --json)")
        short = {"preprocess": "prep", "inference": "infer"}
        for column in ("variant", "batch", *(short.get(s, s) for s in STAGES), "p90", "img/s"):
            table.add_column(column, justify="left" if column == "variant" else "right")
        for variant, by_batch in self.results.items():
            for b, r in by_batch.items():
                cells = [f"{r['stages'][s]['p50']:.2f}" for s in STAGES] + [f"{r['stages']['total']['p90']:.2f}"]
                table.add_row(variant, b, *cells, f"{r['images_per_s']:.0f}")
        return table

    def budget_check(self, budget_ms: float, batch: int) -> tuple[bool, str]:
        """Whether p99 total latency at `batch` (the first variant) is within budget_ms, and a line saying so."""
        results = self.results[self.variants[0]]
        key = str(batch) if str(batch) in results else next(iter(results))
        p99 = results[key]["stages"]["total"]["p99"]
        ok = p99 <= budget_ms
        return ok, (f"latency budget: p99 total {p99:.2f} ms at batch {key} ({self.variants[0]}) "
                    f"{'<=' if ok else '>'} {budget_ms:g} ms: {'PASS' if ok else 'FAIL'}")

    def summary(self) -> list[str]:
        """One line per batch size: the ratios measured in the same run."""
        lines = []
        for b in self.results[self.variants[0]]:
            parts = [f"defense {100 * self.ratios['defense_share'][v][b]:.0f}% of total ({v})" for v in self.variants]
            if "fused_over_members" in self.ratios:
                parts.insert(0, f"fused/members total {self.ratios['fused_over_members'][b]:.2f}x")
            if self.compare:
                c = self.compare
                parts.insert(0, f"compare ({c['bundle']}, {c['members']} members) / {self.bundle} {c['against']}: "
                                f"total p50 {self.ratios['compare_over_bundle'][b]:.2f}x")
            lines.append(f"batch {b}: " + ", ".join(parts))
        return lines


def stage_stats(timings: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """p50, p90 and mean in ms of every stage over a list of `timings_ms` dicts."""
    out = {}
    for stage in STAGES:
        ms = np.asarray([t[stage] for t in timings], dtype=np.float64)
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        out[stage] = {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(ms.mean())}
    return out


def _frames(rng: np.random.Generator, batch: int, size: int) -> list[np.ndarray]:
    return [rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8) for _ in range(_POOL)]


def run_bench(bundle: str | Path | None = None, config: BenchConfig = BenchConfig(), *,
              compare: str | Path | None = None, progress: bool = True) -> BenchReport:
    """Measure every variant (fused and per-member sessions when a fused graph exists) at every batch size.

    compare: a second bundle, measured in its default form (fused graph if it has one) interleaved with
    the others as variant "compare", e.g. a larger model against the shipped one.
    Returns a BenchReport.
    """
    config.check()
    opts = dict(providers=list(config.providers), threads=config.threads, seed=config.seed,
                trusted_keys=list(config.trusted_keys) or None, provider_options=config.provider_options,
                strict_providers=not config.allow_fallback)
    guards = {"members": Guard.from_bundle(bundle, use_fused=False, **opts)}  # type: ignore[arg-type]
    if guards["members"].bundle.fused is not None:
        guards = {"fused": Guard.from_bundle(bundle, use_fused=True, **opts), **guards}  # type: ignore[arg-type]
    if compare is not None:
        guards["compare"] = Guard.from_bundle(compare, **opts)  # type: ignore[arg-type]
    rng = np.random.default_rng(config.seed)
    results: dict[str, dict[str, Any]] = {name: {} for name in guards}
    steps = len(config.batches) * len(guards) * (config.warmup + config.iterations)
    with progress_bar(enabled=progress, transient=True) as bar:
        task = bar.add_task("bench", total=steps)
        for batch in config.batches:
            pool = _frames(rng, batch, config.size)
            timings: dict[str, list[dict[str, float]]] = {name: [] for name in guards}
            bar.update(task, description=f"batch {batch}")
            for i in range(config.warmup + config.iterations):
                for name, guard in guards.items():  # interleaved: both variants see the same load
                    preds = guard.classify(pool[i % _POOL])
                    if i >= config.warmup:
                        timings[name].append(preds[0].timings_ms)
                    bar.advance(task)
            for name, ts in timings.items():
                stats = stage_stats(ts)
                results[name][str(batch)] = {"stages": stats, "images_per_s": 1000.0 * batch / stats["total"]["mean"]}
    ratios: dict[str, Any] = {"defense_share": {
        name: {b: r["stages"]["defense"]["mean"] / r["stages"]["total"]["mean"] for b, r in res.items()}
        for name, res in results.items()}}

    def p50_ratio(a: str, b: str) -> dict[str, float]:
        return {n: results[a][n]["stages"]["total"]["p50"] / results[b][n]["stages"]["total"]["p50"]
                for n in results[b]}

    if "fused" in results:
        ratios["fused_over_members"] = p50_ratio("fused", "members")
    first_name, first = next(iter(guards.items()))
    if "compare" in guards:
        ratios["compare_over_bundle"] = p50_ratio("compare", first_name)
    d = first.bundle.defense
    return BenchReport(
        bundle=first.bundle.name, path=str(first.bundle.root), config=config,
        providers=tuple(first.engine.active_providers),
        defense={"kind": str(d.kind), "per_member": d.per_member, "in_graph": d.in_graph, "backend": first.backend},
        members=len(first.bundle.members), input=(first.bundle.input.height, first.bundle.input.width),
        variants=tuple(guards), results=results, ratios=ratios,
        compare=None if "compare" not in guards else {
            "bundle": guards["compare"].bundle.name, "path": str(guards["compare"].bundle.root),
            "members": len(guards["compare"].bundle.members), "against": first_name})
