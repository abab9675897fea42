"""`edgeguard evaluate --ray [ADDRESS]`: the evaluation's independent cells as Ray tasks on a local or remote cluster.

    edgeguard evaluate --models runs/shield --data data/gtsrb --ray            # a Ray started here, all CPUs
    ray start --head && edgeguard evaluate --models runs/shield --ray auto     # the cluster this machine heads

The tasks (each asks for --threads CPUs and runs torch on that many threads):
  clean    one per system: its clean cell and its clean predictions (every scoring task needs them)
  craft    one per image shard (one attack batch) of a job whose batches draw no random numbers (FGSM,
           DeepFool and CW on a deterministic target: the base, base+JPEG, base 8-bit): the same batches
           as one pass over all images, so the same adversarial images
  score    per such job, once its shards are in: the job's cells on each of its systems
  whole    every other job (PGD's random start, EOT over SLQ draws: one random stream per job), crafted
           and scored in one task with the stream as a single process would draw it
Every cell's randomness is seeded per cell (`evaluate.cell_seed`), so the cells, and with them results.json
(less timings) and the report's tables, equal a single-process run's with the same seed. The driver
appends each cell to OUT/cells.jsonl (the store --resume reads) as its task finishes: a stopped run
loses only the cells in flight, and Ray re-runs the tasks of a lost worker (max_retries).

Ray is imported only here, and this module only by `evaluate(..., ray=...)`: without --ray, Ray is never
loaded (an optional extra: pip install "edge-guard[scale]"). Workers need edge-guard and the same torch
installed; models and images travel to them through Ray's object store, so they need no shared files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from edge_guard.errors import ConfigError, expected_got
from edge_guard.progress import progress_bar
from edge_guard.training import evaluate as ev

SHARDABLE = ("fgsm", "deepfool", "cw")  # attacks that draw no random numbers: any batch alone is the same
SHARD_BATCHES = 1  # attack batches per craft task
MAX_RETRIES = 3  # Ray re-runs a task this often when its worker dies
SCALE_EXTRA = 'pip install "edge-guard[scale]"'


class _TaskStore:
    """The CellStore inside a task: which cells are done, and the cells the task made (sent back)."""

    def __init__(self, done: set[str]) -> None:
        self.keys, self.cells = set(done), []

    def done(self, key: str) -> bool:
        return key in self.keys

    def add(self, cell: dict[str, Any]) -> None:
        self.keys.add(cell["key"])
        self.cells.append(cell)


def _context(shared: dict[str, Any], done: set[str], clean: dict[str, Tensor] | None = None) -> Any:
    """A worker's evaluation context: the run, config and images from the object store."""
    config = shared["config"]
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    ctx = ev._Context(shared["run"], config, _TaskStore(done), shared["x"], shared["y"])  # type: ignore[arg-type]
    ctx._clean.update(clean or {})  # computed once by the clean tasks
    return ctx


def clean_task(shared: dict[str, Any], system: ev.System, done: set[str]) -> tuple[list[dict], str, Tensor]:
    """The system's clean cell (unless done) and its clean predictions int64 (N,)."""
    ctx = _context(shared, done)
    ctx.clean_cell(system)
    return ctx.store.cells, system.name, ctx.clean_pred(system)


def craft_task(shared: dict[str, Any], job: ev.Job, start: int, stop: int) -> tuple[Tensor, float, dict]:
    """Adversarial images for images start..stop of the job, the seconds and the attack's parameters."""
    return job.craft(_context(shared, set()), start, stop, lambda: None)


def score_task(shared: dict[str, Any], clean: dict[str, Tensor], job: ev.Job, done: set[str],
               *parts: tuple[Tensor, float, dict]) -> list[dict]:
    """The job's cells from its shards' adversarial images (in image order); attack time summed."""
    ctx = _context(shared, done, clean)
    job.score(ctx, torch.cat([p[0] for p in parts]), sum(p[1] for p in parts), parts[0][2])
    return ctx.store.cells


def whole_task(shared: dict[str, Any], clean: dict[str, Tensor], job: ev.Job, done: set[str]) -> list[dict]:
    """The job crafted and scored in one task (its random stream drawn as one process draws it)."""
    ctx = _context(shared, done, clean)
    job.run(ctx, lambda: None)
    return ctx.store.cells


