"""`edgeguard bench`: the whole frame path, stage by stage, on realistic frames, beside what the hardware allows.

    report = run_bench(None, BenchConfig(frames=50, rois=4, synthetic=(1920, 1080)))   # None: the default bundle
    report.results["fused"]["stages"]["total"]["p99"]     # ms per frame, end to end
    report.ratios["fused"]["over_full_decode"]            # p50 end to end / a bare full-size decode of the frame
    report.to_dict()                                      # what `edgeguard bench --json` writes

Frames are rendered road scenes with `rois` signs each, sent as JPEG bytes as an MJPEG camera sends them
(`edge_guard.scenes`), or the first frames of a given source; each goes through `classify_frame` (the
`infer` path: DCT-scaled decode, crops, JPEG defense, onnxruntime, vote). The bundle in its default form
and every `compare` variant (per-member vs fused, threads, providers, precisions, other bundles) run on
the same frames, interleaved frame by frame, beside bare libjpeg-turbo decodes of them (full size, and
1/8 scale: entropy decoding alone). Reported per variant: p50/p90/p99/max/mean of every stage and of each
onnxruntime session call, frames/s, crops/s, the provider that really ran, CPU time per wall time; for the
run, peak RSS, the machine, the measured matmul peak and each variant's multiply-adds per crop.
"""

from edge_guard.bench.config import BenchConfig, Variant, parse_synthetic, parse_variant
from edge_guard.bench.report import STAGES, BenchReport
from edge_guard.bench.run import run_bench
from edge_guard.bench.stats import percentiles, stage_stats

__all__ = ["STAGES", "BenchConfig", "BenchReport", "Variant", "parse_synthetic", "parse_variant", "percentiles",
           "run_bench", "stage_stats"]
