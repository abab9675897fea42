"""`export_bundle`: a vaccinated ensemble (or one checkpoint) -> a verified ONNX bundle.

Steps (each measured and recorded in the manifest's metrics):
1. every member -> ONNX (dynamo exporter, TorchScript as fallback), parity with PyTorch checked;
   with --in-graph-jpeg the DiffJPEG step is chained in front;
2. optional fused graph (all members in one graph), checked against the member graphs;
3. the fp32 bundle is written and measured through `Guard`: clean accuracy, per-member accuracy,
   gray-box FGSM accuracy, in-graph JPEG vs libjpeg-turbo agreement;
4. for --precision fp16/int8 the variant is built, measured the same way, and refused when its clean
   accuracy drops more than `max_accuracy_drop` points below fp32 (unless force);
5. the bundle is assembled in a hidden folder beside `out` and moved into place only when complete.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from edge_guard.bundle import Manifest, load_bundle
from edge_guard.errors import BundleError, ConfigError, expected_got
from edge_guard.progress import progress_bar
from edge_guard.spec import DefenseKind, DefenseSpec, Vaccination, VoteRule
from edge_guard.training.choices import DefenseChoice
from edge_guard.training.export import in_graph, measure, onnx_io, precision
from edge_guard.training.export.build import (
    MemberGraphs,
    convert_members,
    export_members,
    fuse_checked,
    in_graph_member,
)
from edge_guard.training.export.writer import rewrite_metrics, write_bundle
from edge_guard.training.run import DEFAULT_LIMIT, EvalData, Run

DEFENSES = DefenseChoice.values()  # --defense: how the manifest's DefenseSpec is chosen


@dataclass(frozen=True)
class ExportOptions:
    """Options of `edgeguard export` (see its --help). Accuracy drops are in percentage points."""

    out: Path
    name: str | None = None  # None: the folder name of `out`
    description: str = ""
    fused: bool = False
    in_graph_jpeg: bool = False
    precision: str = "fp32"  # "fp32" | "fp16" | "int8"
    data: Path | None = None  # None: the data path in the run's config.json
    limit: int = DEFAULT_LIMIT  # validation images used
    force: bool = False  # keep a variant whose accuracy drops more than max_accuracy_drop
    overwrite: bool = False  # replace an existing bundle at `out`
    vote: VoteRule = VoteRule.MAJORITY
    defense: str | None = None  # "per-member" | "slq" | "none"; None: chosen from the members
    max_accuracy_drop: float = 1.0
    exporter: str = "auto"  # "auto" (dynamo, then TorchScript) | "dynamo" | "torchscript"
    calibration: int = 256  # int8 calibration images
    parity_random: int = 16  # random images in each parity check
    parity_real: int = 256  # validation images in each parity check
    fgsm_eps: float = measure.FGSM_EPS
    seed: int = 0  # SLQ draws while measuring
    command: str | None = None  # provenance: the command line (`edgeguard export` passes its own)
    progress: bool = True


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: Manifest
    notes: tuple[str, ...] = field(default_factory=tuple)  # lines worth showing the user

    def summary(self) -> list[str]:
        """What `edgeguard export` prints: the notes, the measured numbers, what was written."""
        m, lines = self.manifest, list(self.notes)
        if "accuracy" in m.metrics:
            fgsm = m.metrics.get("fgsm", {}).get("accuracy")
            lines.append(f"clean accuracy {100 * m.metrics['accuracy']:.2f}% on {m.metrics['n']} validation images"
                         + (f", gray-box FGSM (eps 8/255) accuracy {100 * fgsm:.2f}%" if fgsm is not None else ""))
        else:
            lines.append("no validation data: only random-input parity was checked (pass --data to measure accuracy)")
        lines.append(f"wrote {self.path} ({len(m.members)} members, {m.metrics.get('precision', 'fp32')}"
                     + (", fused" if m.fused else "") + (", in-graph JPEG" if m.defense.in_graph else "") + ")")
        return lines


# ----------------------------------------------------------------------------- checks


def resolve_defense(run: Run, choice: str | None, in_graph_jpeg: bool) -> DefenseSpec:
    """The manifest defense for `choice` (None: per-member if any member is jpeg-vaccinated, else slq
    if any is slq-vaccinated, else none)."""
    vacs = {m.vaccination for m in run.members}
    if choice is None:
        choice = "per-member" if Vaccination.JPEG in vacs else "slq" if Vaccination.SLQ in vacs else "none"
    if choice not in DEFENSES:
        raise ConfigError(expected_got("--defense", " | ".join(DEFENSES), repr(choice)))
    if in_graph_jpeg and choice != "per-member":
        raise ConfigError(expected_got("--in-graph-jpeg", "--defense per-member (each member's JPEG in its graph)",
                                       f"--defense {choice}", "Drop --in-graph-jpeg for slq or none."))
    common = {"subsampling": run.subsampling, "codec": run.vaccinating_codec()}
    if choice == "none":
        return DefenseSpec(kind=DefenseKind.NONE, qualities=(), per_member=False, in_graph=False, **common)
    if choice == "slq":
        return DefenseSpec(kind=DefenseKind.SLQ, qualities=tuple(run.slq_qualities), per_member=False, in_graph=False,
                           **common)
    jpeg_q = sorted({int(m.quality) for m in run.members if m.vaccination == Vaccination.JPEG})
    if not jpeg_q and Vaccination.SLQ not in vacs:
        raise ConfigError(expected_got("--defense per-member", "at least one jpeg- or slq-vaccinated member",
                                       f"vaccinations {sorted(map(str, vacs))}",
                                       "Use --defense slq or --defense none."))
    if in_graph_jpeg:
        in_graph.check_members([(m.name, m.vaccination) for m in run.members])
        if not jpeg_q:
            raise ConfigError(expected_got("--in-graph-jpeg", "at least one jpeg-vaccinated member", "none"))
    qualities = jpeg_q
    if Vaccination.SLQ in vacs:  # per-member: the slq member uses defense.qualities as its SLQ set
        if not set(jpeg_q) <= set(run.slq_qualities):
            raise ConfigError(expected_got(
                "member qualities", f"a subset of the SLQ set {list(run.slq_qualities)} (the manifest has one list "
                "for both)", jpeg_q, "Use --defense slq, or export the jpeg members without the slq member."))
        qualities = list(run.slq_qualities)
    return DefenseSpec(kind=DefenseKind.JPEG, qualities=tuple(qualities), per_member=True, in_graph=in_graph_jpeg,
                       **common)


def _check_options(opts: ExportOptions) -> None:
    if opts.precision not in precision.PRECISIONS:
        raise ConfigError(expected_got("--precision", " | ".join(precision.PRECISIONS), repr(opts.precision)))
    if opts.vote not in VoteRule.values():
        raise ConfigError(expected_got("--vote", " | ".join(VoteRule.values()), repr(opts.vote)))
    if opts.exporter not in onnx_io.EXPORTERS:
        raise ConfigError(expected_got("--exporter", " | ".join(onnx_io.EXPORTERS), repr(opts.exporter)))
    if not math.isfinite(opts.max_accuracy_drop):
        raise ConfigError(expected_got("--max-accuracy-drop", "a finite number of percentage points",
                                       opts.max_accuracy_drop))
    for key in ("calibration", "parity_random"):
        if getattr(opts, key) < 1:
            raise ConfigError(expected_got(key, "a positive number of images", getattr(opts, key)))
    out = Path(opts.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not opts.overwrite:
        raise ConfigError(expected_got("--out", "a new or empty directory", f"{out} (exists, not empty)",
                                       "Pass --overwrite to replace it, or choose another --out."))


# ----------------------------------------------------------------------------- progress


class _Steps:
    """A rich progress bar over the export's steps (disabled: a no-op)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = progress_bar(enabled=enabled, label="[bold]export[/] {task.description}")
        self._task = self._bar.add_task("", total=total)

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        self._bar.update(self._task, description=what)
        yield
        self._bar.advance(self._task)

    def __enter__(self) -> _Steps:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


