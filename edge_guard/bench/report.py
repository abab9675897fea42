"""What `bench` measured, as a terminal table, summary lines, a budget verdict and JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table

STAGES = ("decode", "crop", "defense", "inference", "vote", "total")  # edge_guard.stream's, per frame


@dataclass(frozen=True)
class BenchReport:
    """results[variant] = {"stages": {stage: {p50, p90, p99, max, mean}}, "sessions": {member or "fused": same},
    "frames_per_s", "crops_per_s", "cpu_use", "decode_scale", "providers", ...}; reference: the bare
    libjpeg-turbo decodes of the same frames (full size, and 1/8 scale: entropy decoding alone, the floor of
    any decode of them); ratios[variant]: p50 total over the first variant's and over the bare full decode;
    limits: the measured matmul peak and each variant's multiply-adds per crop with the time they need."""

    bundle: str
    path: str
    config: dict[str, Any]
    frames: dict[str, Any]
    variants: tuple[str, ...]
    results: dict[str, dict[str, Any]]
    reference: dict[str, dict[str, float]]
    ratios: dict[str, dict[str, float]]
    limits: dict[str, Any]
    machine: dict[str, Any]
    peak_rss_mb: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what `edgeguard bench --json` writes)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    def table(self) -> Table:
        """p50 ms per stage, then total p90/p99/max, frames/s, crops/s, CPU use: one row per variant."""
        f = self.frames
        table = Table(title=f"{self.bundle}: {f['origin']}, {f['crops_per_frame']:g} crops/frame, "
                            f"{self.config['frames']} frames; ms per frame (p50 unless named)")
        for column in ("variant", "provider", *STAGES[:-1], "total", "p90", "p99", "max", "fps", "crops/s", "cpu"):
            table.add_column(column, justify="left" if column in ("variant", "provider") else "right")
        for name, r in self.results.items():
            s = r["stages"]
            tail = (f"{s['total'][p]:.2f}" for p in ("p90", "p99", "max"))
            table.add_row(name, r["providers"][0].removesuffix("ExecutionProvider"),
                          *(f"{s[k]['p50']:.2f}" for k in STAGES), *tail,
                          f"{r['frames_per_s']:.1f}", f"{r['crops_per_s']:.0f}", f"{r['cpu_use']:.2f}")
        return table

    def summary(self) -> list[str]:
        """The ratios and the physical limits, one line each."""
        ref = self.reference
        lines = []
        if ref:
            lines.append(f"bare libjpeg-turbo decode of the same frames: full size p50 "
                         f"{ref['decode_full']['p50']:.2f} ms, 1/8 scale (entropy decoding only) "
                         f"{ref['decode_floor']['p50']:.2f} ms")
        for name, r in self.results.items():
            ratio = self.ratios[name]
            parts = [f"{name}: end to end {ratio['over_full_decode']:.2f}x a bare full decode" if ref else name]
            if name != self.variants[0]:
                parts.append(f"{ratio['over_first']:.2f}x {self.variants[0]}")
            sessions = ", ".join(f"{k} {v['p50']:.2f}" for k, v in r["sessions"].items())
            parts.append(f"decode at 1/{r['decode_scale']}, inference ms per session: {sessions}")
            lim = self.limits.get(name)
            if lim and "macs_per_crop" in lim:
                share = 100 * lim["arithmetic_ms"] / max(r["stages"]["inference"]["p50"], 1e-9)
                parts.append(f"{lim['macs_per_crop'] / 1e6:.1f} M multiply-adds/crop need {lim['arithmetic_ms']:.2f} "
                             f"ms per frame at the measured {self.limits['matmul_gflops']:.0f} GFLOP/s "
                             f"({share:.0f}% of inference)")
            lines.append("; ".join(parts))
        m = self.machine
        lines.append(f"peak memory (RSS) {self.peak_rss_mb:.0f} MB; {m['cpu']}, {m['cores']} cores")
        return lines

    def budget_check(self, budget_ms: float) -> tuple[bool, str]:
        """Whether the first variant's p99 end-to-end latency per frame is within budget_ms, and a line saying so."""
        p99 = self.results[self.variants[0]]["stages"]["total"]["p99"]
        ok = p99 <= budget_ms
        return ok, (f"latency budget: p99 per frame {p99:.2f} ms ({self.variants[0]}, "
                    f"{self.frames['crops_per_frame']:g} crops) {'<=' if ok else '>'} {budget_ms:g} ms: "
                    f"{'PASS' if ok else 'FAIL'}")
