"""Clean accuracy against worst-case adaptive accuracy, one point per vaccination recipe, with a plot.

    python benchmarks/robust_tradeoff.py --data ../shared/datasets/gtsrb32 --n 500 --eps 4,8 \
        --runs plain=runs/robust/plain fgsm=runs/robust/fgsm pgd3=runs/robust/pgd3 trades3=runs/robust/trades3 \
        --out benchmarks/results/robust_tradeoff_gtsrb.json --plot docs/robust-tradeoff.svg

Each run is an ensemble folder (`edgeguard vaccinate`). On a seeded subset of --n images of its
held-out validation tracks (as `edgeguard evaluate` picks them), the deployed system (each member
behind its own real JPEG step, majority vote; `edge_guard.training.evaluate.build_system`) is attacked
end to end by the adaptive attacker of `edgeguard evaluate`: cross-entropy on the members' mean softmax,
BPDA through the real codec, at each --eps (1/255 units), with
  fgsm           one signed-gradient step, identity backward,
  pgd-identity   PGD-20 from a random start, step 2.5 eps / 20, identity backward,
  pgd-diffjpeg   the same with DiffJPEG's Jacobian as the backward pass.
An image counts as robust at eps only when the vote is right after every one of them (worst case
per image, the AutoAttack rule over the attacks run here). Clean accuracy is reported on the same
images and, from the run's metrics.json, on all validation images.

--published adds reference points measured elsewhere, "label=clean:acc8" in %, drawn hollow.
--merge A.json B.json ... takes the rows of earlier --out files instead of measuring (runs measured one
at a time, as they finish), then writes the table and the plot of all of them.
Writes --out (JSON) and, beside it, the text table; --plot writes the SVG (matplotlib).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from edge_guard.training.attacks import FGSM, PGD
from edge_guard.training.evaluate import EvalConfig, System, build_system, on_device
from edge_guard.training.provenance import versions
from edge_guard.training.run import Run
from edge_guard.training.worstcase import robust_mask

ENSEMBLE = System("ensemble", "vaccinated ensemble", "ensemble")
ATTACKS = ("fgsm", "pgd-identity", "pgd-diffjpeg")
PGD_STEPS = 20


def attack(name: str, target: torch.nn.Module, eps: float, seed: int) -> Any:
    """The attack object for one of ATTACKS against `target` (float32 NCHW in [0, 1] -> logits)."""
    if name == "fgsm":
        return FGSM(target, eps=eps)
    return PGD(target, eps=eps, alpha=2.5 * eps / PGD_STEPS, steps=PGD_STEPS, random_start=True,
               generator=torch.Generator().manual_seed(seed))


def measure(path: str, data: str, n: int, eps_levels: list[int], batch: int, seed: int) -> dict[str, Any]:
    """Clean and per-attack / worst-case adaptive accuracy of the ensemble at `path` on n validation images."""
    run = on_device(Run.open(path), torch.device("cpu"))
    val = run.dataset(data, limit=n, calibration=0)
    x = torch.from_numpy(val.images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(val.labels).long()
    deployed = build_system(ENSEMBLE, run, EvalConfig(), seed, attack=False)
    clean_ok = torch.cat([deployed.predict(x[i:i + batch]) for i in range(0, len(y), batch)]) == y
    row: dict[str, Any] = {"run": path, "n": len(y), "clean": float(clean_ok.float().mean()), "eps": {}}
    metrics = json.loads((Path(path) / "metrics.json").read_text())
    row["clean_all_val"] = metrics["ensemble"]["per_member"]
    row["val_images"] = metrics["val_images"]
    for eps in eps_levels:
        survived, per_attack, seconds = [], {}, {}
        for name in ATTACKS:
            backward = "diffjpeg" if name == "pgd-diffjpeg" else "identity"
            target = build_system(ENSEMBLE, run, EvalConfig(bpda_backward=backward), seed, attack=True)
            t0 = time.perf_counter()
            adv = torch.cat([attack(name, target, eps / 255, seed + i)(x[i:i + batch], y[i:i + batch])
                             for i in range(0, len(y), batch)])
            seconds[name] = round(time.perf_counter() - t0, 1)
            ok = torch.cat([deployed.predict(adv[i:i + batch]) for i in range(0, len(y), batch)]) == y
            per_attack[name] = float(ok.float().mean())
            survived.append(ok.numpy())
        robust = robust_mask(clean_ok.numpy(), survived)
        row["eps"][str(eps)] = {"worst_case": float(robust.mean()), "per_attack": per_attack,
                                "attack_seconds": seconds}
        print(f"  {path} eps {eps}/255: worst case {100 * row['eps'][str(eps)]['worst_case']:.1f}% "
              + ", ".join(f"{a} {100 * v:.1f}%" for a, v in per_attack.items()), flush=True)
    return row


def table(rows: list[dict[str, Any]], eps_levels: list[int], published: list[dict[str, Any]]) -> list[str]:
    head = "| recipe | images | clean (these images) | clean (all val) | " + " | ".join(
        f"worst-case {e}/255 | " + " | ".join(f"{a} {e}/255" for a in ATTACKS) for e in eps_levels) + " |"
    lines = [head, "|" + "---|" * (4 + len(eps_levels) * (1 + len(ATTACKS)))]
    for r in rows:
        cells = [r["label"], str(r["n"]), f"{100 * r['clean']:.1f}%", f"{100 * r['clean_all_val']:.2f}%"]
        for e in eps_levels:
            cell = r["eps"][str(e)]
            cells += [f"**{100 * cell['worst_case']:.1f}%**"] + [f"{100 * cell['per_attack'][a]:.1f}%" for a in ATTACKS]
        lines.append("| " + " | ".join(cells) + " |")
    for p in published:
        lines.append(f"| {p['label']} (reference) | | | {p['clean']:.2f}% | {p['robust8']:.1f}% at 8/255 (elsewhere) |")
    return lines


def plot(rows: list[dict[str, Any]], published: list[dict[str, Any]], eps_levels: list[int], path: Path) -> None:
    """Clean accuracy (x) against worst-case adaptive accuracy (y), one marker per recipe and eps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    markers = dict(zip(eps_levels, "os^D"))
    for e in eps_levels:
        xs = [100 * r["clean_all_val"] for r in rows]
        ys = [100 * r["eps"][str(e)]["worst_case"] for r in rows]
        ax.scatter(xs, ys, marker=markers[e], s=40, label=f"worst-case adaptive, {e}/255")
        for r, xv, yv in zip(rows, xs, ys):
            ax.annotate(r["label"], (xv, yv), textcoords="offset points", xytext=(4, 3), fontsize=8)
    for p in published:
        ax.scatter([p["clean"]], [p["robust8"]], marker="s", s=40, facecolors="none", edgecolors="grey")
        ax.annotate(p["label"], (p["clean"], p["robust8"]), textcoords="offset points", xytext=(4, -9), fontsize=8,
                    color="grey")
    ax.axhline(50, color="tab:red", lw=0.8, ls="--")
    ax.axhline(80, color="tab:red", lw=0.8, ls=":")
    ax.axvline(98, color="tab:red", lw=0.8, ls="--")
    ax.set_xlabel("clean accuracy, % (validation tracks, majority vote)")
    ax.set_ylabel("accuracy under the adaptive attacker, %")
    ax.set_title("GTSRB: clean vs worst-case adaptive accuracy per recipe", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None})  # no timestamp: the committed SVG changes only with the numbers
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the runs' dataset folder")
    ap.add_argument("--runs", nargs="*", default=[], help="label=ENSEMBLE_FOLDER ...")
    ap.add_argument("--merge", nargs="*", type=Path, default=[], help="earlier --out files whose rows to reuse")
    ap.add_argument("--published", nargs="*", default=[], help="label=clean:acc8 reference points, in %%")
    ap.add_argument("--n", type=int, default=500, help="validation images attacked")
    ap.add_argument("--eps", default="4,8", help="budgets in 1/255 units")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="JSON results (the .txt table is written beside it)")
    ap.add_argument("--plot", type=Path, default=None, help="SVG plot")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    eps_levels = [int(e) for e in args.eps.split(",")]
    published = []
    for text in args.published:
        label, _, values = text.partition("=")
        clean, _, robust8 = values.partition(":")
        published.append({"label": label, "clean": float(clean), "robust8": float(robust8)})
    t0 = time.perf_counter()
    rows = [row for path in args.merge for row in json.loads(path.read_text())["rows"]]
    for text in args.runs:
        label, _, path = text.partition("=")
        rows.append({"label": label, **measure(path, args.data, args.n, eps_levels, args.batch, args.seed)})
    lines = table(rows, eps_levels, published)
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps({
            "command": "python benchmarks/robust_tradeoff.py " + " ".join(_argv()), "n": args.n, "eps": eps_levels,
            "attacks": list(ATTACKS), "pgd_steps": PGD_STEPS, "rows": rows, "published": published,
            "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
            "versions": versions(("matplotlib",), with_platform=True),
            "seconds": round(time.perf_counter() - t0, 1)}, indent=2) + "\n")
        args.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    if args.plot:
        plot(rows, published, eps_levels, args.plot)


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()
