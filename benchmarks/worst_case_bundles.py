"""Adaptive white-box attacks on the shipped bundles, worst case over attacks per image (AutoAttack rule).

    python benchmarks/worst_case_bundles.py --data ../shared/datasets/gtsrb32 --n 100 \
        --json benchmarks/results/worst_case_bundles_gtsrb.json

Each bundle's own ONNX members run in torch (`edge_guard.training.bundle_torch`, parity with onnxruntime
checked) behind its defense: BPDA through the real codec (identity backward), EOT over an SLQ member's
draws, the soft-vote surrogate. PGD-10 (step eps/4, random start), APGD-CE and APGD-DLR (--apgd-steps,
one restart) at each eps; every adversarial image is classified by the deployed runtime (`Guard`: 8-bit
input, the real codec, the majority vote). An image counts as robust only if the bundle got it right when
clean and after every attack (`edge_guard.training.worstcase.robust_mask`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edge_guard import Guard
from edge_guard.training.attacks import APGDCE, APGDDLR, PGD
from edge_guard.training.bundle_torch import bundle_target
from edge_guard.training.data import load_dataset, split_by_track
from edge_guard.training.worstcase import robust_mask


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--bundles", default="export/gtsrb-shield,export/gtsrb-shield-r14")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--eps", default="2,4,8")
    p.add_argument("--apgd-steps", type=int, default=20)
    p.add_argument("--eot", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, val = split_by_track(load_dataset(args.data, "train", 32), 0.2, 0)
    idx = np.random.default_rng(args.seed).choice(len(val.labels), args.n, replace=False)
    u8, y = val.images[idx], np.asarray(val.labels)[idx]
    x, yt = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(y)
    command = "python benchmarks/worst_case_bundles.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = []
    for b in args.bundles.split(","):
        guard = Guard.from_bundle(b, seed=args.seed, threads=args.threads, warn_codec_mismatch=False)
        target = bundle_target(b, eot_samples=args.eot, seed=args.seed)

        def correct(images: np.ndarray, guard: Guard = guard) -> np.ndarray:
            return np.array([pr.class_id for pr in guard.classify(images)]) == y

        clean = correct(u8)
        for e in (int(v) for v in args.eps.split(",")):
            eps = e / 255
            attacks = {"pgd": PGD(target, eps=eps, alpha=eps / 4, steps=10,
                                  generator=torch.Generator().manual_seed(args.seed)),
                       "apgd-ce": APGDCE(target, eps=eps, steps=args.apgd_steps, seed=args.seed),
                       "apgd-dlr": APGDDLR(target, eps=eps, steps=args.apgd_steps, seed=args.seed)}
            acc, masks, secs = {}, [], {}
            for name, attack in attacks.items():
                t0 = time.perf_counter()
                adv = torch.cat([attack(x[i:i + 50], yt[i:i + 50]) for i in range(0, len(y), 50)])
                ok = correct((adv.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
                masks.append(ok)
                acc[name], secs[name] = float((clean & ok).mean()), round(time.perf_counter() - t0, 1)
            row = {"bundle": guard.bundle.name, "eps": e, "n": len(y), "clean_accuracy": float(clean.mean()),
                   "accuracy": acc, "worst_case_accuracy": float(robust_mask(clean, masks).mean()), "seconds": secs}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        out = {"command": command, "machine": platform.platform(), "python": sys.version.split()[0],
               "torch": torch.__version__, "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        args.json.with_suffix(".txt").write_text("\n".join(
            [command, out["machine"], ""] + [f"{r['bundle']:<18} eps {r['eps']}/255  clean {r['clean_accuracy']:.3f}  "
                                             + "  ".join(f"{k} {v:.3f}" for k, v in r["accuracy"].items())
                                             + f"  worst case {r['worst_case_accuracy']:.3f}" for r in rows]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
