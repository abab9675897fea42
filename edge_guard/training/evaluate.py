"""edgeguard evaluate: attack the base model and the JPEG defenses, gray-box and adaptive white-box.

Defended systems (each a torch module whose `predict` is the deployed decision rule):
  base           the undefended base model
  base_8bit      the base fed the input rounded to 8 bits (separates plain quantization from JPEG)
  base+jpegQ     the base behind the real codec (`edge_guard.jpeg.roundtrip`) at quality Q
  ensemble       the vaccinated ensemble: each member behind its own preprocessing (JPEG at its
                 quality, SLQ for an SLQ-vaccinated member), majority vote
  slq_ensemble   one SLQ draw (`edge_guard.jpeg.slq`'s definition) shared by all members, majority vote (SHIELD)

Threat models:
  gray-box  (Das et al. 2017) adversarial images are crafted on the UNDEFENDED base model once per
            (attack, eps) and then classified by every system; the attacker does not know the defense.
  adaptive  (Athalye et al. 2018) the attacker attacks each system end to end: BPDA through the real
            codec (backward: identity or DiffJPEG), the soft-vote surrogate for ensembles, and EOT
            over SLQ's randomness (only the random parts are averaged: the SLQ member of the
            vaccinated ensemble, the whole SLQ ensemble).

Adversarial images stay float32 in [0, 1] (not rounded to 8 bits), so sub-grey-level perturbations
of the minimum-norm attacks survive unless a system quantizes; `base_8bit` shows what rounding alone does.
FGSM/PGD run once per eps (in 1/255 units); DeepFool and CW are minimum-norm attacks and run once.

Every finished (threat, attack, eps, system) cell is appended to OUT/cells.jsonl as it completes;
`resume=True` skips those. With `ray=ADDRESS` the pending cells run as Ray tasks on a cluster
(edge_guard.training.ray_eval); the driver appends each cell as its task finishes.
The end writes results.json, results.csv, report.md and plots (report.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edge_guard import jpeg
from edge_guard.errors import ConfigError, expected_got
from edge_guard.progress import progress_bar
from edge_guard.training.attacks import (
    EOT,
    DefendedModel,
    attack_metrics,
    bpda,
    create_attack,
    jpeg_defended,
    list_attacks,
    make_defense,
    perturbation_norms,
    predict,
    slq_defended,
)
from edge_guard.training.choices import BpdaBackward, RoiMode
from edge_guard.training.device import DEVICE_NAMES, is_device_name, resolve_device
from edge_guard.training.provenance import versions
from edge_guard.training.report import cell_key, robustness_target, write_report
from edge_guard.training.run import SPLITS, Run
from edge_guard.training.worstcase import LINF_ATTACKS, pack_bits, worst_case

EPS_ATTACKS = LINF_ATTACKS  # Linf budget: one cell per eps
CELLS_FILE = "cells.jsonl"
STATE_FILE = "evaluate_state.json"
# settings that change the numbers: a resumed run must match them
FINGERPRINT = ("models", "data", "split", "roi", "limit", "adaptive_limit", "seed", "batch_size", "pgd_steps",
               "cw_steps", "cw_search_steps", "bpda_backward", "eot_samples", "backend", "apgd_steps",
               "apgd_restarts")


@dataclass(frozen=True)
class EvalConfig:
    """What `evaluate` runs. eps levels are in 1/255 units (8 -> 8/255)."""

    attacks: tuple[str, ...] = ("fgsm", "pgd", "deepfool", "cw")  # () : clean accuracy only
    eps: tuple[int, ...] = (2, 4, 8)
    qualities: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
    limit: int = 500  # evaluation images (a seeded random subset of the split)
    split: str = "val"  # "val": the run's held-out tracks; "test": the dataset's official test set
    roi: str = "auto"  # ROI cropping: "auto" | "crop" | "none" (see edge_guard.training.data.load_dataset)
    adaptive: bool = True
    adaptive_attacks: tuple[str, ...] = ("fgsm", "pgd")
    adaptive_qualities: tuple[int, ...] | None = None  # None: the members' JPEG qualities
    adaptive_limit: int | None = None  # adaptive cells on the first N evaluation images (None: all)
    eot_samples: int = 8  # SLQ draws averaged per gradient (EOT)
    bpda_backward: str = "diffjpeg"  # "identity" | "diffjpeg"
    pgd_steps: int = 10  # step size alpha = 2.5 * eps / steps (Madry et al. 2018)
    apgd_steps: int = 100  # APGD-CE / APGD-DLR iterations per restart (Croce & Hein 2020: 100)
    apgd_restarts: int = 1
    cw_steps: int = 100
    cw_search_steps: int = 5
    batch_size: int = 128
    seed: int = 0
    threads: int = 2  # torch CPU threads (0: leave torch's default)
    device: str = "auto"  # where models and attacks run: "auto" (CUDA when torch sees it) | "cpu" | "cuda[:N]"
    backend: str = "auto"  # JPEG backend of the defense

    def __post_init__(self) -> None:
        for what, names in (("--attacks", self.attacks), ("--adaptive-attacks", self.adaptive_attacks)):
            bad = [a for a in names if a not in list_attacks()]
            if bad:
                raise ConfigError(expected_got(what, f"names from {', '.join(list_attacks())}", list(names)))
        if any(not 1 <= e <= 255 for e in self.eps) or any(a in EPS_ATTACKS for a in self.attacks) \
                and not self.eps:
            raise ConfigError(expected_got("--eps", "levels 1..255 in 1/255 units, e.g. 2,4,8", list(self.eps)))
        for what, qs in (("--qualities", self.qualities), ("--adaptive-qualities", self.adaptive_qualities or ())):
            if any(not 1 <= q <= 100 for q in qs):
                raise ConfigError(expected_got(what, "JPEG qualities 1..100", list(qs)))
        for what, value in (("--limit", self.limit), ("--eot-samples", self.eot_samples),
                            ("--batch-size", self.batch_size), ("--pgd-steps", self.pgd_steps),
                            ("--cw-steps", self.cw_steps), ("--cw-search-steps", self.cw_search_steps),
                            ("--apgd-steps", self.apgd_steps), ("--apgd-restarts", self.apgd_restarts),
                            ("--adaptive-limit", self.adaptive_limit or 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(expected_got(what, "a positive integer", repr(value)))
        if self.split not in SPLITS:
            raise ConfigError(expected_got("--split", " or ".join(SPLITS), repr(self.split)))
        if self.roi not in RoiMode.values():
            raise ConfigError(expected_got("--roi", "auto, crop or none", repr(self.roi)))
        if not is_device_name(self.device):
            raise ConfigError(expected_got("--device", DEVICE_NAMES, repr(self.device)))
        if self.bpda_backward not in BpdaBackward.values():
            raise ConfigError(expected_got("--bpda-backward", "'identity' or 'diffjpeg'", repr(self.bpda_backward)))
        jpeg.resolve_backend(self.backend)  # CodecError if unavailable


@dataclass(frozen=True)
class System:
    """One classifier-with-defense column of the report."""

    name: str  # "base", "base_8bit", "base+jpeg40", "ensemble", "slq_ensemble"
    label: str  # table header
    kind: str  # "none" | "8bit" | "jpeg" | "ensemble" | "slq"
    quality: int | None = None


@dataclass(frozen=True)
class EvalResult:
    """The report folder, the results (results.json's contents) and the files written."""

    out_dir: Path
    results: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> list[str]:
        """What `edgeguard evaluate` prints: clean accuracies, the gray-box targets, the report written."""
        r = self.results
        clean = {c["system"]: c for c in r["cells"] if c["threat"] == "clean"}
        lines = [f"clean accuracy on {r['data']['n']} {r['config']['split']} images: " + ", ".join(
            f"{name} {100 * clean[name]['accuracy']:.2f}%" for name in ("base", "ensemble", "slq_ensemble")
            if name in clean)]
        for name, t in r["target"].items():
            if isinstance(t, dict) and t.get("measured"):
                lines.append(f"gray-box {name}: ensemble {100 * t['ensemble_success']:.1f}% vs base "
                             f"{100 * t['base_success']:.1f}% misclassification success "
                             f"({'holds' if t['holds'] else 'misses'} the 1/3 target)")
        for row in r.get("worst_case", []):
            if row["system"] == "ensemble":
                lines.append(f"{row['threat']} worst case over {', '.join(row['attacks'])} at {row['eps']}/255: "
                             f"ensemble {100 * row['robust_accuracy']:.1f}% robust ({row['n']} images)")
        lines.append(f"wrote {self.out_dir / 'report.md'} ({len(r['cells'])} cells, {r['elapsed_s']:.0f} s)")
        return lines


# ---------------------------------------------------------------------------------------------
# public entry point


def evaluate(models: str | Path | Run, out_dir: str | Path, config: EvalConfig = EvalConfig(), *,
             data: str | Path | None = None, resume: bool = False, progress: bool = True,
             echo: Callable[[str], None] | None = None, ray: str | None = None,
             ray_cpus: int | None = None) -> EvalResult:
    """Run every pending cell of `config` on the ensemble at `models`; write the report to `out_dir`.

    models: an ensemble folder (ensemble.json with a base) or a loaded Run. data: the dataset
    folder (default: the one in the run's config); the evaluation images are the run's held-out,
    track-wise validation split (config.split "val") or the dataset's official test set ("test"),
    capped at config.limit (`Run.dataset`). ray: run the cells as Ray tasks ("local": a Ray started here
    with ray_cpus CPUs, default all; else a cluster address such as "auto" or "ray://head:10001").
    """
    t0 = time.perf_counter()
    say = echo or (lambda _msg: None)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    run = on_device(models if isinstance(models, Run) else Run.open(models), resolve_device(config.device))
    device = next(_base(run).parameters()).device
    evaldata = run.dataset(data, limit=config.limit, calibration=0, split=config.split, roi=config.roi)
    if not evaldata.available:
        raise ConfigError(expected_got("evaluation data", "a dataset folder", "none", "Pass --data PATH."))
    x = torch.from_numpy(np.ascontiguousarray(evaldata.images.transpose(0, 3, 1, 2))).to(device).float() / 255
    y = torch.from_numpy(np.asarray(evaldata.labels, dtype=np.int64)).to(device)
    out = Path(out_dir)
    store = CellStore(out, _fingerprint(models, evaldata.info, config), resume)
    systems = system_list(run, config)
    ctx = _Context(run, config, store, x, y)
    jobs = plan_jobs(config, systems, adaptive_systems(systems, config, run))
    pending = [job for job in jobs if not all(store.done(key) for key in job.keys)]
    say(f"evaluating {len(systems)} systems on {len(y)} images: {len(pending)} of {len(jobs)} attack jobs to run")
    if ray is not None:  # imported only here: without --ray, Ray is never loaded
        from edge_guard.training.ray_eval import run_on_ray

        run_on_ray(ctx, systems, pending, ray, cpus=ray_cpus, progress=progress, say=say)
    else:
        _run_here(ctx, systems, pending, progress)
    results = collect(store, run, config, systems, evaldata.info, models, time.perf_counter() - t0)
    files = write_report(out, results)
    say(f"wrote {', '.join(str(p) for p in files.values())}")
    return EvalResult(out, results, files)


def _run_here(ctx: _Context, systems: Sequence[System], pending: Sequence[Job], progress: bool) -> None:
    """The clean cells, then every pending job, one after another in this process."""
    with progress_bar(enabled=progress, label="{task.description:<40}") as bar:
        task = bar.add_task("clean accuracy", total=sum(job.batches(ctx) for job in pending) + len(systems))
        for s in systems:
            ctx.clean_cell(s)
            bar.advance(task)
        for job in pending:
            bar.update(task, description=job.title)
            job.run(ctx, lambda: bar.advance(task))


# ---------------------------------------------------------------------------------------------
# systems


def system_list(run: Run, config: EvalConfig) -> list[System]:
    """Every column: base, base 8-bit, base+JPEG at each quality (and adaptive quality), the two ensembles."""
    qualities = sorted(set(config.qualities) | set(table_qualities(run, config)))
    return ([System("base", "base (no defense)", "none"), System("base_8bit", "base, 8-bit input", "8bit")]
            + [System(f"base+jpeg{q}", f"base+JPEG q{q}", "jpeg", q) for q in qualities]
            + [System("ensemble", "vaccinated ensemble", "ensemble"), System("slq_ensemble", "SLQ ensemble", "slq")])


def table_qualities(run: Run, config: EvalConfig) -> tuple[int, ...]:
    """The base+JPEG qualities shown in the tables and attacked adaptively: --adaptive-qualities,
    else the members' JPEG qualities, else 50."""
    if config.adaptive_qualities:
        return tuple(sorted(set(config.adaptive_qualities)))
    member_qs = sorted({m.quality for m in run.members if m.vaccination == "jpeg" and m.quality is not None})
    return tuple(member_qs) or (50,)


def adaptive_systems(systems: Sequence[System], config: EvalConfig, run: Run) -> list[System]:
    """Systems attacked end to end: all but the base+JPEG qualities outside the table qualities."""
    keep = set(table_qualities(run, config))
    return [s for s in systems if s.kind != "jpeg" or s.quality in keep]


def on_device(run: Run, device: torch.device) -> Run:
    """The run with its base and members on `device`, where the attacks then run (the JPEG codec stays on
    the CPU, through BPDA). Models elsewhere are copied, so a caller's Run is left as it was."""
    device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", as the parameters report it

    def move(model: nn.Module) -> nn.Module:
        return model if next(model.parameters()).device == device else copy.deepcopy(model).to(device)

    return dataclasses.replace(run, base=move(_base(run)),
                               members=tuple(dataclasses.replace(m, model=move(m.model)) for m in run.members))


def _base(run: Run) -> nn.Module:
    if run.base is None:
        raise ConfigError(expected_got("models", "an ensemble folder whose ensemble.json names a base model",
                                       "no base", "The gray-box attacks are crafted on the undefended base."))
    return run.base


class Quantize8(nn.Module):
    """Round float32 (N, 3, H, W) in [0, 1] to the 8-bit grid; identity gradient (BPDA)."""

    def forward(self, x: Tensor) -> Tensor:
        return bpda(x, lambda t: (t.clamp(0, 1) * 255).round() / 255)


def build_system(system: System, run: Run, config: EvalConfig, seed: int, *, attack: bool) -> nn.Module:
    """The torch module for `system`, on the models' device. attack=True: the attacker's target (BPDA
    gradients, EOT over SLQ draws); attack=False: the deployed system (one SLQ draw per call). SLQ draws
    are seeded with `seed`."""
    device = next(_base(run).parameters()).device
    return _assemble(system, run, config, seed, attack=attack).to(device)  # the defenses' DiffJPEG tables


def _assemble(system: System, run: Run, config: EvalConfig, seed: int, *, attack: bool) -> nn.Module:
    base = _base(run)
    rng = np.random.default_rng(seed)
    opts = {"subsampling": run.subsampling, "backend": config.backend,
            "backward": config.bpda_backward if attack else "identity"}
    if system.kind == "none":
        return base
    if system.kind == "8bit":
        return DefendedModel(base, Quantize8())
    if system.kind == "jpeg":
        return jpeg_defended(base, int(system.quality or 0), **opts)
    members = [m.model for m in run.members]
    if system.kind == "slq":
        return slq_defended(members, run.slq_qualities, eot_samples=config.eot_samples if attack else 1,
                            vote="majority", rng=rng, **opts)
    targets: list[nn.Module] = []
    defenses: list[nn.Module | None] = []
    for m in run.members:
        defense = make_defense(m.vaccination, quality=m.quality, qualities=run.slq_qualities, rng=rng, **opts)
        if attack and m.vaccination == "slq" and config.eot_samples > 1:  # EOT over the random member only
            targets.append(EOT(DefendedModel(m.model, defense), config.eot_samples))
            defenses.append(None)
        else:
            targets.append(m.model)
            defenses.append(defense)
    return DefendedModel(targets, defenses, vote="majority")


# ---------------------------------------------------------------------------------------------
# cells and jobs


def cell_seed(seed: int, *parts: object) -> int:
    """A stable per-cell seed (PGD random start, SLQ draws), independent of the order cells run in."""
    return (seed * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % 2**31


class CellStore:
    """Finished cells, one JSON object per line in OUT/cells.jsonl, appended as each completes."""

    def __init__(self, out: Path, fingerprint: dict[str, Any], resume: bool) -> None:
        self.path, self.cells = out / CELLS_FILE, {}
        state = out / STATE_FILE
        if self.path.exists() and self.path.stat().st_size and not resume:
            raise ConfigError(expected_got(f"--out {out}", "a folder without earlier results", f"{self.path}",
                                           "Pass --resume to continue that evaluation, or another --out."))
        if resume and state.is_file():
            old = json.loads(state.read_text())
            diff = {k: (old.get(k), v) for k, v in fingerprint.items() if old.get(k) != v}
            if diff:
                raise ConfigError(expected_got("--resume settings", "the ones the earlier run used",
                                               f"changes {diff}", "Use another --out for new settings."))
        if resume and self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    try:
                        cell = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by an interruption: recompute that cell
                        continue
                    self.cells[cell["key"]] = cell
        out.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(fingerprint, indent=2) + "\n")

    def done(self, key: str) -> bool:
        return key in self.cells

    def add(self, cell: dict[str, Any]) -> None:
        self.cells[cell["key"]] = cell
        with self.path.open("a") as f:
            f.write(json.dumps(cell, allow_nan=False) + "\n")


class _Context:
    """What jobs share: the run, config, store, images, and the clean predictions of each system."""

    def __init__(self, run: Run, config: EvalConfig, store: CellStore, x: Tensor, y: Tensor) -> None:
        self.run, self.config, self.store, self.x, self.y = run, config, store, x, y
        self.base = _base(run)
        self.n_adaptive = min(len(y), config.adaptive_limit or len(y))
        self._clean: dict[str, Tensor] = {}

    def predict(self, system: System, images: Tensor, seed: int) -> Tensor:
        model = build_system(system, self.run, self.config, seed, attack=False)
        bs = self.config.batch_size
        return torch.cat([predict(model, images[i:i + bs]) for i in range(0, len(images), bs)])

    def clean_pred(self, system: System) -> Tensor:
        if system.name not in self._clean:
            self._clean[system.name] = self.predict(system, self.x, cell_seed(self.config.seed, "clean", system.name))
        return self._clean[system.name]

    def clean_cell(self, system: System) -> None:
        key = cell_key("clean", "none", None, system.name)
        if self.store.done(key):
            return
        correct = self.clean_pred(system) == self.y
        self.store.add({"key": key, "threat": "clean", "attack": "none", "eps": None, "system": system.name,
                        "quality": system.quality, "n": len(self.y), "n_correct": int(correct.sum()),
                        "accuracy": float(correct.float().mean()), "correct_bits": pack_bits(correct.cpu().numpy())})

    def score(self, threat: str, attack: str, eps: int | None, system: System, adv: Tensor, seconds: float,
              crafted_on: str, params: dict[str, Any]) -> None:
        """Classify `adv` (the first len(adv) images) with `system` and store the cell."""
        t0 = time.perf_counter()
        n = len(adv)
        x, y = self.x[:n], self.y[:n]
        adv_pred = self.predict(system, adv, cell_seed(self.config.seed, threat, attack, eps, system.name))
        m = attack_metrics(y, self.clean_pred(system)[:n], adv_pred, x, adv).to_dict()
        l2, linf = perturbation_norms(x, adv)
        self.store.add({
            "key": cell_key(threat, attack, eps, system.name), "threat": threat, "attack": attack, "eps": eps,
            "system": system.name, "quality": system.quality, "n": m["n"], "n_correct": m["n_correct"],
            "n_flipped": m["n_flipped"], "clean_accuracy": m["clean_accuracy"], "accuracy": m["adv_accuracy"],
            "success_rate": m["success_rate"], "l2_mean": m["l2_mean"], "l2_median": m["l2_median"],
            "linf_mean": m["linf_mean"], "linf_median": m["linf_median"],
            "l2_all_mean": float(l2.mean()), "l2_all_median": float(l2.median()),
            "linf_all_mean": float(linf.mean()), "linf_all_median": float(linf.median()),
            "attack_seconds": round(seconds, 3), "eval_seconds": round(time.perf_counter() - t0, 3),
            "crafted_on": crafted_on, "attack_params": params,
            "correct_bits": pack_bits((adv_pred == y).cpu().numpy()),  # per image, for the worst case over attacks
        })


def attack_kwargs(name: str, eps: int | None, config: EvalConfig, seed: int) -> dict[str, Any]:
    """Hyperparameters for create_attack: eps in [0, 1] units for FGSM/PGD, the CW budget, a seeded PGD start."""
    if name == "fgsm":
        return {"eps": eps / 255}
    if name == "pgd":
        e = eps / 255
        return {"eps": e, "alpha": 2.5 * e / config.pgd_steps, "steps": config.pgd_steps, "random_start": True,
                "generator": torch.Generator().manual_seed(seed)}
    if name in ("apgd-ce", "apgd-dlr"):
        return {"eps": eps / 255, "steps": config.apgd_steps, "n_restarts": config.apgd_restarts, "seed": seed}
    if name == "cw":
        return {"steps": config.cw_steps, "binary_search_steps": config.cw_search_steps}
    return {}


@dataclass(frozen=True)
class Job:
    """One attack run: gray-box (crafted on the base, scored on `systems`) or adaptive (on systems[0])."""

    threat: str
    attack: str
    eps: int | None
    systems: tuple[System, ...]

    @property
    def keys(self) -> list[str]:
        return [cell_key(self.threat, self.attack, self.eps, s.name) for s in self.systems]

    @property
    def title(self) -> str:
        eps = f" eps {self.eps}/255" if self.eps is not None else ""
        on = "on base" if self.threat == "graybox" else f"vs {self.systems[0].name}"
        return f"{self.threat} {self.attack}{eps} {on}"

    def _batch_size(self, ctx: _Context) -> int:
        """Images per attack batch: EOT repeats each image eot_samples times, so random targets take
        batch_size // eot_samples images to keep each step at about batch_size member inputs."""
        if self.threat == "adaptive" and is_random(self.systems[0], ctx.run):
            return max(1, ctx.config.batch_size // ctx.config.eot_samples)
        return ctx.config.batch_size

    def _n(self, ctx: _Context) -> int:
        return len(ctx.y) if self.threat == "graybox" else ctx.n_adaptive

    def batches(self, ctx: _Context) -> int:
        return -(-self._n(ctx) // self._batch_size(ctx))

    def run(self, ctx: _Context, tick: Callable[[], None]) -> None:
        self.score(ctx, *self.craft(ctx, 0, self._n(ctx), tick))

    def shards(self, ctx: _Context, batches: int) -> list[tuple[int, int]]:
        """(start, stop) image ranges of `batches` attack batches each, covering the job's images."""
        step, n = batches * self._batch_size(ctx), self._n(ctx)
        return [(i, min(i + step, n)) for i in range(0, n, step)]

    def craft(self, ctx: _Context, start: int, stop: int,
              tick: Callable[[], None]) -> tuple[Tensor, float, dict[str, Any]]:
        """Adversarial images for images start..stop (start a multiple of the batch size: the same batches as
        one pass over all), the seconds it took and the attack's hyperparameters."""
        seed = cell_seed(ctx.config.seed, self.threat, self.attack, self.eps, self.systems[0].name)
        # gray-box: the undefended base; adaptive: the system end to end (BPDA, soft vote, EOT)
        target = ctx.base if self.threat == "graybox" else build_system(self.systems[0], ctx.run, ctx.config, seed,
                                                                        attack=True)
        bs = self._batch_size(ctx)
        kwargs = attack_kwargs(self.attack, self.eps, ctx.config, seed)
        t0, parts, params = time.perf_counter(), [], {}
        x, y = ctx.x[:stop], ctx.y[:stop]
        for i in range(start, stop, bs):
            attack = create_attack(self.attack, target, **kwargs)
            params = attack.hyperparameters()
            parts.append(attack(x[i:i + bs], y[i:i + bs]))
            tick()
        params = {k: v for k, v in params.items() if isinstance(v, (int, float, bool, str))}
        return torch.cat(parts), time.perf_counter() - t0, params

    def score(self, ctx: _Context, adv: Tensor, seconds: float, params: dict[str, Any]) -> None:
        """Score the job's adversarial images (all of them) on each of its systems not stored yet."""
        crafted_on = "base" if self.threat == "graybox" else self.systems[0].name
        for system in self.systems:
            if not ctx.store.done(cell_key(self.threat, self.attack, self.eps, system.name)):
                ctx.score(self.threat, self.attack, self.eps, system, adv, seconds, crafted_on, params)


def is_random(system: System, run: Run) -> bool:
    """Whether the system draws SLQ block choices (so the adaptive attack needs EOT)."""
    return system.kind == "slq" or (system.kind == "ensemble" and any(m.vaccination == "slq" for m in run.members))


def plan_jobs(config: EvalConfig, systems: Sequence[System], adaptive: Sequence[System]) -> list[Job]:
    """Gray-box: one job per (attack, eps) scored on every system. Adaptive: one job per (attack, eps, system)."""
    def levels(attack: str) -> list[int | None]:
        return list(config.eps) if attack in EPS_ATTACKS else [None]

    jobs = [Job("graybox", a, e, tuple(systems)) for a in config.attacks for e in levels(a)]
    if config.adaptive:
        jobs += [Job("adaptive", a, e, (s,)) for a in config.adaptive_attacks for e in levels(a) for s in adaptive]
    return jobs


# ---------------------------------------------------------------------------------------------
# results


def _models_label(models: str | Path | Run) -> str:
    """How results name the evaluated models: the folder given, or "in-memory" for a loaded Run."""
    return "in-memory" if isinstance(models, Run) else str(models)


def _fingerprint(models: str | Path | Run, info: dict[str, Any], config: EvalConfig) -> dict[str, Any]:
    values = {**asdict(config), "models": _models_label(models),
              "data": info.get("source")}
    return {k: values[k] for k in FINGERPRINT}


def collect(store: CellStore, run: Run, config: EvalConfig, systems: Sequence[System], info: dict[str, Any],
            models: str | Path | Run, elapsed: float) -> dict[str, Any]:
    """results.json contents: the cells this config asks for (in job order), config, data, versions."""
    adaptive = adaptive_systems(systems, config, run)
    keys = [cell_key("clean", "none", None, s.name) for s in systems]
    keys += [k for job in plan_jobs(config, systems, adaptive) for k in job.keys]
    cells = [store.cells[k] for k in keys if k in store.cells]
    lookup = {c["key"]: c for c in cells}
    return {
        "config": {**asdict(config), "models": _models_label(models),
                   "table_qualities": list(table_qualities(run, config)),
                   "vote": "majority", "adaptive_surrogate": "log mean softmax over members (soft vote)",
                   "subsampling": run.subsampling, "slq_qualities": list(run.slq_qualities),
                   "vaccinating_codec": run.vaccinating_codec().to_dict()},
        "data": {**info, "classes": len(run.classes), "input_size": list(run.input_size),
                 "n_adaptive": min(info.get("n", 0), config.adaptive_limit or info.get("n", 0))},
        "members": [{"name": m.name, "vaccination": m.vaccination, "quality": m.quality} for m in run.members],
        "systems": [asdict(s) for s in systems],
        "adaptive_systems": [s.name for s in adaptive] if config.adaptive else [],
        "cells": cells,
        "target": robustness_target(lookup),
        "worst_case": worst_case(cells),  # per image over the Linf attacks at each eps (AutoAttack rule)
        "versions": versions(("matplotlib",), with_platform=True),
        "elapsed_s": round(elapsed, 1),
        "cell_seconds_total": round(sum(c.get("eval_seconds", 0) for c in cells)
                                    + sum({(c["threat"], c["attack"], c["eps"], c["crafted_on"]): c["attack_seconds"]
                                           for c in cells if "attack_seconds" in c}.values()), 1),
    }
