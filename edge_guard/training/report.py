"""The evaluation report: results.json, results.csv, report.md (the seed's Table 1 layout) and plots.

Input is the dict `edge_guard.training.evaluate.collect` builds: config, data, systems, cells (one per
(threat, attack, eps, system)), the robustness target and versions. Rates are fractions in [0, 1] in the
files and percentages in report.md; perturbation norms are in [0, 1] image units.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_guard.training.worstcase import LINF_ATTACKS, worst_case_table

CSV_COLUMNS = ("threat", "attack", "eps", "system", "quality", "n", "n_correct", "n_flipped", "clean_accuracy",
               "accuracy", "success_rate", "l2_mean", "l2_median", "linf_mean", "linf_median", "l2_all_mean",
               "l2_all_median", "linf_all_mean", "linf_all_median", "attack_seconds", "eval_seconds", "crafted_on")
ATTACK_NAMES = {"fgsm": "FGSM", "pgd": "PGD", "apgd-ce": "APGD-CE", "apgd-dlr": "APGD-DLR", "deepfool": "DeepFool",
                "cw": "CW-L2"}


def write_report(out: Path, results: dict[str, Any]) -> dict[str, Path]:
    """Write results.json, results.csv, report.md and one PNG per attack into `out`; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "results.json", "csv": out / "results.csv", "markdown": out / "report.md"}
    files["json"].write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    write_csv(files["csv"], results["cells"])
    plots = plot_quality_sweeps(out, results)
    files.update({f"plot_{p.stem}": p for p in plots})
    files["markdown"].write_text(markdown(results, [p.name for p in plots]))
    return files


def write_csv(path: Path, cells: Sequence[dict[str, Any]]) -> None:
    """One row per cell; empty fields for values a cell does not have (clean cells, NaN norms)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for cell in cells:
            writer.writerow({k: "" if cell.get(k) is None else cell.get(k) for k in CSV_COLUMNS})


# ---------------------------------------------------------------------------------------------
# numbers for the report


def cell_key(threat: str, attack: str, eps: int | None, system: str) -> str:
    """The id of one result: "graybox|fgsm|8|ensemble", "clean|none|-|base" ("-": no eps)."""
    return f"{threat}|{attack}|{'-' if eps is None else eps}|{system}"


def robustness_target(cells: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The robustness target: gray-box FGSM eps 8/255 and DeepFool misclassification success of the
    vaccinated ensemble at most a third of the undefended base's."""
    out: dict[str, Any] = {}
    for name, (attack, eps) in {"fgsm_eps8": ("fgsm", 8), "deepfool": ("deepfool", None)}.items():
        base = cells.get(cell_key("graybox", attack, eps, "base"), {}).get("success_rate")
        ens = cells.get(cell_key("graybox", attack, eps, "ensemble"), {}).get("success_rate")
        if base is None or ens is None:
            out[name] = {"measured": False}
            continue
        # an attack that does not fool the undefended base says nothing about the defense
        out[name] = {"measured": True, "base_success": base, "ensemble_success": ens,
                     "ratio": ens / base if base else None, "holds": bool(base > 0 and ens <= base / 3)}
    measured = [v for v in out.values() if v["measured"]]
    out["holds"] = bool(measured) and len(measured) == 2 and all(v["holds"] for v in measured)
    return out


# ---------------------------------------------------------------------------------------------
# markdown


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _rows(results: dict[str, Any], threat: str) -> list[tuple[str, str, int | None]]:
    """(row label, attack, eps) in the seed's order: no attack, then each attack and eps."""
    cfg = results["config"]
    # the adaptive table lists the gray-box attacks too, so an attack without an adaptive row says "not run"
    attacks = (cfg["attacks"] if threat == "graybox"
               else list(dict.fromkeys([*cfg["attacks"], *cfg["adaptive_attacks"]])))
    rows: list[tuple[str, str, int | None]] = [("no attack (clean)", "none", None)]
    for a in attacks:
        for eps in (cfg["eps"] if a in LINF_ATTACKS else [None]):
            rows.append((f"{ATTACK_NAMES.get(a, a)}" + (f" eps {eps}/255" if eps is not None else ""), a, eps))
    return rows


