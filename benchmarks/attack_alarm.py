"""The attack alarm (member disagreement and confidence) as a detector, and RP2 stickers, on the shipped bundles.

    python benchmarks/attack_alarm.py --data ../shared/datasets/gtsrb32 --surrogate runs/r22-undefended-bundle \
        --json benchmarks/results/attack_alarm_gtsrb.json [--write-manifest]

Per bundle, on seeded images of the track-wise validation split (seed 0, 20% of the tracks):
  clean       --n-clean images through `Guard` (the negatives: false alarms are counted on them)
  gray-box    PGD-10 at eps/255 crafted on the undefended --surrogate bundle (its ONNX graph in torch)
  adaptive    APGD-CE through the bundle itself (`bundle_target`: BPDA through the real codec, EOT over SLQ)
  adaptive-agree  APGD-CE on the members' mean log-probability, which pushes every member to the same wrong
              class at once: the attacker who also minimises disagreement
  square      Square Attack on the ensemble's scores through the runtime (--queries per image)
  sticker     an RP2 sticker (bars mask) learned on --sticker-n training photos of one class through the
              bundle with EOT over scale, rotation, perspective, lighting and JPEG, judged on held-out signs
              of that class under --views fresh transformations each
Every image is scored by the deployed runtime (`Guard`: 8-bit input, the real codec, the vote). The
positives of each ROC are the adversarial images that fooled the bundle. Reported: attack success,
ROC AUC of disagreement (ties broken by confidence), the detection rate at 1% false alarms on clean
images, and the (agreement, confidence) thresholds `edge_guard.alarm.choose_alarm` picks over all
attacks; --write-manifest stores them with their rates as the bundle manifest's `alarm`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_guard import Guard
from edge_guard.alarm import auc, choose_alarm, detection_at, suspicion
from edge_guard.bundle import load_bundle, write_manifest
from edge_guard.query_attacks import query_attack
from edge_guard.training.attacks import APGDCE, PGD, RP2, PhysicalTransforms, physical_views, sticker_mask
from edge_guard.training.bundle_torch import bundle_target
from edge_guard.training.data import load_dataset, split_by_track

MAX_FPR = 0.01


class MeanLogProb(nn.Module):
    """Surrogate logits mean_i log p_i over the members (a geometric-mean vote): its cross-entropy is the mean
    of the members' own cross-entropies, so raising it pushes every member off the true class together."""

    def __init__(self, target: nn.Module) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target.member_logits(x).log_softmax(dim=-1).mean(dim=0)


def to_tensor(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).float() / 255


