"""Vaccination recipes compared: accuracy on the member's JPEG input against gray-box FGSM robustness.

    python benchmarks/vaccination_tradeoff.py --base runs/gtsrb-base/best.pt --data ../shared/datasets/gtsrb32 \
        --quality 40 --epochs 2 --variants lr=1e-3 lr=3e-3 lr=6e-3 lr=6e-3,adv=8 lr=6e-3,adv=4

Each variant fine-tunes ONE member at --quality from the same base checkpoint with `vaccinate`
(same data, split and seed) and reports:
- its validation accuracy on images JPEG-compressed at --quality (the member's deployed input),
- the gray-box misclassification success of FGSM at --eps/255 crafted on the base model and shown to
  the member through its JPEG (on a seeded subset of --n validation images), and
- the fine-tuning wall time, with the ratio to the first variant (same run, same machine).
Variant keys: lr (peak learning rate), adv (adversarial-vaccination budget in 1/255 units, 0 = off),
frac (share of each batch made adversarial, default 0.5), epochs (overrides --epochs).
Writes a text table and, with --out, a JSON file.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_guard import jpeg
from edge_guard.training.adversarial import AdversarialConfig
from edge_guard.training.attacks import FGSM
from edge_guard.training.augment import to_tensor, to_uint8
from edge_guard.training.checkpoint import load_checkpoint
from edge_guard.training.predict import predict_logits
from edge_guard.training.run import Run
from edge_guard.training.vaccinate import vaccinate

KEYS = {"lr": float, "adv": int, "frac": float, "epochs": int}


def parse_variant(text: str) -> dict[str, Any]:
    """'lr=6e-3,adv=8' -> {'lr': 0.006, 'adv': 8}; unknown keys are an error."""
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in KEYS:
            raise SystemExit(f"variant {text!r}: unknown key {key!r}; expected one of {sorted(KEYS)}")
        out[key] = KEYS[key](value)
    return out


def gray_box_success(base: torch.nn.Module, member: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                     quality: int, eps: float) -> float:
    """FGSM crafted on `base`, classified by `member` behind JPEG at `quality`: flipped / originally correct."""
    adv = to_uint8(FGSM(base, eps=eps)(to_tensor(images), torch.from_numpy(labels)))
    ok = predict_logits(member, jpeg.roundtrip(images, quality)).argmax(1) == labels
    fooled = predict_logits(member, jpeg.roundtrip(adv, quality)).argmax(1) != labels
    return float((ok & fooled).sum() / max(1, ok.sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="base checkpoint (edgeguard train)")
    ap.add_argument("--data", required=True, help="the base's dataset folder")
    ap.add_argument("--quality", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--eps", type=int, default=8, help="FGSM budget in 1/255 units")
    ap.add_argument("--n", type=int, default=1000, help="validation images attacked")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=["lr=3e-3", "lr=6e-3,adv=8"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    variants = [(text, parse_variant(text)) for text in args.variants]
    torch.set_num_threads(args.threads)

    # the attacked images: a seeded subset of the base run's own held-out tracks, as `edgeguard evaluate` takes them
    val = Run.open(args.base).dataset(args.data, limit=args.n, calibration=0)
    base, _ = load_checkpoint(args.base)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (text, v) in enumerate(variants):
            adversarial = AdversarialConfig(eps=v["adv"] / 255, fraction=v.get("frac", 0.5)) if v.get("adv") else None
            t0 = time.perf_counter()
            result = vaccinate(args.base, data=args.data, qualities=(args.quality,), slq=False,
                               epochs=v.get("epochs", args.epochs), lr=v.get("lr", 3e-3), adversarial=adversarial,
                               num_threads=args.threads, out_dir=Path(tmp) / f"v{i}", progress=False)
            seconds = time.perf_counter() - t0
            member, _ = load_checkpoint(result.members[f"q{args.quality}"].best_checkpoint)
            success = gray_box_success(base, member, val.images, val.labels, args.quality, args.eps / 255)
            rows.append({"variant": text, "val_accuracy": result.metrics["members"][f"q{args.quality}"]["val_accuracy"],
                         "fgsm_success": round(success, 4), "seconds": round(seconds, 1)})
            print(f"{text:<28} val acc {100 * rows[-1]['val_accuracy']:.2f}%  FGSM {args.eps}/255 gray-box success "
                  f"{100 * success:.1f}%  {seconds:.0f} s ({seconds / rows[0]['seconds']:.2f}x the first)", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"quality": args.quality, "epochs": args.epochs, "eps": args.eps,
                                        "n": val.info["n"], "val_images": val.info["n_val_total"], "rows": rows},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
