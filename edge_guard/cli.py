"""`edgeguard` command line. Commands parse options, call one library function, and print.

Training-half commands import `edge_guard.training` inside the command body, so the runtime
commands work without torch installed.
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import typer
import typer.core

from edge_guard.errors import ConfigError, EdgeGuardError, expected_got, printable
from edge_guard.spec import DEFAULT_SUSPECT_BELOW, MAX_PIXELS, BackendChoice, Precision, Subsampling, VoteRule
from edge_guard.training.choices import AdversarialMethod, BpdaBackward, DefenseChoice, Exporter, RoiMode, Split

try:  # typer >= 0.22 vendors click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer depends on click itself
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

TRAIN_EXTRA = 'pip install torch==2.13.0 && pip install "edge-guard[train]"'


class _OneLineErrors(typer.core.TyperGroup):
    """Usage errors (an unknown option, a value outside its choices) as one `error:` line and exit code 2,
    like every other bad input, instead of click's usage box."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click_exceptions.NoArgsIsHelpError as exc:
            typer.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
            sys.exit(0)
        except click_exceptions.UsageError as exc:
            where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            typer.echo(f"error: {exc.format_message()}{where}", err=True)
            sys.exit(2)
        except click_exceptions.ClickException as exc:
            typer.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="edgeguard",
    cls=_OneLineErrors,
    help="EdgeGuard: traffic-sign classifiers hardened against adversarial images, for edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the EdgeGuard version and exit.", is_eager=True),
) -> None:
    """EdgeGuard: traffic-sign classifiers hardened against adversarial images, for edge devices."""
    if version:
        from edge_guard import __version__

        typer.echo(__version__)
        raise typer.Exit()


def friendly_errors(fn: F) -> F:
    """Turn an EdgeGuardError into one clear line on stderr and exit code 2, an interrupt into one line and exit
    code 130 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgeGuardError as exc:
            typer.echo(f"error: {printable(str(exc))}", err=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:  # Ctrl-C (or SIGTERM in a stream): one line, the shell's 128 + SIGINT
            typer.echo("interrupted: stopped before the command finished; files it was writing may be incomplete",
                       err=True)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def _training_half() -> None:
    """The training commands need torch (the [train] extra): say so in one line when it is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ConfigError(expected_got("the training half (torch)", "installed", "not installed",
                                       f"Install the training extra: {TRAIN_EXTRA}")) from None


DISTRIBUTED_HELP = ("Data-parallel under torchrun (DDP: NCCL on GPUs, gloo on CPUs); --batch-size is the global "
                    "batch, split over the ranks; rank 0 writes. See docs/scaling.md.")


def _join_group(enabled: bool, device: str) -> Any:
    """With --distributed: join torchrun's process group (edge_guard.training.distributed); the World."""
    from edge_guard.training import distributed

    return distributed.init_from_env(device) if enabled else distributed.World()