def to_u8(x: torch.Tensor) -> np.ndarray:
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def decide(guard: Guard, u8: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class ids, agreement, confidence) from the deployed runtime."""
    preds = [p for i in range(0, len(u8), 512) for p in guard.classify(u8[i:i + 512])]
    m = len(guard.bundle.members)
    return (np.array([p.class_id for p in preds]), np.array([p.votes.count(p.class_id) / m for p in preds]),
            np.array([p.confidence for p in preds]))


def batched(attack: Any, x: torch.Tensor, y: torch.Tensor, bs: int = 50) -> torch.Tensor:
    return torch.cat([attack(x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs)])


def summarise(clean: tuple[np.ndarray, np.ndarray], fooled: tuple[np.ndarray, np.ndarray], n_attacked: int
              ) -> dict[str, Any]:
    neg, pos = suspicion(*clean), suspicion(*fooled)
    row: dict[str, Any] = {"n_attacked": n_attacked, "n_fooled": int(len(pos)),
                           "success_rate": len(pos) / n_attacked if n_attacked else None}
    if len(pos):
        t, f, d = detection_at(neg, pos, MAX_FPR)
        row.update({"auc": auc(neg, pos), "detection_at_1pct": d, "fpr_at_threshold": f,
                    "mean_agreement_fooled": float(np.mean(fooled[0]))})
    return row


def run_bundle(path: str, surrogate: nn.Module, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    bundle = load_bundle(path)
    guard = Guard.from_bundle(path, seed=args.seed, threads=args.threads, warn_codec_mismatch=False)
    target = bundle_target(bundle, eot_samples=args.eot, seed=args.seed)
    t0 = time.perf_counter()
    pred, agr, conf = decide(guard, data["clean"])
    clean = (agr, conf)
    out: dict[str, Any] = {"bundle": bundle.name, "clean_accuracy": float((pred == data["clean_y"]).mean()),
                           "n_clean": len(pred), "clean_mean_agreement": float(agr.mean()), "attacks": {}}
    # attack images the bundle gets right
    xa, ya = data["attack"], data["attack_y"]
    ok = decide(guard, xa)[0] == ya
    x, y = to_tensor(xa[ok]), torch.from_numpy(ya[ok])
    eps = args.eps / 255
    crafted = {
        "gray-box PGD": lambda: batched(PGD(surrogate, eps=eps, alpha=eps / 4, steps=10), x, y),
        "adaptive APGD-CE": lambda: batched(APGDCE(target, eps=eps, steps=args.apgd_steps), x, y),
        "adaptive-agree APGD-CE": lambda: batched(APGDCE(MeanLogProb(target), eps=eps, steps=args.apgd_steps),
                                                  x, y),
    }
    fooled_sets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, make in crafted.items():
        s = time.perf_counter()
        p, a, c = decide(guard, to_u8(make()))
        hit = p != ya[ok]
        fooled_sets[name] = (a[hit], c[hit])
        out["attacks"][name] = {**summarise(clean, fooled_sets[name], int(ok.sum())),
                                "seconds": round(time.perf_counter() - s, 1)}
        print(f"{bundle.name} {name}: {out['attacks'][name]}", flush=True)
    s = time.perf_counter()
    q = query_attack(guard, xa[:args.n_square], ya[:args.n_square], attack="square", eps=eps, queries=args.queries,
                     seed=args.seed)
    _, _, qc = decide(guard, q.adv)
    fooled_sets["square"] = (q.agreement[q.fooled], qc[q.fooled])
    out["attacks"]["square"] = {**summarise(clean, fooled_sets["square"], int(q.correct.sum())),
                                "median_queries": q.to_dict()["median_queries"], "budget": args.queries,
                                "seconds": round(time.perf_counter() - s, 1)}
    print(f"{bundle.name} square: {out['attacks']['square']}", flush=True)
    s = time.perf_counter()
    out["sticker"], fooled_sets["sticker"] = sticker(guard, target, surrogate_sticker=data.get("surrogate_sticker"),
                                                     data=data, args=args)
    out["attacks"]["sticker"] = {**summarise(clean, fooled_sets["sticker"], out["sticker"]["n_views_correct"]),
                                 "seconds": round(time.perf_counter() - s, 1)}
    print(f"{bundle.name} sticker: {out['sticker']} {out['attacks']['sticker']}", flush=True)
    choice = choose_alarm(clean, {k: v for k, v in fooled_sets.items() if len(v[0])}, MAX_FPR)
    out["alarm"] = {"suspect_below": choice.suspect_below, "confidence_below": choice.confidence_below,
                    "clean_fpr": choice.clean_fpr, "detection": choice.detection, "auc": choice.auc,
                    "n_clean": choice.n_clean}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def sticker(guard: Guard, target: nn.Module, *, surrogate_sticker: torch.Tensor | None, data: dict[str, Any],
            args: argparse.Namespace) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """Learn a sticker through `target` on the craft photos; judge it (and the surrogate's, transferred) on
    the held-out photos under fresh views, against the same views without a sticker."""
    mask = sticker_mask(32, 32, "bars")
    camera = PhysicalTransforms()
    craft = to_tensor(data["sticker_craft"])
    attack = RP2(target, mask, steps=args.sticker_steps, lr=0.1, eot=2, transforms=camera, seed=args.seed)
    attack(craft, torch.full((len(craft),), args.sticker_class))
    held = to_tensor(data["sticker_held"])
    y = np.full(len(held) * args.views, args.sticker_class)
    base_p = decide(guard, to_u8(physical_views(held, camera, args.views, seed=1234)))[0]
    ok = base_p == y
    result: dict[str, Any] = {"class": args.sticker_class, "n_craft": len(craft), "n_held": len(held),
                              "views": args.views, "view_accuracy_no_sticker": float(ok.mean()),
                              "n_views_correct": int(ok.sum())}
    fooled = (np.zeros(0), np.zeros(0))
    for name, st in (("white-box", attack.sticker), ("transfer from undefended", surrogate_sticker),
                     ("random", torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)))):
        if st is None:
            continue
        p, a, c = decide(guard, to_u8(physical_views(held, camera, args.views, seed=1234, sticker=st, mask=mask)))
        hit = ok & (p != y)
        result[name] = {"success_rate": float(hit.sum() / max(1, ok.sum())),
                        "flagged_at_default": float((a[hit] < 0.6).mean()) if hit.any() else None}
        if name == "white-box":
            fooled = (a[hit], c[hit])
    result["_sticker"] = attack.sticker  # the surrogate's is tried on the ensembles (transfer); not written
    return result, fooled


def load(args: argparse.Namespace) -> dict[str, Any]:
    train, val = split_by_track(load_dataset(args.data, "train", 32), 0.2, 0)
    rng = np.random.default_rng(args.seed)
    vy = np.asarray(val.labels)
    idx = rng.permutation(len(vy))
    clean, attack = idx[:args.n_clean], idx[args.n_clean:args.n_clean + args.n_attack]
    ty = np.asarray(train.labels)
    craft = rng.choice(np.nonzero(ty == args.sticker_class)[0], args.sticker_n, replace=False)
    held = rng.choice(np.nonzero(vy == args.sticker_class)[0], args.sticker_held, replace=False)
    return {"clean": val.images[clean], "clean_y": vy[clean], "attack": val.images[attack], "attack_y": vy[attack],
            "sticker_craft": train.images[craft], "sticker_held": val.images[held]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--bundles", default="export/gtsrb-shield,export/gtsrb-shield-r14")
    p.add_argument("--surrogate", required=True, help="an undefended bundle (export --defense none)")
    p.add_argument("--n-clean", type=int, default=500)
    p.add_argument("--n-attack", type=int, default=100)
    p.add_argument("--n-square", type=int, default=50)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--eps", type=int, default=8, help="Linf budget in 1/255 units")
    p.add_argument("--apgd-steps", type=int, default=20)
    p.add_argument("--eot", type=int, default=2, help="SLQ draws per gradient")
    p.add_argument("--sticker-class", type=int, default=14, help="GTSRB class of the stickered sign (14: stop)")
    p.add_argument("--sticker-n", type=int, default=32, help="training photos the sticker is learned on")
    p.add_argument("--sticker-held", type=int, default=40, help="held-out validation photos it is judged on")
    p.add_argument("--sticker-steps", type=int, default=100)
    p.add_argument("--views", type=int, default=4, help="fresh transformations per held-out photo")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--write-manifest", action="store_true", help="store the chosen alarm in each bundle's manifest")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    data = load(args)
    command = "python benchmarks/attack_alarm.py " + " ".join(sys.argv[1:] if argv is None else argv)
    surrogate = bundle_target(args.surrogate)
    rows = [run_bundle(args.surrogate, surrogate, data, args)]
    data["surrogate_sticker"] = rows[0]["sticker"].pop("_sticker")
    for b in args.bundles.split(","):
        rows.append(run_bundle(b, surrogate, data, args))
        rows[-1]["sticker"].pop("_sticker", None)
        if args.write_manifest:
            m = load_bundle(b).manifest.to_dict()
            a = rows[-1]["alarm"]
            m["alarm"] = {"suspect_below": a["suspect_below"], "confidence_below": a["confidence_below"],
                          "measured": {"max_false_alarm_rate": MAX_FPR, "clean_false_alarm_rate": a["clean_fpr"],
                                       "n_clean": a["n_clean"], "detection": a["detection"], "auc": a["auc"],
                                       "split": "val (track-wise, seed 0)", "command": command}}
            write_manifest(b, m)
        save(args, command, rows)
    return 0


def save(args: argparse.Namespace, command: str, rows: list[dict[str, Any]]) -> None:
    """Write the JSON and the text summary of the rows so far (after each bundle)."""
    out = {"command": command, "machine": platform.platform(), "python": sys.version.split()[0],
           "torch": torch.__version__, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        lines = [command, out["machine"], ""]
        for r in rows:
            lines.append(f"{r['bundle']}: clean accuracy {r['clean_accuracy']:.3f} on {r['n_clean']}, chosen alarm "
                         f"agreement < {r['alarm']['suspect_below']} or confidence < "
                         f"{r['alarm']['confidence_below']:.3f} (clean false alarms {r['alarm']['clean_fpr']:.3f})")
            for name, a in r["attacks"].items():
                lines.append(f"  {name:<24} success {a['success_rate']}  fooled {a['n_fooled']}  AUC {a.get('auc')}  "
                             f"detected at 1% FPR {a.get('detection_at_1pct')}  chosen alarm catches "
                             f"{r['alarm']['detection'].get(name)}")
            lines.append(f"  sticker: {json.dumps(r['sticker'])}")
        args.json.with_suffix(".txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
