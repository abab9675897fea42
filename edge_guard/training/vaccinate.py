"""Vaccination (Das et al. 2017/2018): fine-tune copies of a base model on JPEG-compressed images.

One member per quality q (trained on `edge_guard.jpeg.roundtrip(x, q)`, the runtime's own codec and
settings) plus, optionally, an SLQ member (trained on `edge_guard.jpeg.slq(x)` with a fresh random
block pattern every batch). With an AdversarialConfig, part of every batch is first attacked against
the member through its own defense (edge_guard.training.adversarial). The output folder:

    ensemble.json            classes, input size, codec, epochs, lr, adversarial settings, members
    base.pt                  a copy of the base checkpoint
    shared.pt                with shared_epochs > 0: the weights and optimizer state every member continues from
    q20/ q40/ ... slq/       one run folder per member: best.pt, last.pt, config.json, metrics.json, train.log
    metrics.json             each member on its own preprocessing, and the majority-vote ensemble with
                             per-member JPEG preprocessing and with one shared SLQ draw

Members reuse the base run's seed, val fraction, size and limit, so they see the same track-wise
train/val split as the base (no base-training image leaks into a member's validation set).

Where the JPEG step happens: augmentation runs first (torch, float), then the batch is rounded to
uint8 and compressed on the fly, so the model sees exactly what the runtime codec makes of an image.
Precomputing compressed training arrays once per quality would be faster only if augmentation
came after compression, which would warp away the 8x8 block artifacts the member must learn. Measured
for a 128-image 32x32 batch: ~15 ms to round-trip with turbojpeg (~68 ms for SLQ over 4 qualities),
single-threaded, next to ~120 ms wall for a compact_cnn training step on 2 threads (~210 ms CPU on
one), so on-the-fly compression adds ~12% per step (SLQ ~55%) and no extra memory.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_guard import jpeg
from edge_guard.engine import softmax
from edge_guard.engine import vote as engine_vote
from edge_guard.errors import ConfigError, expected_got
from edge_guard.spec import MemberSpec, Vaccination, member_spec
from edge_guard.training import distributed
from edge_guard.training.adversarial import AdversarialConfig, adversarial_loss, adversarial_transform, member_stream
from edge_guard.training.checkpoint import load_checkpoint, make_vaccination, save_checkpoint
from edge_guard.training.config import SLQ_QUALITIES, TrainConfig
from edge_guard.training.data import Dataset, load_dataset, split_by_track
from edge_guard.training.predict import logits_accuracy, predict_logits, prediction_accuracy, robustness_views
from edge_guard.training.run import ENSEMBLE_FILE, EnsembleFile, EnsembleMember, train_config
from edge_guard.training.train import TrainResult, WarmStart, fit, warm_start
from edge_guard.training.transforms import BatchTransform, mixed_transform


@dataclass(frozen=True)
class VaccinateResult:
    out_dir: Path
    ensemble_json: Path
    members: dict[str, TrainResult]
    metrics: dict[str, Any]

    def summary(self) -> list[str]:
        """What `edgeguard vaccinate` prints: each member on its own preprocessing, the vote, the files."""
        m = self.metrics
        lines = [f"  {name:>4}: {100 * member['val_accuracy']:.2f}% on {member['preprocessing']}"
                 for name, member in m["members"].items()]
        lines.append(f"ensemble majority vote: {100 * m['ensemble']['per_member']:.2f}% (per-member JPEG), "
                     f"{100 * m['ensemble']['slq']:.2f}% (SLQ)")
        return [*lines, f"wrote {self.ensemble_json}, {self.out_dir / 'metrics.json'}"]


def vaccinate(
    base_ckpt: str | Path,
    *,
    data: str | Path | None = None,
    dataset: Dataset | None = None,
    qualities: Sequence[int] = (20, 40, 60, 80),
    slq: bool = True,
    slq_qualities: Sequence[int] = SLQ_QUALITIES,
    eval_qualities: Sequence[int] | None = None,
    epochs: int = 3,
    shared_epochs: int = 0,
    val_every: int = 1,
    batch_size: int | None = None,
    lr: float = 3e-3,
    augment: bool | None = None,
    adversarial: AdversarialConfig | None = None,
    num_threads: int = 2,
    device: str = "auto",
    subsampling: str = "420",
    backend: str = "auto",
    out_dir: str | Path = "runs/ensemble",
    resume: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    fan_out: bool = False,
) -> VaccinateResult:
    """Fine-tune one member per JPEG quality (and an SLQ member) from `base_ckpt`; write the ensemble folder.

    data: dataset folder (default: the one the base was trained on); dataset: an already loaded
    Dataset instead. Members train `epochs` epochs with a cosine schedule from `lr` (fine-tuning).
    batch_size/augment default to the base run's. eval_qualities: the JPEG qualities each member is
    measured at after training (default: the base run's grid; () measures only clean, its own quality
    and SLQ). shared_epochs: the first N of the `epochs` are trained once, on images each compressed like a
    randomly picked member's, and every member continues from there: N x (members - 1) epochs less work,
    but members that share more mistakes and fall to the same adaptive attacks (0: each member trains
    alone, as in Das et al.). val_every: validate each member after every N-th epoch and after its last
    (best.pt is its best validated epoch). adversarial: also train on adversarial images made against each
    member through its own defense (see edge_guard.training.adversarial).
    fan_out: under torchrun, train one member per rank (each alone) instead of each member on all ranks.
    Returns a VaccinateResult (see module docstring).
    """
    qualities = sorted({int(q) for q in qualities})
    if not qualities and not slq:
        raise ConfigError(expected_got("members", "at least one quality or --slq", "none"))
    if not all(1 <= q <= 100 for q in qualities):
        raise ConfigError(expected_got("--qualities", "JPEG qualities in 1..100", qualities))
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(expected_got("--epochs", "an integer >= 1 (fine-tuning epochs per member)", epochs))
    if not 0 <= shared_epochs < epochs:
        raise ConfigError(expected_got("--shared-epochs", f"0..{epochs - 1} (fewer than --epochs {epochs})",
                                       shared_epochs))
    if shared_epochs and adversarial is not None:
        raise ConfigError(expected_got("--shared-epochs", "0 with --adversarial-eps", shared_epochs,
                                       "adversarial members train alone; drop one of the two options."))
    base_model, base = load_checkpoint(base_ckpt)
    base_cfg = train_config(base["run_config"])
    cfg = dataclasses.replace(
        base_cfg, model_kwargs={}, data=str(data) if data is not None else base_cfg.data, epochs=epochs, lr=lr,
        schedule="cosine",
        batch_size=batch_size or base_cfg.batch_size, augment=base_cfg.augment if augment is None else augment,
        num_threads=num_threads, device=device, val_every=val_every, subsampling=subsampling, backend=backend,
        jpeg_augment=(), low_res=(), slq_qualities=tuple(int(q) for q in slq_qualities), resume=resume,
        out_dir=str(out_dir),
        eval_qualities=base_cfg.eval_qualities if eval_qualities is None else tuple(int(q) for q in eval_qualities))
    say = echo or (lambda _msg: None)
    train_set, val_set = _member_data(cfg, dataset, base, cache_dir, say)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say(f"vaccinating {base_ckpt} ({base['model_name']}): members "
        + ", ".join([f"q{q}" for q in qualities] + (["slq"] if slq else [])) + f"; {epochs} epochs each"
        + (f", the first {shared_epochs} shared" if shared_epochs else "")
        + (f"; adversarial {adversarial.to_dict()}" if adversarial else ""))

    views = robustness_views(val_set.images, cfg)
    for q in qualities:  # member qualities outside the evaluation grid
        views.setdefault(f"jpeg_{q}", jpeg.roundtrip(val_set.images, q, subsampling=subsampling, backend=backend))
    codec = dict(jpeg.codec_info(backend, subsampling))
    members: dict[str, TrainResult] = {}
    specs = [member_spec(Vaccination.JPEG, q) for q in qualities] + ([member_spec(Vaccination.SLQ)] if slq else [])
    start_model, start = base_model, None
    if shared_epochs:
        start_model = copy.deepcopy(base_model)
        start = _shared_start(start_model, train_set, cfg, specs, shared_epochs, out, progress, say)
    for spec in distributed.shares(specs, fan_out):  # fan_out under torchrun: this rank's members, each alone
        t0 = time.perf_counter()
        name, q = spec.name, spec.quality
        member_cfg = dataclasses.replace(cfg, out_dir=str(out / name))
        vacc = make_vaccination(spec.vaccination, q, [q] if q is not None else list(cfg.slq_qualities), codec,
                                subsampling, adversarial.to_dict() if adversarial else None)
        model = copy.deepcopy(start_model)
        members[name] = fit(
            model, train_set, val_set, member_cfg, model_kwargs=base["model_kwargs"], vaccination=vacc,
            val_view=spec.view, views=views, train_transform=_transform(spec, cfg, model, adversarial),
            train_loss=adversarial_loss(adversarial, cfg.label_smoothing), progress=progress, echo=echo, start=start)
        say(f"member {name}: val acc {members[name].metrics['val_accuracy']:.4f} on its own preprocessing "
            f"({time.perf_counter() - t0:.0f} s)")

    members.update({s.name: _trained(out / s.name) for s in specs if s.name not in members})  # other ranks'
    w = distributed.world()  # under torchrun every rank trained each member; rank 0 writes, the others get its metrics
    if not w.main:
        return VaccinateResult(out, out / ENSEMBLE_FILE, members, distributed.broadcast(None, w))
    shutil.copy2(base_ckpt, out / "base.pt")
    ensemble = ensemble_file(base, codec, cfg, specs, adversarial, shared_epochs)
    (out / ENSEMBLE_FILE).write_text(json.dumps(ensemble.to_dict(), indent=2) + "\n")
    metrics = ensemble_metrics(members, specs, base_model, views, val_set.labels, cfg)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    distributed.broadcast(metrics, w)
    say(f"ensemble: majority vote {metrics['ensemble']['per_member']:.4f} (per-member JPEG), "
        f"{metrics['ensemble']['slq']:.4f} (SLQ); base on clean {metrics['base']['clean']:.4f}")
    return VaccinateResult(out, out / ENSEMBLE_FILE, members, metrics)


def ensemble_file(base: dict[str, Any], codec: dict[str, Any], cfg: TrainConfig, specs: Sequence[MemberSpec],
                  adversarial: AdversarialConfig | None = None, shared_epochs: int = 0) -> EnsembleFile:
    """The ensemble.json contents: classes, input size, codec and one entry per member."""
    return EnsembleFile(
        classes=tuple(base["classes"]), input_size=tuple(base["input_size"]), subsampling=cfg.subsampling,
        backend=codec["backend"], codec_version=codec["version"], slq_qualities=tuple(cfg.slq_qualities),
        base="base.pt", epochs=cfg.epochs, shared_epochs=shared_epochs, lr=cfg.lr,
        adversarial=adversarial.to_dict() if adversarial else None,
        members=tuple(EnsembleMember(name=s.name, vaccination=s.vaccination, quality=s.quality,
                                     checkpoint=f"{s.name}/best.pt") for s in specs))


def majority_vote(logits: Sequence[np.ndarray]) -> np.ndarray:
    """Class per image by the runtime's majority vote (edge_guard.engine). logits: M arrays (N, C).
    Returns int64 (N,)."""
    return engine_vote(softmax(np.stack([np.asarray(lg, dtype=np.float32) for lg in logits])), "majority")[0]


def ensemble_metrics(members: dict[str, TrainResult], specs: Sequence[MemberSpec], base_model: Any,
                     views: dict[str, np.ndarray], labels: np.ndarray, cfg: TrainConfig) -> dict[str, Any]:
    """Each member on its own preprocessing; majority vote with per-member and with shared SLQ preprocessing."""
    own, on_slq, per_member = {}, [], []
    for spec in specs:
        name, view = spec.name, spec.view
        known = members[name].val_logits  # fit measured the best weights on both views already
        if view not in known or "slq" not in known:
            model, _ = load_checkpoint(members[name].best_checkpoint)
            known = {v: predict_logits(model, views[v]) for v in {view, "slq"}}
        own_logits = known[view]
        per_member.append(own_logits)
        on_slq.append(known["slq"])
        own[name] = {"vaccination": str(spec.vaccination), "quality": spec.quality, "preprocessing": view,
                     "val_accuracy": _acc(own_logits, labels), "val_accuracy_slq": _acc(on_slq[-1], labels)}
    base = {"clean": _acc(predict_logits(base_model, views["clean"]), labels), "slq":
            _acc(predict_logits(base_model, views["slq"]), labels),
            "jpeg": {str(q): _acc(predict_logits(base_model, views[f"jpeg_{q}"]), labels)
                     for q in (s.quality for s in specs if s.vaccination == Vaccination.JPEG)}}
    return {
        "val_images": int(len(labels)), "members": own, "base": base,
        "ensemble": {"per_member": round(prediction_accuracy(majority_vote(per_member), labels), 5),
                     "slq": round(prediction_accuracy(majority_vote(on_slq), labels), 5), "vote": "majority"},
        "slq_qualities": list(cfg.slq_qualities), "subsampling": cfg.subsampling,
    }


# ---------------------------------------------------------------------------------------------
# helpers


def _transform(spec: MemberSpec, cfg: TrainConfig, model: Any,
               adversarial: AdversarialConfig | None) -> BatchTransform:
    """The member's training-batch JPEG step on uint8 NHWC batches (after augmentation)."""
    quality, jpeg_member = spec.quality, spec.vaccination == Vaccination.JPEG
    if adversarial is not None:
        return adversarial_transform(model, adversarial, quality=quality,
                                     slq_qualities=None if jpeg_member else cfg.slq_qualities,
                                     subsampling=cfg.subsampling, backend=cfg.backend, stream=member_stream(spec.name))
    if jpeg_member:
        return lambda x, rng: jpeg.roundtrip(x, quality, subsampling=cfg.subsampling, backend=cfg.backend)
    # a fresh SLQ block pattern for every batch, drawn from the epoch's seeded generator
    return lambda x, rng: jpeg.slq(x, cfg.slq_qualities, rng=rng, subsampling=cfg.subsampling, backend=cfg.backend)


