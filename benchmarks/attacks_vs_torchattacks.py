"""Our attacks against torchattacks 3.5.1: same results for FGSM/PGD, APGD strength, DeepFool quality and speed.

    python benchmarks/attacks_vs_torchattacks.py                       # synthetic 43-class data, ~1-2 min
    python benchmarks/attacks_vs_torchattacks.py --ckpt runs/base/best.pt --data /path/to/GTSRB --out r.json

Without --ckpt, a registry model (default compact_cnn) is trained for a few seconds (60 Adam steps) on synthetic
GTSRB-sized data (43 classes, 32x32, a smooth colour template per class plus noise). With --ckpt
(a training checkpoint) and --data (a dataset folder `edge_guard.training.data.load_dataset`
reads), the first --n test images are attacked instead.

Reported: FGSM and PGD (random_start=False) max |ours - torchattacks| over the adversarial images
(expected 0: same algorithm, same arithmetic) and success rates; APGD-CE and APGD-DLR (--apgd-steps, one
restart, seed 0) success rates, ours against torchattacks.APGD (expected: ours the same or higher;
the random starts differ, and torchattacks' integer checkpoint rule differs from the paper's for short
runs); DeepFool success rate, median L2
(in [0, 1] units) and wall time on the same batch for both, and the speed ratio torchattacks / ours.
torchattacks' DeepFool differentiates all classes one sample at a time; ours takes the top-10
candidate classes and one backward pass per candidate over the whole batch.
Needs the dev dependency torchattacks: pip install --no-deps torchattacks==3.5.1 (+ scipy, tqdm, requests).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edge_guard.training.attacks import APGDCE, APGDDLR, FGSM, PGD, DeepFool, attack_metrics, predict


def synthetic(n: int, classes: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, size, size) float images in [0, 1] and labels (N,): class template + noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(classes, 3, 4, 4, generator=torch.Generator().manual_seed(1234))
    templates = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    labels = torch.randint(0, classes, (n,), generator=g)
    images = 0.5 + 0.2 * (templates[labels] - 0.5) + 0.08 * torch.randn(n, 3, size, size, generator=g)
    return images.clamp(0, 1), labels


def train_synthetic(model_name: str, classes: int, size: int, steps: int, seed: int) -> nn.Module:
    """Train a registry model on synthetic data for `steps` Adam steps of batch 128 (seconds on a CPU)."""
    from edge_guard.training.models import create_model

    torch.manual_seed(seed)
    model = create_model(model_name, classes)
    x, y = synthetic(4096, classes, size, seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (128,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"trained {model_name} for {steps} steps ({time.perf_counter() - start:.1f} s), last loss {loss.item():.3f}")
    return model.eval()


def load_real(ckpt: str, data: str, n: int, split: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The checkpoint and a seeded n images of `split`: "test" (the dataset's test set) or "val" (the
    training run's own held-out track-wise split), chosen as `edgeguard evaluate` chooses them."""
    from edge_guard.training.run import Run

    run = Run.open(ckpt)
    ev = run.dataset(data, limit=n, calibration=0, split=split)
    images = torch.from_numpy(ev.images).permute(0, 3, 1, 2).float() / 255
    return run.members[0].model.eval(), images, torch.from_numpy(ev.labels).long()


def timed(fn: Any, *args: Any) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, attacks: tuple[str, ...] = ("FGSM", "PGD",
        "APGD-CE", "APGD-DLR", "DeepFool"), apgd_steps: int = 100) -> dict[str, Any]:
    import torchattacks

    clean = predict(model, x)
    results: dict[str, Any] = {"n": len(y), "clean_accuracy": float((clean == y).float().mean())}

    def score(adv: torch.Tensor) -> dict[str, Any]:
        return attack_metrics(y, clean, predict(model, adv), x, adv).to_dict()

    pairs = {
        "FGSM": (FGSM(model, eps=eps), torchattacks.FGSM(model, eps=eps)),
        "PGD": (PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=False),
                torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=False)),
    }
    for name, (ours, theirs) in pairs.items():
        if name not in attacks:
            continue
        a, ta = ours(x, y), theirs(x, y)
        results[name] = {"max_abs_diff": float((a - ta).abs().max()), "ours": score(a), "torchattacks": score(ta)}
    apgd = {"APGD-CE": (APGDCE, "ce"), "APGD-DLR": (APGDDLR, "dlr")}
    for name, (cls, loss) in apgd.items():
        if name not in attacks:
            continue
        a, t_ours = timed(cls(model, eps=eps, steps=apgd_steps, n_restarts=1, seed=0), x, y)
        ta, t_theirs = timed(torchattacks.APGD(model, eps=eps, steps=apgd_steps, n_restarts=1, loss=loss, seed=0), x, y)
        results[name] = {"ours": {**score(a), "seconds": t_ours}, "torchattacks": {**score(ta), "seconds": t_theirs},
                         "steps": apgd_steps}
    if "DeepFool" not in attacks:
        return results

    ours_df, t_ours = timed(DeepFool(model, steps=50, overshoot=0.02, candidates=10), x, y)
    theirs_df, t_theirs = timed(torchattacks.DeepFool(model, steps=50, overshoot=0.02), x, y)
    results["DeepFool"] = {
        "ours": {**score(ours_df), "seconds": t_ours},
        "torchattacks": {**score(theirs_df), "seconds": t_theirs},
        "speedup": t_theirs / t_ours,
    }
    return results