def table_columns(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Columns of Table 1: base, base 8-bit, base+JPEG at the table qualities, the two ensembles."""
    keep = set(results["config"]["table_qualities"])
    return [s for s in results["systems"] if s["kind"] != "jpeg" or s["quality"] in keep]


def table(results: dict[str, Any], threat: str) -> str:
    """Markdown table, cells "accuracy / misclassification success" in %, for gray-box or adaptive."""
    cells = {c["key"]: c for c in results["cells"]}
    cols = table_columns(results)
    lines = ["| attack | " + " | ".join(s["label"] for s in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, attack, eps in _rows(results, threat):
        row = []
        for s in cols:
            c = cells.get(cell_key("clean", "none", None, s["name"]) if attack == "none" else
                          cell_key(threat, attack, eps, s["name"]))
            if c is None:
                row.append("not run")
            elif attack == "none":
                row.append(f"{_pct(clean_accuracy(results, threat, s['name'], c))} / -")
            else:
                row.append(f"{_pct(c['accuracy'])} / {_pct(c['success_rate'])}")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def clean_accuracy(results: dict[str, Any], threat: str, system: str, clean: dict[str, Any]) -> float | None:
    """Clean accuracy on the images the table's attacks ran on (adaptive: possibly the first n_adaptive)."""
    if threat == "graybox" or results["data"]["n_adaptive"] == results["data"]["n"]:
        return clean["accuracy"]
    runs = [c for c in results["cells"] if c["threat"] == threat and c["system"] == system]
    return runs[0]["clean_accuracy"] if runs else None


def norms_table(results: dict[str, Any]) -> str:
    """Perturbation size and attack time per attack run (gray-box: crafted once on the base)."""
    lines = ["| threat | attack | crafted on | n | L2 mean / median (all) | Linf mean / median (all) | "
             "L2 mean / median (flipped) | attack time (s) |", "|---" * 8 + "|"]
    seen = set()
    for c in results["cells"]:
        if c["threat"] == "clean":
            continue
        run = (c["threat"], c["attack"], c["eps"], c["crafted_on"])
        if run in seen or (c["threat"] == "graybox" and c["system"] != "base"):
            continue  # gray-box: one row (the perturbation is the same for all systems); flipped = by the base
        seen.add(run)
        name = ATTACK_NAMES.get(c["attack"], c["attack"]) + (f" eps {c['eps']}/255" if c["eps"] is not None else "")
        flipped = "n/a" if c["l2_mean"] is None else f"{c['l2_mean']:.3f} / {c['l2_median']:.3f}"
        lines.append(f"| {c['threat']} | {name} | {c['crafted_on']} | {c['n']} | {c['l2_all_mean']:.3f} / "
                     f"{c['l2_all_median']:.3f} | {255 * c['linf_all_mean']:.2f} / {255 * c['linf_all_median']:.2f}"
                     f" /255 | {flipped} | {c['attack_seconds']:.1f} |")
    return "\n".join(lines)


def target_text(target: dict[str, Any]) -> str:
    parts = []
    for name, label in (("fgsm_eps8", "FGSM eps 8/255"), ("deepfool", "DeepFool")):
        t = target.get(name, {})
        if not t.get("measured"):
            parts.append(f"- {label}: not measured in this run.")
            continue
        ratio = "n/a" if t["ratio"] is None else f"{t['ratio']:.2f}"
        parts.append(f"- {label}: vaccinated ensemble {_pct(t['ensemble_success'])}% vs base "
                     f"{_pct(t['base_success'])}% misclassification success (ratio {ratio}): "
                     + ("holds" if t["holds"] else "does NOT hold") + " (target: at most 1/3).")
    verdict = "HOLDS" if target.get("holds") else "DOES NOT HOLD (or was not fully measured)"
    return f"Gray-box target (ensemble success <= 1/3 of the base's): **{verdict}**.\n\n" + "\n".join(parts)


def data_text(data: dict[str, Any]) -> str:
    """Which images were evaluated: the official test set, or the run's held-out validation tracks."""
    if data.get("split") == "test":
        return f"the official test set (ROI {data.get('roi')})"
    return (f"the track-wise held-out validation split (val_fraction {data.get('val_fraction')}, "
            f"seed {data.get('seed')})")


def markdown(results: dict[str, Any], plots: Sequence[str]) -> str:
    cfg, data = results["config"], results["data"]
    members = ", ".join(f"{m['name']} ({m['vaccination']}" + (f" q{m['quality']}" if m["quality"] else "") + ")"
                        for m in results["members"])
    adaptive = (f"attacks {', '.join(cfg['adaptive_attacks'])} on {', '.join(results['adaptive_systems'])}, on the "
                f"first {data['n_adaptive']} of the {data['n']} images" if cfg["adaptive"]
                else "not run (--no-adaptive)")
    text = [
        "# Robustness report", "",
        f"Models: `{cfg['models']}`; members: {members}; vote: {cfg['vote']}.",
        f"Data: {data.get('source')} ({data.get('layout')}), {data_text(data)}, {data['n']} images "
        f"(a seeded random subset of {data.get('n_val_total')}), {data['classes']} classes, "
        f"{data['input_size'][0]}x{data['input_size'][1]} px.",
        f"JPEG: {results['versions']['jpeg_backend']} (libjpeg-turbo {results['versions']['libjpeg-turbo']}), "
        f"subsampling {cfg['subsampling']}; SLQ qualities {cfg['slq_qualities']}.",
        "", "Cells are **accuracy / misclassification success** in %. Misclassification success (Das et al. "
        "2017) = images the system classified correctly when clean and wrongly after the attack, divided by "
        "the images it classified correctly when clean. `base, 8-bit input` rounds the adversarial image to "
        "8 bits before the base model (adversarial images are otherwise kept in float32, so this column shows "
        "how much plain quantization removes).", "",
        "## Gray-box (adversarial images crafted on the undefended base model)", "",
        table(results, "graybox"), "",
        "## Adaptive white-box (each system attacked end to end)", "",
        f"Adaptive: {adaptive}. BPDA through the real codec (backward: {cfg['bpda_backward']}); ensembles are "
        f"attacked through their soft-vote surrogate and scored with the majority vote; EOT over "
        f"{cfg['eot_samples']} SLQ draws (the SLQ member of the vaccinated ensemble, every member of the SLQ "
        f"ensemble). The base column is the undefended base attacked directly (the same threat as gray-box)."
        + (" Cells marked 'not run' were not attacked adaptively." if cfg["adaptive"] else ""), "",
        table(results, "adaptive") if cfg["adaptive"] else "(not run)", "",
        "## Worst case over attacks, per image (AutoAttack rule)", "",
        "An image counts as robust only if the system got it right when clean and after every Linf attack run "
        "at that eps; columns are each attack's accuracy alone, in %.", "",
        "Gray-box:", "", worst_case_table(results.get("worst_case", []), "graybox"), "",
        "Adaptive:", "", worst_case_table(results.get("worst_case", []), "adaptive"), "",
        "## Target", "", target_text(results["target"]), "",
        "## Attacks", "",
        f"FGSM; PGD: {cfg['pgd_steps']} steps, step 2.5 eps / steps, random start; APGD-CE / APGD-DLR: "
        f"{cfg.get('apgd_steps', 100)} steps, {cfg.get('apgd_restarts', 1)} restart(s), momentum 0.75; "
        f"DeepFool: 50 steps, overshoot 0.02, 10 candidate classes; CW-L2: {cfg['cw_steps']} Adam steps, "
        f"{cfg['cw_search_steps']} binary-search "
        "steps on c from 0.01. DeepFool and CW are minimum-norm attacks (no eps). Norms in [0, 1] units over "
        "all attacked images, and over the images the attack flipped on its target (gray-box: the base).", "",
        norms_table(results), "",
        "## Misclassification success vs JPEG quality (gray-box, base+JPEG; the seed's Figure 3)", "",
        *[f"![{p}]({p})" for p in plots], "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}. "
        f"Time: {results['cell_seconds_total']:.0f} s of attacks and scoring over all cells; this invocation "
        f"took {results['elapsed_s']:.0f} s (a --resume run only recomputes missing cells).", "",
    ]
    return "\n".join(text)


# ---------------------------------------------------------------------------------------------
# plots


def plot_quality_sweeps(out: Path, results: dict[str, Any]) -> list[Path]:
    """One PNG per gray-box attack: base+JPEG success vs quality (one panel per eps), the base and both
    ensembles as horizontal reference lines, adaptive base+JPEG points where measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {c["key"]: c for c in results["cells"]}
    jpeg_systems = sorted((s for s in results["systems"] if s["kind"] == "jpeg"), key=lambda s: s["quality"])
    paths = []
    for attack in results["config"]["attacks"]:
        levels = results["config"]["eps"] if attack in LINF_ATTACKS else [None]
        fig, axes = plt.subplots(1, len(levels), figsize=(3.8 * len(levels) + 2.4, 3.4), squeeze=False, sharey=True)
        for ax, eps in zip(axes[0], levels):
            def rate(threat: str, system: str, _eps: int | None = eps, _attack: str = attack) -> float | None:
                c = cells.get(cell_key(threat, _attack, _eps, system))
                return None if c is None or c["success_rate"] is None else 100 * c["success_rate"]

            pts = [(s["quality"], rate("graybox", s["name"])) for s in jpeg_systems]
            pts = [(q, r) for q, r in pts if r is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", color="tab:orange", label="base+JPEG (gray-box)")
            adv = [(s["quality"], rate("adaptive", s["name"])) for s in jpeg_systems]
            adv = [(q, r) for q, r in adv if r is not None]
            if adv:
                ax.plot(*zip(*adv), "x", color="tab:red", markersize=8, label="base+JPEG (adaptive)")
            for system, style, color, label in (("base", "-", "gray", "base, no defense"),
                                                ("ensemble", "--", "tab:blue", "vaccinated ensemble"),
                                                ("slq_ensemble", ":", "tab:green", "SLQ ensemble")):
                r = rate("graybox", system)
                if r is not None:
                    ax.axhline(r, linestyle=style, color=color, label=label)
                r = rate("adaptive", system)
                if r is not None and system != "base":
                    ax.axhline(r, linestyle="-.", color=color, alpha=0.5, label=f"{label} (adaptive)")
            ax.set_title(ATTACK_NAMES.get(attack, attack) + (f", eps {eps}/255" if eps is not None else ""))
            ax.set_xlabel("JPEG quality")
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("misclassification success (%)")
        handles, labels = axes[0][0].get_legend_handles_labels()
        right = 1 - 2.4 / (3.8 * len(levels) + 2.4)  # the legend gets the last 2.4 inches
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(right, 0.5), fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0, right, 1))
        path = out / f"success_vs_quality_{attack}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