def _shared_start(model: Any, train_set: Dataset, cfg: TrainConfig, specs: Sequence[MemberSpec],
                  epochs: int, out: Path, progress: bool, say: Callable[[str], None]) -> WarmStart:
    """Train `model` (a copy of the base) in place for the members' first `epochs` epochs, each image
    compressed like the input of a member drawn at random, so every member starts from JPEG-aware weights.
    Saved as <out>/shared.pt; --resume reuses it when the settings match."""
    path = out / "shared.pt"
    settings = {"members": [s.name for s in specs], "epochs": epochs, "of": cfg.epochs, "lr": cfg.lr,
                "seed": cfg.seed, "batch_size": cfg.batch_size, "subsampling": cfg.subsampling}
    if cfg.resume and path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a truncated or foreign file
            saved = {}
            say(f"shared start: cannot read {path} ({exc.__class__.__name__}), training it again")
        if saved.get("settings") == settings:
            model.load_state_dict(saved["model"])
            say(f"shared start: reusing {path}")
            return WarmStart(epochs, saved["optimizer"], saved["scheduler"])
    t0 = time.perf_counter()
    mixed = mixed_transform([_transform(s, cfg, model, None) for s in specs])
    start = warm_start(model, train_set, cfg, epochs, mixed, progress)
    if distributed.world().main:
        save_checkpoint({"settings": settings, "model": model.state_dict(), "optimizer": start.optimizer,
                         "scheduler": start.scheduler}, path)
    say(f"shared start: epochs 1..{epochs} of {cfg.epochs} trained once on a mix of "
        + ", ".join(s.name for s in specs) + f" inputs ({time.perf_counter() - t0:.0f} s)")
    return start