def print_table(r: dict[str, Any]) -> None:
    print(f"\n{r['n']} images, clean accuracy {r['clean_accuracy']:.3f}")
    print(f"{'attack':<10}{'impl':<14}{'success':>9}{'L2 median':>11}{'Linf med':>10}{'seconds':>9}  note")
    for name in ("FGSM", "PGD", "APGD-CE", "APGD-DLR", "DeepFool"):
        if name not in r:
            continue
        for impl in ("ours", "torchattacks"):
            m = r[name][impl]
            l2 = "-" if m["l2_median"] is None else f"{m['l2_median']:.4f}"
            linf = "-" if m["linf_median"] is None else f"{m['linf_median']:.4f}"
            sr = "-" if m["success_rate"] is None else f"{m['success_rate']:.3f}"
            secs = f"{m['seconds']:.2f}" if "seconds" in m else ""
            note = ""
            if impl == "ours" and "max_abs_diff" in r[name]:
                note = f"max |ours - torchattacks| = {r[name]['max_abs_diff']:.2e}"
            if impl == "ours" and name.startswith("APGD"):
                theirs = r[name]["torchattacks"]["success_rate"] or 0.0
                cmp = ">=" if (m["success_rate"] or 0.0) >= theirs else "<"
                note = f"{r[name]['steps']} steps; ours {cmp} torchattacks"
            if impl == "ours" and name == "DeepFool":
                note = f"speed ratio ours vs torchattacks: {r[name]['speedup']:.1f}x faster"
            print(f"{name:<10}{impl:<14}{sr:>9}{l2:>11}{linf:>10}{secs:>9}  {note}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", help="training checkpoint (.pt); default: train a model on synthetic data")
    p.add_argument("--data", help="dataset folder for --ckpt (its test split is attacked)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="with --ckpt: the dataset's test set, or the run's held-out validation tracks")
    p.add_argument("--n", type=int, default=256, help="images attacked (and timed) (default 256)")
    p.add_argument("--model", default="compact_cnn", help="registry model for synthetic runs")
    p.add_argument("--classes", type=int, default=43, help="classes of the synthetic data (GTSRB: 43)")
    p.add_argument("--size", type=int, default=32, help="image side of the synthetic data")
    p.add_argument("--train-steps", type=int, default=60, help="Adam steps (batch 128) for synthetic runs")
    p.add_argument("--eps", type=float, default=4.0, help="FGSM/PGD budget in 8-bit levels (eps = n/255)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attacks", default="FGSM,PGD,APGD-CE,APGD-DLR,DeepFool", help="which rows to run")
    p.add_argument("--apgd-steps", type=int, default=100, help="APGD iterations (both implementations)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ckpt:
        if not args.data:
            p.error("--ckpt needs --data")
        model, x, y = load_real(args.ckpt, args.data, args.n, args.split)
        source = {"ckpt": args.ckpt, "data": args.data, "split": args.split}
    else:
        model = train_synthetic(args.model, args.classes, args.size, args.train_steps, args.seed)
        x, y = synthetic(args.n, args.classes, args.size, args.seed + 1)
        source = {"synthetic": {"model": args.model, "classes": args.classes, "size": args.size}}
    results = run(model, x, y, args.eps / 255, tuple(args.attacks.split(",")), args.apgd_steps)
    import torchattacks

    results["setup"] = {**source, "command": "python benchmarks/attacks_vs_torchattacks.py " + " ".join(
                            sys.argv[1:] if argv is None else argv), "eps_levels": args.eps, "torch": torch.__version__,
                        "torchattacks": torchattacks.__version__, "threads": torch.get_num_threads(),
                        "machine": platform.platform(), "python": sys.version.split()[0]}
    print_table(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
