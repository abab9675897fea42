"""Where training time goes on this machine, and the alternatives to the choices `fit` makes.

    python benchmarks/training_speed.py --models compact_cnn,resnet14 --threads 2 --out benchmarks/results/training_speed.json

1. The training step: eager channels_last (what `fit` uses), eager NCHW, torch.compile, and data-parallel
("ddp": --threads processes of one thread each, each on its share of the batch, gradients averaged by
torch DDP over gloo, as torchrun would run `fit`; the time is per whole batch), and the low-res steps of
progressive resizing (`train --low-res`: "24px", "16px", the batch downscaled as `make_batch` does, for
models that take any input size).
One step is what `edgeguard train` does per batch: forward, label-smoothed cross-entropy, backward,
AdamW step, on a float32 batch (--batch-size, 3, 32, 32) in [0, 1]. The variants run in interleaved
rounds (one block of --steps steps each per round, after --warmup steps) so that machine noise hits all
of them alike; the table gives the median step time and its ratio to the default (eager, channels_last).
"compile s" is the one-off cost of the first compiled steps (forward and backward graphs; inductor caches
them on disk, so a second run on the same machine compiles faster).
2. Validation predictions (`predict_logits`, run after every epoch and at the end of a run) on
--predict-images random uint8 32x32 images at each of --predict-batches, interleaved the same way; the
ratio is against the first batch size (the default, 128).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from edge_guard.training.models import create_model
from edge_guard.training.predict import predict_logits
from edge_guard.training.train import accepts_side
from edge_guard.training.transforms import downscale

VARIANTS = ("eager", "eager-nchw", "compile")  # in-process; the first is the reference


def build(model_name: str, variant: str, batch_size: int, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A step function for one variant ("ddp": this rank's, in an initialized process group), and a record
    with its one-off setup time."""
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=43)
    fmt = torch.contiguous_format if variant == "eager-nchw" else torch.channels_last
    model.to(memory_format=fmt).train()
    forward: Any = model
    if variant == "compile":
        forward = torch.compile(model)  # inductor: C++ kernels on the CPU
    elif variant == "ddp":
        forward = nn.parallel.DistributedDataParallel(model)  # all-reduces gradients during backward
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.rand(batch_size, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 43, (batch_size,))
    side = int(variant[:-2]) if variant.endswith("px") else None  # a low-res step: "16px" -> 16

    def step() -> None:
        inp = x if side is None else downscale(x, side).contiguous(memory_format=fmt)
        loss = loss_fn(forward(inp), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t0 = time.perf_counter()
    step()  # the compiled variant compiles here
    return step, {"first_step_s": time.perf_counter() - t0}


def _ddp_rank(rank: int, world: int, port: int, model_name: str, batch_size: int, go: list[Any], done: Any) -> None:
    """One data-parallel process: runs `n` steps on its share of the batch for every n put on go[rank]
    (0 ends it); rank 0 puts the seconds per step on `done`."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    step, _ = build(model_name, "ddp", batch_size // world)
    while (n := go[rank].get()) > 0:
        seconds = _timed(step, n)
        if rank == 0:
            done.put(seconds)
    dist.destroy_process_group()


class DataParallel:
    """`world` spawned single-thread processes that train one model together (see _ddp_rank)."""

    def __init__(self, model_name: str, batch_size: int, world: int) -> None:
        ctx = mp.get_context("spawn")
        self.go, self.done = [ctx.SimpleQueue() for _ in range(world)], ctx.SimpleQueue()
        with socket.socket() as s:  # a free port for the process group's rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.procs = [ctx.Process(target=_ddp_rank, args=(r, world, port, model_name, batch_size, self.go, self.done))
                      for r in range(world)]
        for p in self.procs:
            p.start()

    def __call__(self, steps: int) -> float:
        """Seconds per (whole-batch) step over `steps` steps."""
        for q in self.go:
            q.put(steps)
        return self.done.get()

    def close(self) -> None:
        for q in self.go:
            q.put(0)
        for p in self.procs:
            p.join()


def measure(model_name: str, batch_size: int, rounds: int, steps: int, warmup: int, threads: int,
            low_res: list[int]) -> dict[str, Any]:
    probe = create_model(model_name, num_classes=43)
    variants = VARIANTS + tuple(f"{side}px" for side in low_res if accepts_side(probe, side))
    built = {v: build(model_name, v, batch_size) for v in variants}
    blocks: dict[str, Any] = {v: (lambda n, step=step: _timed(step, n)) for v, (step, _) in built.items()}
    ddp = DataParallel(model_name, batch_size, threads) if threads > 1 else None
    if ddp is not None:
        blocks["ddp"] = ddp
    try:
        for block in blocks.values():
            if warmup:  # --warmup 0: none (a block of 0 steps has no time per step)
                block(warmup)
        times: dict[str, list[float]] = {v: [] for v in blocks}
        for _ in range(rounds):
            for v, block in blocks.items():
                times[v].append(block(steps))
    finally:
        if ddp is not None:
            ddp.close()
    ref = statistics.median(times[VARIANTS[0]])
    return {v: {"ms_per_step": 1000 * statistics.median(t), "vs_eager": statistics.median(t) / ref,
                "compile_s": built[v][1]["first_step_s"] if v == "compile" else None} for v, t in times.items()}


def _timed(step: Any, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def measure_predict(model_name: str, batch_sizes: list[int], n_images: int, rounds: int) -> dict[str, Any]:
    model = create_model(model_name, num_classes=43).to(memory_format=torch.channels_last)
    images = np.random.default_rng(0).integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8)
    predict_logits(model, images[:256])  # warm-up
    times: dict[int, list[float]] = {b: [] for b in batch_sizes}
    for _ in range(rounds):
        for b in batch_sizes:
            t0 = time.perf_counter()
            predict_logits(model, images, batch_size=b)
            times[b].append(time.perf_counter() - t0)
    ref = statistics.median(times[batch_sizes[0]])
    return {str(b): {"seconds": statistics.median(t), "vs_first": statistics.median(t) / ref} for b, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="compact_cnn,resnet14")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--low-res", default="24,16", help="sides of the low-res step variants")
    parser.add_argument("--predict-batches", default="128,512")
    parser.add_argument("--predict-images", type=int, default=7830)  # GTSRB's validation tracks
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, "
          f"{args.rounds} rounds x {args.steps} steps per variant")
    print(f"{'model':<12} {'variant':<11} {'ms/step':>8} {'time ratio':>10} {'compile s':>10}")
    for name in filter(None, args.models.split(",")):
        results[name] = measure(name, args.batch_size, args.rounds, args.steps, args.warmup, args.threads,
                                [int(side) for side in args.low_res.split(",") if side.strip()])
        for v, r in results[name].items():
            compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
            print(f"{name:<12} {v:<11} {r['ms_per_step']:8.1f} {r['vs_eager']:9.2f}x {compile_s:>10}")
    batches = [int(b) for b in args.predict_batches.split(",") if b.strip()]
    predict = {}
    print(f"\npredict_logits on {args.predict_images} images, {args.rounds} rounds")
    print(f"{'model':<12} {'batch':>6} {'seconds':>8} {'time ratio':>10}")
    for name in filter(None, args.models.split(",")):
        predict[name] = measure_predict(name, batches, args.predict_images, args.rounds)
        for b, r in predict[name].items():
            print(f"{name:<12} {b:>6} {r['seconds']:8.2f} {r['vs_first']:9.2f}x")
    if args.out:
        args.out.write_text(json.dumps({"torch": torch.__version__, "threads": args.threads,
                                        "batch_size": args.batch_size, "rounds": args.rounds,
                                        "steps": args.steps, "results": results,
                                        "predict_images": args.predict_images, "predict": predict}, indent=2) + "\n")


if __name__ == "__main__":
    main()
