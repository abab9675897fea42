"""Data-parallel training under torchrun: the process group, this rank's share of each batch, rank-0 duties.

    torchrun --nproc_per_node 2 -m edge_guard.training train --data data/gtsrb --batch-size 128 --out runs/base

`init_from_env` joins the group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the
environment): NCCL when training on CUDA GPUs (one GPU per rank, cuda:LOCAL_RANK), gloo on CPUs. After
that, `fit` (edge_guard.training.train) finds the group through torch.distributed itself, so every caller
of `fit` (train, vaccinate, warm starts) runs data-parallel without new arguments:

- `EpochBatches` is the distributed sampler: every rank draws the same permutation of the TRAINING
  indices from (seed, epoch) (`set_epoch`), cuts it into the single-process run's global batches of
  --batch-size images, and keeps its own interleaved 1/world_size of each (images r, r + N, ... of the
  batch sorted by index): every rank sees every class, so no rank's batch-norm statistics are skewed (a
  dataset is stored class by class, so contiguous shares would give rank 0 the low class ids). The
  track-wise train/val split happens before, identically on every rank, so validation tracks never
  reach a rank's batches.
- the model is wrapped in DistributedDataParallel, which averages gradients over ranks: with per-rank
  batch = batch / world_size the optimizer sees the same mean gradient as one process on the whole batch,
  and the schedule (steps per epoch) is the same.
- rank 0 alone validates, writes checkpoints, config/metrics files and the log, and draws progress bars;
  the others wait for it at the next gradient exchange and receive its final metrics (`broadcast`).

`vaccinate --fan-out` instead trains one member per rank (`shares`: rank r takes members r, r + N, ...),
each alone, as one process would; rank 0 writes ensemble.json once every rank is done.

Rank 0 keeps the single-process run's augmentation and vaccination randomness; rank r > 0 draws its own
from (seed, epoch, r), so a 1-rank run equals a plain run and an N-rank run differs from it only by those
draws, by batch-norm statistics over batch / N images instead of batch, and by float summation order.
"""

from __future__ import annotations

import atexit
import contextvars
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from edge_guard.errors import ConfigError, expected_got

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# how long a rank waits for the others: rank 0 validates alone (GTSRB: seconds), and with --fan-out a rank
# that is done waits at the end for the slowest rank's members (hours for large sets)
TIMEOUT = datetime.timedelta(hours=6)
_ALONE: contextvars.ContextVar[bool] = contextvars.ContextVar("edgeguard_alone", default=False)
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this rank writes files, logs and progress (rank 0)."""
        return self.rank == 0


def world() -> World:
    """The initialized process group's rank and size, else World() (a plain single-process run; also while
    `shares` hands this rank an item to train alone)."""
    if _ALONE.get() or not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_ENV)


def init_from_env(device: str = "auto") -> World:
    """Join the process group torchrun set up; NCCL when `device` resolves to CUDA, else gloo.
    ConfigError (one line) when not started by torchrun."""
    if not launched_by_torchrun():
        missing = [n for n in TORCHRUN_ENV if n not in os.environ]
        raise ConfigError(expected_got("--distributed", "a process started by torchrun", f"no {', '.join(missing)}",
                                       "run: torchrun --nproc_per_node 2 -m edge_guard.training train ..."))
    if dist.is_initialized():
        return world()
    local = int(os.environ["LOCAL_RANK"])
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        if local >= torch.cuda.device_count():
            raise ConfigError(expected_got("LOCAL_RANK", f"a GPU index below {torch.cuda.device_count()}", local,
                                           "start at most one rank per GPU (--nproc_per_node)."))
        torch.cuda.set_device(local)  # "cuda" / "auto" now mean this rank's GPU
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    atexit.register(close)  # leave together at exit: a rank whose peer already left aborts in gloo's threads
    return world()


def close() -> None:
    """Wait for every rank, then leave the process group (a no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def check_batch(batch_size: int, w: World) -> None:
    """The global batch must split evenly over the ranks (per-rank batch = batch / world size)."""
    if batch_size % w.size:
        raise ConfigError(expected_got("--batch-size", f"a multiple of the {w.size} ranks (each takes batch / ranks)",
                                       batch_size, f"use e.g. {batch_size - batch_size % w.size or w.size}."))


class EpochBatches:
    """The distributed sampler: this rank's indices into the training set for each step of an epoch.

    Every rank draws the same permutation of range(n) from (seed, epoch); step s takes the global batch
    order[s * batch_size:(s + 1) * batch_size] (sorted, the remainder of the epoch dropped) and rank r the
    images r, r + N, ... of it (interleaved, so each rank's share spans the classes as the batch does).
    Also holds the epoch's random streams: `rng` (vaccination transforms, numpy),
    `augment_seed` (the augmentation generator) and `dropout_seed` (torch's global RNG)."""

    def __init__(self, n: int, batch_size: int, seed: int, w: World = World()) -> None:
        self.n, self.batch_size, self.seed, self.w = n, batch_size, seed, w
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        self.augment_seed, self.dropout_seed = int(rng.integers(2**62)), int(rng.integers(2**62))
        self.order = rng.permutation(self.n)
        if self.w.rank:  # rank 0 keeps the single-process streams; the others draw their own
            rng = np.random.default_rng([self.seed, epoch, self.w.rank])
            self.augment_seed, self.dropout_seed = int(rng.integers(2**62)), int(rng.integers(2**62))
        self.rng = rng

    def __len__(self) -> int:
        return max(1, self.n // self.batch_size)

    def global_batch(self, step: int) -> np.ndarray:
        return np.sort(self.order[step * self.batch_size:(step + 1) * self.batch_size])

    def __iter__(self) -> Iterator[np.ndarray]:
        for step in range(len(self)):
            yield self.global_batch(step)[self.w.rank::self.w.size]


def shares(items: Sequence[T], enabled: bool = True) -> Iterator[T]:
    """This rank's items (r, r + N, ...; all of them when not enabled or not distributed). While the caller
    handles each, `world()` is World(): what it trains, it trains alone. After the last, a barrier: every
    rank's items are done (their files written) when the loop ends."""
    w = world()
    if not enabled or w.size == 1:
        yield from items
        return
    for item in list(items)[w.rank::w.size]:
        token = _ALONE.set(True)
        try:
            yield item
        finally:
            _ALONE.reset(token)
    barrier(w)


def wrap(model: nn.Module, w: World) -> nn.Module:
    """The module to train through: DistributedDataParallel over the group (rank 0's weights and buffers
    broadcast to all), or the model itself when not distributed."""
    if w.size == 1:
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_sum(values: list[float], w: World) -> list[float]:
    """Element-wise sum of `values` over the ranks (float64; the values themselves when not distributed)."""
    if w.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def broadcast(obj: Any, w: World) -> Any:
    """Rank 0's `obj` on every rank (picklable; the object itself when not distributed)."""
    if w.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(w: World) -> None:
    if w.size > 1:
        dist.barrier()