def _accuracy_gate(fp32: dict[str, Any], variant: dict[str, Any], opts: ExportOptions) -> dict[str, Any]:
    """Compare clean accuracies; BundleError (numbers included) when the drop is too large, unless force."""
    gate: dict[str, Any] = {"max_accuracy_drop_points": opts.max_accuracy_drop, "forced": opts.force}
    if "accuracy" not in fp32 or "accuracy" not in variant:
        gate.update(accuracy_drop_points=None, passed=None, note="accuracy not measured (no data or no CPU kernels)")
        return gate
    drop = 100.0 * (fp32["accuracy"] - variant["accuracy"])
    gate.update(accuracy_drop_points=round(drop, 4), passed=drop <= opts.max_accuracy_drop)
    if not gate["passed"] and not opts.force:
        raise BundleError(
            f"{opts.precision} bundle: clean accuracy {100 * variant['accuracy']:.2f}% vs fp32 "
            f"{100 * fp32['accuracy']:.2f}% on {variant['n']} validation images, a drop of {drop:.2f} points > "
            f"--max-accuracy-drop {opts.max_accuracy_drop:g}. Nothing was written. Use another --precision, "
            "raise --max-accuracy-drop, or pass --force to keep it.")
    return gate


# ----------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class _Job:
    """What every stage needs: the run, the resolved defense, the data, the options, and where to write."""

    run: Run
    defense: DefenseSpec
    data: EvalData
    opts: ExportOptions
    name: str
    command: str

    def write(self, bundle_dir: Path, graphs: MemberGraphs, fused: onnx.ModelProto | None, metrics: dict[str, Any],
              prec: str) -> Manifest:
        return write_bundle(bundle_dir, self.run, self.defense, graphs.shipped, fused, name=self.name,
                            description=self.opts.description, vote=self.opts.vote, metrics=metrics,
                            command=self.command, suffix="" if prec == "fp32" else f".{prec}",
                            graph_props={"edgeguard.precision": prec})

    def numbers(self, bundle_dir: Path, graphs: MemberGraphs, adv: np.ndarray | None) -> dict[str, Any]:
        if not self.data.available:
            return {}
        return measure.bundle_numbers(bundle_dir, self.run.member_specs, self.defense, self.data.images,
                                      self.data.labels, adv, graphs.shipped, graphs.plain, self.opts.seed)

    def sample(self, n: int) -> np.ndarray:
        """Up to n validation images, or n random uint8 images when there is no data."""
        if self.data.available:
            return self.data.images[:n]
        h, w = self.run.input_size
        return np.random.default_rng(self.opts.seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _fp32_stage(job: _Job, steps: _Steps, staging: Path) -> tuple[MemberGraphs, dict[str, Any], dict[str, Any],
                                                                   np.ndarray | None]:
    """Export, check, fuse, write and measure the fp32 bundle in staging/fp32.

    Returns (graphs, metrics so far, the fp32 bundle's measured numbers, the FGSM images or None).
    """
    opts, data = job.opts, job.data
    h, w = job.run.input_size
    random_x = np.random.default_rng(opts.seed).random((max(opts.parity_random, 2), 3, h, w), dtype=np.float32)
    real = data.images[: opts.parity_real] if data.available else None
    g = export_members(job.run, job.defense, real, random_x, exporter=opts.exporter, seed=opts.seed, step=steps.step)
    metrics: dict[str, Any] = {"precision": opts.precision, "opset": onnx_io.OPSET, "validation": data.info,
                               **g.metrics}
    fused = None
    if opts.fused:
        with steps.step("fused graph"):
            fused, metrics["fused_parity"] = fuse_checked(job.run, job.defense, g.shipped, job.sample(64))
    adv = None
    with steps.step("fp32 bundle: write + measure"):
        job.write(staging / "fp32", g, fused, metrics, "fp32")
        if data.available:
            source, source_name = _fgsm_source(job.run)
            adv = measure.fgsm_images(source, data.images, data.labels, opts.fgsm_eps)
            metrics["fgsm_setup"] = {"attack": "FGSM", "eps": opts.fgsm_eps,
                                     "eps_levels": round(opts.fgsm_eps * 255, 3), "crafted_on": source_name,
                                     "threat": "gray-box: crafted without the defense, classified through it"}
        numbers = job.numbers(staging / "fp32", g, adv)
    return g, metrics, numbers, adv


def _variant_stage(job: _Job, steps: _Steps, staging: Path, g: MemberGraphs, metrics: dict[str, Any],
                   fp32: dict[str, Any], adv: np.ndarray | None, notes: list[str]) -> dict[str, Any]:
    """Build, write and measure the fp16/int8 bundle in staging/<precision>; gate its accuracy drop
    against the `fp32` numbers. Returns the metrics to add: its numbers, "fp32" and "variant"."""
    opts, prec = job.opts, job.opts.precision
    v, info = convert_members(job.run, job.defense, g, prec, job.data.calibration, job.sample(opts.parity_real),
                              seed=opts.seed, step=steps.step)
    if "cpu_errors" in info and not opts.force:
        name, error = next(iter(info["cpu_errors"].items()))
        raise BundleError(f"onnxruntime's CPU provider cannot run the {prec} graph of member {name!r} ({error}): it "
                          f"has no {prec} CPU kernel for an op in it, so the bundle's accuracy cannot be checked here. "
                          "Use --precision fp32 or int8, or --force to write it unchecked (for a GPU provider).")
    with steps.step(f"{prec} bundle: write + measure"):
        fused = None
        if opts.fused:
            fused, info["fused_parity"] = fuse_checked(job.run, job.defense, v.shipped, job.sample(64))
        job.write(staging / prec, v, fused, metrics, prec)
        numbers = job.numbers(staging / prec, v, adv) if info["cpu_runnable"] else {}
    info["accuracy_check"] = _accuracy_gate(fp32, numbers, opts)
    casts = sum(info["cpu_casts_added"].values())
    if casts:
        notes.append(f"{prec}: onnxruntime's CPU provider inserted {casts} Cast nodes to run ops without {prec} "
                     "CPU kernels in float32; the speed-up is for GPU providers")
    if info["accuracy_check"].get("passed") is False:
        notes.append(f"warning: kept the {prec} bundle despite a clean-accuracy drop of "
                     f"{info['accuracy_check']['accuracy_drop_points']:.2f} points (--force)")
    return {**numbers, "fp32": fp32, "variant": info}


# ----------------------------------------------------------------------------- entry points


def _steps_total(run: Run, defense: DefenseSpec, opts: ExportOptions) -> int:
    n = len(run.members)
    jpeg_q = {m.quality for m in run.members if in_graph_member(defense, m.vaccination)}
    return n + len(jpeg_q) + int(opts.fused) + 1 + (n + 1 if opts.precision != "fp32" else 0) + 1


def _fgsm_source(run: Run) -> tuple[torch.nn.Module, str]:
    if run.base is not None:
        return run.base, "base model (fp32 torch)"
    return run.members[0].model, f"member {run.members[0].name!r} (fp32 torch; the run has no base model)"


def _check_data(opts: ExportOptions, data: EvalData) -> None:
    if opts.precision == "int8" and not data.available:
        raise ConfigError(expected_got("--precision int8 data", "training images to calibrate on (--data)", "none",
                                       "Pass --data PATH (the dataset the run was trained on)."))
    if opts.precision == "fp16" and not data.available and not opts.force:
        raise ConfigError(expected_got("--precision fp16 data", "validation images (--data) to check its accuracy",
                                       "none", "Pass --data, or --force to write it unchecked."))


def export_run(run: Run, opts: ExportOptions) -> ExportResult:
    """Export `run` to a verified bundle at opts.out; see the module docstring for the steps."""
    _check_options(opts)
    defense = resolve_defense(run, opts.defense, opts.in_graph_jpeg)
    data = run.dataset(opts.data, limit=opts.limit, calibration=opts.calibration)
    _check_data(opts, data)
    out = Path(opts.out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    job = _Job(run, defense, data, opts, opts.name or out.name,
               opts.command if opts.command is not None else "export_run (Python API)")
    notes: list[str] = []
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        with _Steps(_steps_total(run, defense, opts), opts.progress) as steps:
            g, metrics, fp32, adv = _fp32_stage(job, steps, staging)
            if opts.precision == "fp32":
                metrics.update(fp32)
            else:
                metrics.update(_variant_stage(job, steps, staging, g, metrics, fp32, adv, notes))
            with steps.step("verify + move into place"):
                final = staging / opts.precision
                manifest = rewrite_metrics(final, load_bundle(final, verify=False).manifest, metrics)
                if out.exists():
                    notes += _keep_extra_files(out, final)
                    shutil.rmtree(out)
                final.rename(out)
                load_bundle(out)  # the shipped bundle validates and every hash matches
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fallback = metrics.get("exporter_fallback", {})
    used = [f"member {member}: {exporter} exporter" + (f" (fallback: {fallback[member]})" if member in fallback else "")
            for member, exporter in metrics["exporter"].items()]
    return ExportResult(out, manifest, tuple(used + notes))


def _keep_extra_files(old: Path, new: Path) -> list[str]:
    """Copy files of the bundle folder being replaced that the new bundle does not write (a README,
    notes) into the new one, so --overwrite replaces the bundle and nothing else. Returns notes."""
    kept = []
    for path in sorted(old.rglob("*")):
        rel = path.relative_to(old)
        if path.is_file() and not (new / rel).exists() and rel.name != "manifest.json" and path.suffix != ".onnx":
            (new / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, new / rel)
            kept.append(str(rel))
    return [f"kept {name} from the replaced bundle folder (check that it still describes this bundle)"
            for name in kept]


def export_bundle(run_dir: str | Path, opts: ExportOptions) -> ExportResult:
    """Export the ensemble directory / run directory / checkpoint at `run_dir` (see `Run.open`)."""
    return export_run(Run.open(run_dir), opts)