def _apply_profile(ctx: typer.Context, profile: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Fill each option the profile sets, unless it was given on the command line (then say it wins).
    values: option name -> the profile's value for it (None: the profile leaves it alone)."""
    params = dict(ctx.params)
    for name, value in values.items():
        if value is None:
            continue
        if ctx.get_parameter_source(name).name == "COMMANDLINE":
            flag = "--" + name.replace("_", "-")
            typer.echo(f"profile {profile.name}: {flag} {params[name]!r} from the command line overrides the "
                       f"profile's {value!r}", err=True)
        else:
            params[name] = value
    return params


def _print(lines: Iterable[str]) -> None:
    for line in lines:
        typer.echo(line)


def command_line(ctx: typer.Context) -> str:
    """The running command rebuilt from its parsed parameters (defaults left out), for provenance.

    Rebuilt rather than read from sys.argv so it is exact however the app was invoked (console
    script, `python -m`, or a test runner), and carries no absolute path of the console script.
    """
    parts = ["edgeguard", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default:
            continue
        if isinstance(param, typer.core.TyperArgument):
            parts.append(str(value))
        elif getattr(param, "is_flag", False) and isinstance(value, bool):
            parts.extend((param.opts if value else param.secondary_opts)[:1])
        else:
            parts += [param.opts[0], str(value)]
    return shlex.join(parts)


def parse_int_list(text: str, what: str) -> list[int]:
    """Parse '20,40,60' into [20, 40, 60]; ConfigError naming `what` otherwise."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(expected_got(what, "comma-separated integers like 20,40,60", repr(text))) from None


def parse_qualities_or_none(text: str, what: str) -> list[int]:
    """Parse '20,40' like parse_int_list; 'none' gives []."""
    return [] if text.strip().lower() == "none" else parse_int_list(text, what)


def parse_low_res(text: str) -> list[tuple[int, int]]:
    """Parse '16:5,24:5' (side px : epochs stages) into [(16, 5), (24, 5)]; '' gives []."""

    stages = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        side, colon, epochs = part.partition(":")
        if not (colon and side.strip().isdigit() and epochs.strip().isdigit()):
            raise ConfigError(expected_got("--low-res", "SIDE:EPOCHS stages like 16:5,24:5", repr(text)))
        stages.append((int(side), int(epochs)))
    return stages


EVAL_QUALITIES_HELP = ("JPEG qualities the final weights are measured at; none: only clean, the run's own "
                       "preprocessing and SLQ (faster).")
VAL_EVERY_HELP = ("Validate after every N-th epoch and after the last; best.pt is the best validated epoch. "
                  "Each pass costs ~10% of a ResNet-14 epoch on 2 CPU cores.")


@app.command()
@friendly_errors
def doctor(
    bundle: str | None = typer.Option(None, "--bundle", help="Bundle to self-check (default: the shipped one)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check this machine: versions, JPEG codec backend and libjpeg-turbo version, onnxruntime providers, and a
    self-check of the bundle (hashes verified, one image classified). Exits 1 when the bundle fails.

    Example: edgeguard doctor --json
    """
    from edge_guard.doctor import environment_report

    report = environment_report(bundle)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            typer.echo(f"{key:>22}: {value}")
    if not report["ok"]:
        raise typer.Exit(code=1)


@app.command()
@friendly_errors
def export(
    ctx: typer.Context,
    run_dir: str = typer.Argument(
        ...,
        help="Ensemble directory (ensemble.json), run directory (best.pt) or a .pt checkpoint."),
    out: str = typer.Option(..., "--out", "-o", help="Bundle directory to write, e.g. export/gtsrb-shield."),
    fused: bool = typer.Option(
        False, "--fused",
        help="Also write one graph holding all members (output member_logits [M,N,C])."),
    in_graph_jpeg: bool = typer.Option(
        False, "--in-graph-jpeg",
        help="Put each member's JPEG step (DiffJPEG) inside its graph; not for SLQ members."),
    precision: Precision = typer.Option(
        Precision.FP32, "--precision",
        help="Graph precision (variants are checked against fp32)."),
    data: str | None = typer.Option(
        None, "--data",
        help="Dataset folder for validation/calibration images (default: the run's config.json)."),
    limit: int = typer.Option(2000, "--limit", help="Validation images used for the checks and metrics."),
    force: bool = typer.Option(
        False, "--force",
        help="Keep a fp16/int8 bundle even if clean accuracy drops more than --max-accuracy-drop."),
    overwrite: bool = typer.Option(
        False, "--overwrite",
        help="Replace an existing bundle at --out (its other files, e.g. a README, are kept)."),
    name: str | None = typer.Option(None, "--name", help="Bundle name (default: the --out folder name)."),
    description: str = typer.Option("", "--description", help="Free text stored in the manifest."),
    vote: VoteRule = typer.Option(
        VoteRule.MAJORITY, "--vote",
        help="How members combine: majority (ties by mean probability) or soft (mean probability)."),
    defense: DefenseChoice | None = typer.Option(
        None, "--defense",
        help="The bundle's defense (default: per-member when members are JPEG-vaccinated, else slq, else none)."),
    max_accuracy_drop: float = typer.Option(
        1.0, "--max-accuracy-drop",
        help="Largest clean-accuracy drop (percentage points) a variant may have."),
    exporter: Exporter = typer.Option(
        Exporter.AUTO, "--exporter",
        help="torch -> ONNX exporter (auto: dynamo, TorchScript fallback)."),
    calibration: int = typer.Option(256, "--calibration", help="Training images used to calibrate int8."),
) -> None:
    """Export a vaccinated ensemble (or one checkpoint) to a verified ONNX bundle the runtime loads.

    Checks parity with PyTorch at every export and records accuracy, gray-box FGSM robustness,
    exporter and versions in manifest.json.

    Example: edgeguard export runs/shield --out export/gtsrb-shield --data data/gtsrb --fused
    """
    from pathlib import Path

    _training_half()
    from edge_guard.training.export import ExportOptions, export_bundle

    result = export_bundle(run_dir, ExportOptions(
        out=Path(out), name=name, description=description, fused=fused, in_graph_jpeg=in_graph_jpeg,
        precision=precision.value, data=Path(data) if data else None, limit=limit, force=force, overwrite=overwrite,
        vote=vote.value, defense=defense.value if defense else None, max_accuracy_drop=max_accuracy_drop, exporter=exporter.value, calibration=calibration,
        command=command_line(ctx)))
    _print(result.summary())


@app.command()
@friendly_errors
def train(
    data: str = typer.Option(
        ..., "--data",
        help="Dataset folder: GTSRB (official or Kaggle), CIFAR-10 python, or class folders."),
    model: str = typer.Option(
        "compact_cnn", "--model",
        help="compact_cnn (fast, ~10M multiply-adds) | resnet14 (~27M) | resnet_small (ResNet-20, ~41M)."),
    epochs: int = typer.Option(15, "--epochs", help="Training epochs."),
    val_every: int = typer.Option(1, "--val-every", help=VAL_EVERY_HELP),
    out: str = typer.Option(
        "runs/base", "--out", "-o",
        help="Run folder (best.pt, last.pt, config.json, metrics.json, train.log)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
    seed: int = typer.Option(0, "--seed", help="Seed for the split, shuffling, augmentation and init."),
    limit: int | None = typer.Option(None, "--limit", help="Use a seeded random subset of N images (quick runs)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per step."),
    lr: float = typer.Option(3e-3, "--lr", help="Peak learning rate (one-cycle schedule)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of GTSRB tracks held out for validation."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for torch (0: torch default)."),
    device: str = typer.Option(
        "auto", "--device",
        help="Where torch trains: auto (a CUDA GPU if torch sees one, else the CPU) | cpu | cuda | cuda:N."),
    augment: bool = typer.Option(
        True, "--augment/--no-augment",
        help="Small affine + brightness/contrast jitter (no flips)."),
    jpeg_augment: str = typer.Option(
        "", "--jpeg-augment",
        help="JPEG qualities, e.g. 40,60,80,90: round-trip training images at one of them (share: --jpeg-p) for a base"
             " that reads compressed frames. It weakens the vaccinated ensemble's gray-box defense (see README). "
             "Empty: off."),
    jpeg_p: float = typer.Option(
        0.5, "--jpeg-p",
        help="Share of training images JPEG-augmented (with --jpeg-augment)."),
    eval_qualities: str = typer.Option("10,20,30,40,50,60,70,80,90", "--eval-qualities", help=EVAL_QUALITIES_HELP),
    low_res: str = typer.Option(
        "", "--low-res",
        help="Progressive resizing: SIDE:EPOCHS stages trained first on downscaled images, e.g. 16:5,24:5 (then full "
             "size; ~0.6x the time of a ResNet-14 base at 15 epochs). Needs a model with global pooling. Empty: off."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count unreadable images instead of stopping."),
    cache_dir: str | None = typer.Option(
        None, "--cache-dir",
        help="Decoded-dataset cache (default ~/.cache/edgeguard)."),
    distributed: bool = typer.Option(False, "--distributed", envvar="EDGEGUARD_DISTRIBUTED", help=DISTRIBUTED_HELP),
) -> None:
    """Train a base classifier and measure its accuracy on clean, JPEG-compressed and SLQ validation images.

    Example: edgeguard train --data data/gtsrb --model compact_cnn --epochs 15 --out runs/base

    Data-parallel on 2 processes: torchrun --nproc_per_node 2 -m edge_guard.training train --data data/gtsrb --threads 1 --out runs/base
    """
    _training_half()
    from edge_guard.training.config import TrainConfig
    from edge_guard.training.train import train as train_model

    config = TrainConfig(data=data, model=model, epochs=epochs, val_every=val_every, out_dir=out, resume=resume,
                         seed=seed, limit=limit, batch_size=batch_size, lr=lr, val_fraction=val_fraction,
                         num_threads=threads, device=device, augment=augment, skip_bad=skip_bad,
                         jpeg_augment=tuple(parse_int_list(jpeg_augment, "--jpeg-augment")),
                         jpeg_p=jpeg_p,
                         eval_qualities=tuple(parse_qualities_or_none(eval_qualities, "--eval-qualities")),
                         low_res=tuple(parse_low_res(low_res)))
    world = _join_group(distributed, device)
    result = train_model(config, cache_dir=cache_dir, echo=typer.echo if world.main else None)
    if world.main:
        _print(result.summary())


@app.command()
@friendly_errors
def vaccinate(
    base: str = typer.Option(..., "--base", help="Base checkpoint, e.g. runs/base/best.pt."),
    qualities: str = typer.Option("20,40,60,80", "--qualities", help="One JPEG-vaccinated member per quality."),
    slq: bool = typer.Option(True, "--slq/--no-slq", help="Also train a member on SLQ (random per-block quality)."),
    data: str | None = typer.Option(None, "--data", help="Dataset folder (default: the base run's)."),
    epochs: int = typer.Option(3, "--epochs", help="Fine-tuning epochs per member."),
    shared_epochs: int = typer.Option(
        0, "--shared-epochs",
        help="Train the first N of --epochs once for all members, on images compressed like a random member's, then "
             "each member alone: (members - 1) x N epochs less work, but members that fall to the same adaptive "
             "attacks (README). 0: every member trains alone."),
    val_every: int = typer.Option(1, "--val-every", help=VAL_EVERY_HELP),
    out: str = typer.Option(
        "runs/ensemble", "--out", "-o",
        help="Ensemble folder (ensemble.json, one run folder per member)."),
    lr: float = typer.Option(
        3e-3, "--lr",
        help="Peak fine-tuning learning rate (cosine decay); higher moves members further from the base."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for torch (0: torch default)."),
    device: str = typer.Option(
        "auto", "--device",
        help="Where torch trains: auto (a CUDA GPU if torch sees one, else the CPU) | cpu | cuda | cuda:N."),
    subsampling: Subsampling = typer.Option(
        Subsampling.S420, "--subsampling",
        help="JPEG chroma subsampling, as at runtime."),
    backend: BackendChoice = typer.Option(BackendChoice.AUTO, "--backend", help="JPEG backend, as at runtime."),
    adversarial_eps: int = typer.Option(
        0, "--adversarial-eps",
        help="Also train on adversarial images made against each member through its JPEG (--adversarial), budget "
             "in 1/255 units; 0: off."),
    adversarial_method: AdversarialMethod = typer.Option(
        AdversarialMethod.FGSM, "--adversarial",
        help="With --adversarial-eps: fgsm (one step), pgd (--adversarial-steps steps) or trades (the same steps on "
             "the KL to the clean prediction, TRADES loss)."),
    adversarial_steps: int | None = typer.Option(
        None, "--adversarial-steps", help="Attack steps for pgd and trades (default 5; fgsm: 1)."),
    adversarial_step: float | None = typer.Option(
        None, "--adversarial-step",
        help="Step size as a multiple of the budget (default: 1.25 for fgsm, 2.5 / steps for pgd and trades)."),
    trades_beta: float = typer.Option(6.0, "--trades-beta", help="TRADES: weight of the KL term (0: clean CE)."),
    adversarial_fraction: float = typer.Option(
        0.5, "--adversarial-fraction",
        help="Share of each batch made adversarial (with --adversarial-eps)."),
    eval_qualities: str | None = typer.Option(
        None, "--eval-qualities", help=EVAL_QUALITIES_HELP + " Default: the base run's."),
    resume: bool = typer.Option(False, "--resume", help="Continue interrupted member runs from their last.pt."),
    cache_dir: str | None = typer.Option(
        None, "--cache-dir",
        help="Decoded-dataset cache (default ~/.cache/edgeguard)."),
    distributed: bool = typer.Option(False, "--distributed", envvar="EDGEGUARD_DISTRIBUTED",
                                     help=DISTRIBUTED_HELP + " Each member trains on all ranks (see --fan-out)."),
    fan_out: bool = typer.Option(
        False, "--fan-out",
        help="With --distributed: one member per rank instead (rank r trains members r, r+N, ...; each alone, as "
             "one process would); rank 0 writes ensemble.json when all are done."),
) -> None:
    """Fine-tune JPEG-vaccinated members (one per quality, plus SLQ) from a base checkpoint; report the ensemble.

    Example: edgeguard vaccinate --base runs/base/best.pt --qualities 20,40,60,80 --data data/gtsrb --epochs 3 --out runs/ensemble
    """
    _training_half()
    from edge_guard.training.adversarial import AdversarialConfig
    from edge_guard.training.vaccinate import vaccinate as vaccinate_members

    steps = adversarial_steps if adversarial_steps is not None else (
        1 if adversarial_method == AdversarialMethod.FGSM else 5)
    adversarial = (AdversarialConfig(eps=adversarial_eps / 255, fraction=adversarial_fraction,
                                     method=adversarial_method.value, steps=steps, step=adversarial_step,
                                     beta=trades_beta)
                   if adversarial_eps else None)
    measured_at = None if eval_qualities is None else parse_qualities_or_none(eval_qualities, "--eval-qualities")

    if not qualities.strip():
        raise ConfigError(expected_got("--qualities", "comma-separated JPEG qualities like 20,40,60,80, or none "
                                       "(only the SLQ member)", "''"))
    if fan_out and not distributed:
        raise ConfigError(expected_got("--fan-out", "--distributed under torchrun", "no --distributed"))
    world = _join_group(distributed, device)
    result = vaccinate_members(
        base, data=data, qualities=parse_qualities_or_none(qualities, "--qualities"), slq=slq,
        epochs=epochs, shared_epochs=shared_epochs, val_every=val_every, lr=lr, adversarial=adversarial,
        num_threads=threads, device=device, subsampling=subsampling.value, backend=backend.value, out_dir=out, resume=resume,
        cache_dir=cache_dir, echo=typer.echo if world.main else None, eval_qualities=measured_at,
        progress=world.main, fan_out=fan_out)
    if world.main:
        _print(result.summary())


@app.command()
@friendly_errors
def evaluate(
    models: str = typer.Option(
        ..., "--models",
        help="Ensemble folder from edgeguard vaccinate (ensemble.json with base and members)."),
    data: str | None = typer.Option(None, "--data", help="Dataset folder (default: the run's)."),
    split: Split = typer.Option(
        Split.VAL, "--split",
        help="val: the run's held-out validation tracks; test: the dataset's official test set."),
    roi: RoiMode = typer.Option(
        RoiMode.AUTO, "--roi",
        help="Crop images to their annotated ROI (auto: unless already the model's size)."),
    attacks: str = typer.Option(
        "fgsm,pgd,deepfool,cw", "--attacks",
        help="Gray-box attacks: fgsm, pgd, apgd-ce, apgd-dlr, deepfool, cw; none: clean accuracy only."),
    eps: str = typer.Option(
        "2,4,8", "--eps", help="FGSM/PGD/APGD budgets in 1/255 units (DeepFool/CW have none); the report gives the "
                               "worst case over these attacks per image at each."),
    qualities: str = typer.Option(
        "10,20,30,40,50,60,70,80,90,100", "--qualities",
        help="JPEG qualities for base+JPEG."),
    limit: int = typer.Option(500, "--limit", help="Evaluation images (seeded random subset of the split)."),
    out: str = typer.Option(
        "runs/evaluation", "--out", "-o",
        help="Report folder (results.json/.csv, report.md, plots)."),
    adaptive: bool = typer.Option(
        True, "--adaptive/--no-adaptive",
        help="Also attack every defended system end to end (BPDA, EOT)."),
    adaptive_attacks: str = typer.Option("fgsm,pgd", "--adaptive-attacks", help="Attacks run adaptively."),
    adaptive_qualities: str | None = typer.Option(
        None, "--adaptive-qualities",
        help="base+JPEG qualities attacked adaptively and shown in the tables (default: the members')."),
    adaptive_limit: int | None = typer.Option(
        None, "--adaptive-limit",
        help="Adaptive attacks on the first N evaluation images (default: all)."),
    eot_samples: int = typer.Option(8, "--eot-samples", help="SLQ draws averaged per gradient (EOT)."),
    bpda_backward: BpdaBackward = typer.Option(
        BpdaBackward.DIFFJPEG, "--bpda-backward",
        help="BPDA backward pass through the JPEG step."),
    pgd_steps: int = typer.Option(10, "--pgd-steps", help="PGD iterations (step 2.5 eps / steps)."),
    apgd_steps: int = typer.Option(100, "--apgd-steps", help="APGD-CE/-DLR iterations per restart."),
    apgd_restarts: int = typer.Option(1, "--apgd-restarts", help="APGD random restarts."),
    cw_steps: int = typer.Option(100, "--cw-steps", help="CW Adam steps per binary-search step."),
    cw_search_steps: int = typer.Option(5, "--cw-search-steps", help="CW binary-search steps over c."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per attack batch."),
    seed: int = typer.Option(0, "--seed", help="Seed for PGD starts and SLQ draws."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for torch (0: torch default)."),
    device: str = typer.Option(
        "auto", "--device",
        help="Where models and attacks run: auto (a CUDA GPU if torch sees one, else the CPU) | cpu | cuda | cuda:N."),
    backend: BackendChoice = typer.Option(BackendChoice.AUTO, "--backend", help="JPEG backend of the defense."),
    resume: bool = typer.Option(False, "--resume", help="Continue an evaluation in --out, skipping finished cells."),
    ray: str | None = typer.Option(
        None, "--ray", metavar="ADDRESS",
        help="Run the cells as Ray tasks: --ray local starts a Ray here; --ray auto joins the cluster of `ray start "
             "--head`; or ray://HEAD:10001. Needs the [scale] extra; see docs/scaling.md."),
    ray_cpus: int | None = typer.Option(None, "--ray-cpus", min=1, help="CPUs of the local Ray (default: all)."),
) -> None:
    """Attack the base, base+JPEG, the vaccinated ensemble and the SLQ ensemble, gray-box and adaptive; write a report.

    Example: edgeguard evaluate --models runs/shield --data data/gtsrb --attacks fgsm,pgd,deepfool,cw --eps 2,4,8 --limit 500 --out benchmarks/gtsrb-robustness

    Worst case over attacks (AutoAttack rule): edgeguard evaluate --models runs/shield --attacks fgsm,pgd,apgd-ce,apgd-dlr --adaptive-attacks pgd,apgd-ce,apgd-dlr --eps 2,4,8 --limit 200

    Accuracy on the official test set: edgeguard evaluate --models runs/shield --data data/GTSRB --split test --roi none --attacks none --no-adaptive --limit 20000
    """
    _training_half()
    from edge_guard.training.evaluate import EvalConfig
    from edge_guard.training.evaluate import evaluate as run_evaluation

    def names(text: str) -> tuple[str, ...]:
        return tuple(part.strip().lower() for part in text.split(",") if part.strip() and part.strip() != "none")

    config = EvalConfig(
        attacks=names(attacks), split=split.value, roi=roi.value, eps=tuple(parse_int_list(eps, "--eps")),
        qualities=tuple(parse_int_list(qualities, "--qualities")), limit=limit, adaptive=adaptive,
        adaptive_attacks=names(adaptive_attacks),
        adaptive_qualities=(tuple(parse_int_list(adaptive_qualities, "--adaptive-qualities"))
                            if adaptive_qualities else None),
        adaptive_limit=adaptive_limit, eot_samples=eot_samples, bpda_backward=bpda_backward.value, pgd_steps=pgd_steps,
        apgd_steps=apgd_steps, apgd_restarts=apgd_restarts,
        cw_steps=cw_steps, cw_search_steps=cw_search_steps, batch_size=batch_size, seed=seed, threads=threads,
        device=device,
        backend=backend.value)
    _print(run_evaluation(models, out, config, data=data, resume=resume, echo=typer.echo, ray=ray,
                          ray_cpus=ray_cpus).summary())


@app.command()
@friendly_errors
def attack(
    images: str = typer.Option(
        ..., "--images", help="Folder of images (searched recursively). In class folders (named by class name or "
                              "id) the folder is the true class; otherwise the bundle's own decisions are attacked."),
    bundle: str | None = typer.Option(None, "--bundle", help="Bundle directory (default: the shipped bundle)."),
    method: str = typer.Option(
        "square", "--attack", help="square (score-based, Andriushchenko et al. 2020) or hopskipjump (label only, "
                                   "Chen et al. 2020)."),
    queries: int = typer.Option(1000, "--queries", min=1, help="Query budget per image."),
    eps: int = typer.Option(8, "--eps", min=1, max=255, help="Linf budget in 1/255 units."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Attack at most N images (sorted by path)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the attack and of SLQ's block choice."),
    threads: int | None = typer.Option(None, "--threads", help="onnxruntime intra-op threads."),
    out: str | None = typer.Option(
        None, "--out", "-o", help="Write the adversarial images (PNG) and results.json into this folder."),
) -> None:
    """Attack a deployed bundle through the runtime alone: queries in, scores or labels out, queries counted.

    Reports the success rate over the images the bundle classifies correctly, the median queries it took, and
    how often the suspect flag fires on the fooled images.

    Example: edgeguard attack --bundle export/gtsrb-shield --attack hopskipjump --images signs/ --queries 1000 --eps 8
    """
    from edge_guard import Guard
    from edge_guard.query_attacks.run import QUERY_ATTACKS, load_images, query_attack, save_images

    if method not in QUERY_ATTACKS:
        raise ConfigError(expected_got("--attack", " or ".join(QUERY_ATTACKS), repr(method)))
    guard = Guard.from_bundle(bundle, seed=seed, threads=threads)
    batch, labels, names = load_images(images, guard.classes, limit)
    typer.echo(f"{len(names)} images; " + ("labels from folder names" if labels is not None
                                            else "no class folders: attacking the bundle's own decisions"))
    result = query_attack(guard, batch, labels, attack=method, eps=eps / 255, queries=queries, seed=seed)
    if out:
        save_images(out, result, names)
        (Path(out) / "results.json").write_text(json.dumps({**result.to_dict(), "bundle": guard.bundle.name,
                                                           "images": images}, indent=1) + "\n")
    _print(result.lines())


@app.command()
@friendly_errors
def infer(
    ctx: typer.Context,
    sources: list[str] = typer.Argument(
        ..., metavar="SOURCE...",
        help="A video file, image files/folders/globs, a camera (0, /dev/video0), - (MJPEG bytes on stdin), or an "
             "rtsp:// or http(s):// stream (MJPEG or anything FFmpeg reads)."),
    bundle: str | None = typer.Option(None, "--bundle", help="Bundle directory (default: the shipped bundle)."),
    roi: list[str] = typer.Option(
        [], "--roi", help="Box x1,y1,x2,y2 in frame pixels (x2, y2 exclusive) classified in every frame; repeatable. "
                          "Default: the centre square of each frame."),
    boxes: str | None = typer.Option(
        None, "--boxes", help='Per-frame boxes from an upstream detector: JSON lines {"frame": N, "boxes": [[x1, y1, '
                              'x2, y2], ...]}.'),
    detector: str | None = typer.Option(
        None, "--detector", help="An ONNX detector (YOLO as Ultralytics exports it) proposing the boxes."),
    detector_score: float = typer.Option(0.25, "--detector-score", help="Minimum detector confidence."),
    detector_classes: str | None = typer.Option(
        None, "--detector-classes", help="Detector class ids to keep, e.g. 11 (default: all)."),
    min_confidence: float = typer.Option(
        0.0, "--min-confidence", help='Below this ensemble confidence a region is "no sign" (class_id null).'),
    suspect_below: float | None = typer.Option(
        None, "--suspect-below", help="Flag a region suspect when fewer than this share of members vote for the "
                                      "winner (the attack / out-of-distribution alarm). Default: the thresholds "
                                      f"the bundle's manifest measured (alarm), else {DEFAULT_SUSPECT_BELOW}."),
    providers: str = typer.Option("cpu", "--providers", help="Ordered execution providers, e.g. tensorrt,cuda,cpu."),
    threads: int | None = typer.Option(None, "--threads", help="onnxruntime intra-op threads (default: its choice)."),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Seed for SLQ's random block choice."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also read images in subfolders."),
    output: str | None = typer.Option(
        None, "--output", "-o", help="Write the JSON lines to this file (moved into place at the end) instead of "
                                     "stdout."),
    append: bool = typer.Option(False, "--append", help="Append to --output instead of replacing it."),
    annotate: str | None = typer.Option(
        None, "--annotate", help="Also write annotated frames: a video (.avi, .mp4, .mkv) or a folder of JPEGs."),
    max_frames: int | None = typer.Option(None, "--max-frames", min=1, help="Stop after N frames."),
    camera_size: str | None = typer.Option(None, "--camera-size", help="Camera resolution WIDTHxHEIGHT."),
    camera_fps: float | None = typer.Option(None, "--camera-fps", help="Camera frame rate."),
    camera_fourcc: str = typer.Option("MJPG", "--camera-fourcc", help="Camera pixel format; MJPG hands over JPEG bytes."),
    queue_size: int = typer.Option(2, "--queue-size", min=1, help="Live sources: frames kept (the latest win)."),
    max_reconnects: int | None = typer.Option(
        None, "--max-reconnects", min=0, help="Live sources: reconnect attempts in a row before giving up "
                                              "(default: forever)."),
    status: bool = typer.Option(True, "--status/--no-status", help="A live status line on stderr (terminals only)."),
    max_pixels: int = typer.Option(
        MAX_PIXELS, "--max-pixels", min=1, help="Refuse frames and images whose header promises more pixels "
                                                "(decompression bombs), before decoding them."),
    allow_fallback: bool = typer.Option(
        False, "--allow-fallback", help="When a requested provider fails to start, run on the next one (logged "
                                        "loudly) instead of stopping. Default: stop, never a silent CPU fallback."),
    profile: str | None = typer.Option(
        None, "--profile", help="A firmware profile (edgeguard profiles list) or .toml file: bundle, providers and "
                                "their options, threads, camera, regions, queue. Flags given here win over it."),
    trusted_key: list[str] = typer.Option(
        [], "--trusted-key", help="A public key (edgeguard keygen) whose signature the bundle must carry; repeatable."),
    require_signed: bool = typer.Option(
        False, "--require-signed", help="Refuse a bundle that is not signed by a --trusted-key (for deployment)."),
) -> None:
    """Classify the frames of a video, camera, stream or images; one JSON line per frame (schema edgeguard.infer/1).

    Each line holds the frame index, timestamps, source, bundle and manifest sha256, every region's box, class,
    confidence, member votes, agreement and suspect flag, and the stage latencies. A summary goes to stderr.

    Example: edgeguard infer clip.avi --roi 600,200,728,328 --output results.jsonl --annotate annotated.avi
    """
    from edge_guard.infer import InferOptions, parse_classes, parse_size, run_infer
    from edge_guard.regions import parse_roi
    from edge_guard.sources import CameraSettings

    provider_options, prof = None, None
    if profile:
        from edge_guard.profiles import load_profile

        prof = load_profile(profile)
        cam, reg = prof.camera, prof.regions
        own_regions = bool(boxes) or ctx.get_parameter_source("detector").name == "COMMANDLINE"
        p = _apply_profile(ctx, prof, {
            "bundle": str(prof.bundle_path()), "providers": ",".join(prof.provider_names()),
            "threads": prof.threads, "allow_fallback": prof.allow_fallback or None, "queue_size": prof.queue_size,
            "camera_size": f"{cam.width}x{cam.height}" if cam.width and cam.height else None,
            "camera_fps": cam.fps, "camera_fourcc": cam.fourcc,
            "roi": None if own_regions or not reg.rois else [",".join(map(str, b)) for b in reg.rois],
            "detector": None if own_regions else reg.detector,
            "detector_classes": ",".join(map(str, reg.detector_classes)) if reg.detector_classes else None})
        bundle, providers, threads, allow_fallback = p["bundle"], p["providers"], p["threads"], p["allow_fallback"]
        queue_size, camera_size, camera_fps, camera_fourcc = p["queue_size"], p["camera_size"], p["camera_fps"], \
            p["camera_fourcc"]
        roi, detector, detector_classes = p["roi"], p["detector"], p["detector_classes"]
        provider_options = prof.provider_options() or None
        trusted_key = [*trusted_key, *prof.trusted_keys]  # a deployment profile's keys always apply
    size = parse_size(camera_size)
    options = InferOptions(
        sources=tuple(sources), bundle=bundle, providers=tuple(p for p in providers.split(",") if p.strip()),
        threads=threads, seed=seed, rois=tuple(parse_roi(text) for text in roi), boxes=boxes, detector=detector,
        detector_score=detector_score, detector_classes=parse_classes(detector_classes),
        min_confidence=min_confidence, suspect_below=suspect_below, output=output, append=append,
        annotate=annotate, max_frames=max_frames, recursive=recursive,
        camera=CameraSettings(size[0] if size else None, size[1] if size else None, camera_fps, camera_fourcc or None),
        queue_size=queue_size, max_reconnects=max_reconnects, status=status, max_pixels=max_pixels,
        allow_fallback=allow_fallback, provider_options=provider_options, profile=prof,
        dct_scaling=prof.dct_scaling if prof is not None else True, trusted_keys=tuple(trusted_key),
        require_signed=require_signed or bool(trusted_key))
    for line in run_infer(options).lines():
        typer.echo(line, err=True)


@app.command()
@friendly_errors
def bench(
    ctx: typer.Context,
    bundle: str | None = typer.Option(
        None, "--bundle",
        help="Bundle directory (default: the shipped export/gtsrb-shield-r14)."),
    source: str | None = typer.Option(
        None, "--source", help="Time these frames instead of rendered ones: a video, images, a camera, - or a URL "
                               "(its first --distinct frames, cycled)."),
    synthetic: str = typer.Option("1920x1080", "--synthetic", help="Size WxH of the rendered road scenes."),
    frames: int = typer.Option(50, "--frames", help="Timed frames per configuration."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed frames before them."),
    rois: int = typer.Option(4, "--rois", help="Regions (signs) per frame: crops per classify call."),
    distinct: int = typer.Option(4, "--distinct", help="Distinct frames rendered or read, cycled through the run."),
    compare: list[str] = typer.Option(
        [], "--compare", help="Also time this configuration on the same frames, ratio printed; repeatable: fused, "
                              "members, threads=N, provider=NAME, precision=fp16|int8, spin, bundle=PATH or a bundle folder "
                              "(default: members, when the bundle has a fused graph)."),
    providers: str = typer.Option("cpu", "--providers", help="Ordered execution providers, e.g. tensorrt,cuda,cpu."),
    threads: int | None = typer.Option(
        None, "--threads",
        help="onnxruntime intra-op threads (default: onnxruntime's choice)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for the rendered frames and SLQ."),
    spin: bool = typer.Option(False, "--spin", help="Let onnxruntime's threads spin-wait between calls (its default; "
                                                    "off here, as it slows the stages and variants sharing the CPU)."),
    trusted_key: list[str] = typer.Option(
        [], "--trusted-key", help="Refuse bundles not signed by this public key (edgeguard keygen); repeatable."),
    profile: str | None = typer.Option(
        None, "--profile", help="A firmware profile or .toml file: bundle, providers, threads, batch (as --rois), "
                                "camera size (as --synthetic); the "
                                "p99 latency per frame is checked against its latency budget (exit 1 when over)."),
    json_out: str | None = typer.Option(None, "--json", help="Also write the full report to this JSON file."),
) -> None:
    """Time the whole frame path stage by stage (decode, crop, defense, inference, vote; p50/p90/p99/max),
    frames/s, crops/s, CPU use and peak memory, beside a bare decode of the same frames and the CPU's peak.

    Example: edgeguard bench --synthetic 1280x720 --rois 4 --frames 50 --compare members --json bench.json
    """
    from pathlib import Path

    from rich.console import Console

    from edge_guard.bench import BenchConfig, parse_synthetic, run_bench

    prof = None
    allow_fallback, provider_options, dct_scaling = False, None, True
    if profile:
        from edge_guard.profiles import load_profile

        prof = load_profile(profile)
        cam = prof.camera
        p = _apply_profile(ctx, prof, {"bundle": str(prof.bundle_path()), "providers": ",".join(prof.provider_names()),
                                       "threads": prof.threads, "rois": prof.batch,
                                       "synthetic": f"{cam.width}x{cam.height}" if cam.width and cam.height else None})
        bundle, providers, threads, rois, synthetic = p["bundle"], p["providers"], p["threads"], p["rois"], \
            p["synthetic"]
        allow_fallback, provider_options = prof.allow_fallback, prof.provider_options() or None
        dct_scaling = prof.dct_scaling
        trusted_key = [*trusted_key, *prof.trusted_keys]
    config = BenchConfig(frames=frames, warmup=warmup, rois=rois, synthetic=parse_synthetic(synthetic), source=source,
                         distinct=distinct, compare=tuple(compare),
                         providers=tuple(p for p in providers.split(",") if p.strip()), threads=threads, seed=seed,
                         dct_scaling=dct_scaling, spin=spin, trusted_keys=tuple(trusted_key),
                         provider_options=provider_options, allow_fallback=allow_fallback)
    config.check()
    if json_out:
        from edge_guard.output import check_output_path

        check_output_path(json_out, what="--json")  # before the run: a benchmark's results are never lost
    report = run_bench(bundle, config)
    Console(width=None if sys.stdout.isatty() else 200).print(report.table())  # a file or pipe gets every column
    _print(report.summary())
    if json_out:
        Path(json_out).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        typer.echo(f"wrote {json_out}")
    if prof is not None and prof.latency_budget_ms is not None:
        ok, line = report.budget_check(prof.latency_budget_ms)
        typer.echo(f"profile {prof.name}: {line}")
        if not ok:
            raise typer.Exit(code=1)


@app.command()
@friendly_errors
def demo(
    out: str = typer.Option("demo-output", "--out", "-o", help="Folder for the clip, boxes, results and annotated video."),
    bundle: str | None = typer.Option(None, "--bundle", help="Bundle directory (default: the shipped bundle)."),
    frames: int = typer.Option(48, "--frames", min=1, help="Frames to render (12 per second of clip)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the rendered scene."),
    attack: bool = typer.Option(True, "--attack/--no-attack",
                                help="Then attack the clip's crops on an undefended model and show the ensemble's answer."),
) -> None:
    """Render a dash-cam clip with traffic signs of known classes, read it through the infer path, score it,
    then show the defense against an attack crafted on an undefended model (live with torch, else shipped crops).

    Nothing is downloaded; about 5 s on 2 idle CPU cores. Writes demo.avi, boxes.jsonl, results.jsonl, annotated.avi
    and attack.png.

    Example: edgeguard demo --out demo-output
    """
    from edge_guard.demo import run_demo

    _print(run_demo(out, bundle=bundle, frames=frames, seed=seed, attack=attack).lines())


@app.command()
@friendly_errors
def keygen(
    out: str = typer.Option("keys", "--out", "-o", help="Folder for edgeguard.key (private, 0600) and edgeguard.pub."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a key already in --out."),
) -> None:
    """Make an ed25519 key pair for signing bundles. Keep edgeguard.key secret; devices get edgeguard.pub.

    Example: edgeguard keygen --out keys/
    """
    from edge_guard.signing import generate_keys

    keys = generate_keys(out, overwrite=overwrite)
    typer.echo(f"wrote {keys.private} (private: keep it secret) and {keys.public} (key id {keys.key_id})")


@app.command()
@friendly_errors
def sign(
    bundle: str = typer.Argument(..., help="Bundle directory to sign (it must load and verify)."),
    key: str = typer.Option(..., "--key", help="Private key from edgeguard keygen."),
) -> None:
    """Sign a bundle: an ed25519 signature over manifest.json, which pins the sha256 of every file.

    Example: edgeguard sign export/gtsrb-shield --key keys/edgeguard.key
    """
    from edge_guard.signing import sign_bundle

    typer.echo(f"wrote {sign_bundle(bundle, key)}")


@app.command()
@friendly_errors
def verify(
    bundle: str = typer.Argument(..., help="Bundle directory."),
    pubkey: list[str] = typer.Option(..., "--pubkey", help="Trusted public key; repeatable."),
) -> None:
    """Check a bundle's signature and every file's sha256; exit 2 with one line when anything does not match.

    Example: edgeguard verify export/gtsrb-shield --pubkey keys/edgeguard.pub
    """
    from edge_guard.signing import verify_bundle

    key_id = verify_bundle(bundle, pubkey)
    typer.echo(f"{bundle}: signature by key {key_id} verified, every file's sha256 matches")


profiles_app = typer.Typer(help="Firmware profiles: one TOML file per target device (firmware_profiles/).",
                           no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")


@profiles_app.command("list")
@friendly_errors
def profiles_list() -> None:
    """The shipped profiles, one line each. Example: edgeguard profiles list"""
    from edge_guard.profiles import list_profiles, load_profile

    for name in list_profiles():
        p = load_profile(name)
        budget = f", p99 budget {p.latency_budget_ms:g} ms" if p.latency_budget_ms else ""
        typer.echo(f"{name:<18} {','.join(p.provider_names()):<22} {p.bundle}{budget}  {p.description}")


@profiles_app.command("show")
@friendly_errors
def profiles_show(name: str = typer.Argument(..., help="A shipped profile name or a .toml file.")) -> None:
    """Print a profile as loaded (defaults filled in), as JSON. Example: edgeguard profiles show raspberry-pi-5"""
    from edge_guard.profiles import load_profile

    typer.echo(json.dumps(load_profile(name).to_dict(), indent=2))


@profiles_app.command("validate")
@friendly_errors
def profiles_validate(path: str = typer.Argument(..., help="The .toml file to check.")) -> None:
    """Check a profile: unknown keys (with the nearest valid one), types and ranges by key path.

    Example: edgeguard profiles validate my-board.toml
    """
    from edge_guard.profiles import load_profile

    p = load_profile(path)
    typer.echo(f"{path}: valid profile {p.name!r} ({', '.join(p.provider_names())}; bundle {p.bundle_path()})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