def shardable(job: ev.Job, run: Any) -> bool:
    """Whether the job's batches can be crafted apart: a deterministic attack on a deterministic target."""
    return job.attack in SHARDABLE and (job.threat == "graybox" or not ev.is_random(job.systems[0], run))


def run_on_ray(ctx: Any, systems: Sequence[ev.System], pending: Sequence[ev.Job], address: str, *,
               cpus: int | None = None, progress: bool = True, say: Callable[[str], None] = lambda _m: None) -> None:
    """Run the clean cells and the pending jobs as Ray tasks; add each finished cell to ctx.store.
    address: "local" (a Ray started here with `cpus` CPUs, default all) or a cluster address ("auto", or
    "ray://HEAD:10001"). A Ray already initialized in this process is used as it is."""
    ray = _import_ray()
    if ctx.x.device.type != "cpu":
        raise ConfigError(expected_got("--device with --ray", "cpu (Ray tasks run on CPU workers)",
                                       str(ctx.x.device), "pass --device cpu."))
    started = _connect(ray, address, cpus)
    try:
        opts = {"num_cpus": max(1, ctx.config.threads), "max_retries": MAX_RETRIES}
        remote = {f.__name__: ray.remote(**opts)(f) for f in (clean_task, craft_task, score_task, whole_task)}
        say(f"ray: {int(ray.cluster_resources().get('CPU', 0))} CPUs, {opts['num_cpus']} per task")
        shared = ray.put({"run": ctx.run, "config": ctx.config, "x": ctx.x, "y": ctx.y})
        done = set(ctx.store.cells)
        with progress_bar(enabled=progress, label="{task.description:<48}") as bar:
            plan = [(job, job.shards(ctx, SHARD_BATCHES) if shardable(job, ctx.run) else None) for job in pending]
            total = len(systems) + sum(1 + (len(shards) if shards else 0) for _, shards in plan)
            task = bar.add_task("clean accuracy", total=total)

            def finished(refs: dict[Any, str]) -> Any:
                """Wait for the next of `refs` to finish; store its cells; yield (ref, result)."""
                while refs:
                    (ref,), _ = ray.wait(list(refs), num_returns=1)
                    title, result = refs.pop(ref), ray.get(ref)
                    bar.update(task, advance=1, description=f"{title} ({len(refs)} left)")
                    yield ref, result

            clean: dict[str, Tensor] = {}
            for _, (cells, name, pred) in finished({remote["clean_task"].remote(shared, s, done): f"clean {s.name}"
                                                    for s in systems}):
                _store(ctx, cells)
                clean[name] = pred
            clean_ref = ray.put(clean)
            refs: dict[Any, str] = {}
            finals = set()
            for job, shards in plan:
                if shards is None:
                    ref = remote["whole_task"].remote(shared, clean_ref, job, done)
                else:
                    parts = [remote["craft_task"].remote(shared, job, a, b) for a, b in shards]
                    refs.update({p: f"{job.title} [{a}:{b}]" for p, (a, b) in zip(parts, shards)})
                    ref = remote["score_task"].remote(shared, clean_ref, job, done, *parts)
                refs[ref] = job.title
                finals.add(ref)
            for ref, result in finished(refs):
                if ref in finals:
                    _store(ctx, result)
    finally:
        if started:
            ray.shutdown()


def _store(ctx: Any, cells: list[dict[str, Any]]) -> None:
    for cell in cells:
        if not ctx.store.done(cell["key"]):
            ctx.store.add(cell)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(expected_got("--ray", "Ray installed", "no ray module",
                                       f"install the scale extra: {SCALE_EXTRA}")) from None
    return ray


def _connect(ray: Any, address: str, cpus: int | None) -> bool:
    """ray.init for `address` unless Ray is already up in this process; whether this call started it."""
    if cpus is not None and cpus < 1:
        raise ConfigError(expected_got("--ray-cpus", "a positive number of CPUs", cpus))
    if ray.is_initialized():
        return False
    try:
        if address == "local":
            ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except ConnectionError as exc:
        raise ConfigError(expected_got("--ray ADDRESS", "a running Ray cluster (ray start --head)", f"{address}: {exc}",
                                       "start one, or pass --ray without an address for a local Ray.")) from None
    return True