def _member_data(cfg: TrainConfig, dataset: Dataset | None, base: dict[str, Any], cache_dir: str | Path | None,
                 say: Callable[[str], None]) -> tuple[Dataset, Dataset]:
    """Load (unless given) and split the data exactly as the base run did."""
    if dataset is None:
        if not cfg.data:
            raise ConfigError(expected_got("data", "a dataset folder (--data PATH)", "nothing recorded in the base"))
        dataset = load_dataset(cfg.data, "train", cfg.size, skip_bad=cfg.skip_bad, limit=cfg.limit, seed=cfg.seed,
                               cache_dir=cache_dir)
        say(dataset.report.summary())
    if list(dataset.classes) != list(base["classes"]):
        raise ConfigError(expected_got("dataset classes", f"the base model's {len(base['classes'])} classes",
                                       f"{len(dataset.classes)} different ones", "use the base's dataset."))
    if list(dataset.size) != list(base["input_size"]):
        raise ConfigError(expected_got("image size", base["input_size"], list(dataset.size)))
    return split_by_track(dataset, cfg.val_fraction, cfg.seed)


def _trained(run: Path) -> TrainResult:
    """A member another rank trained (vaccinate --fan-out), from its run folder."""
    metrics = json.loads((run / "metrics.json").read_text())
    return TrainResult(run, run / "best.pt", run / "last.pt", metrics, int(metrics["epochs"]))


def _acc(logits: np.ndarray, labels: np.ndarray) -> float:
    return round(logits_accuracy(logits, labels), 5)
