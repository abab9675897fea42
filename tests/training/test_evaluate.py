"""edgeguard evaluate: gray-box and adaptive cells, the report files, resume, the CLI.

A tiny vaccinated ensemble (base + q40 + q80 + slq, compact_cnn with 4-8 channels on 16x16 colour
classes, a few dozen Adam steps each) is written through the checkpoint contract in tmp_path, next
to a PNG class-folder dataset. Each evaluation runs on 24 validation images in a second or two.
"""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edge_guard import jpeg
from edge_guard.cli import app
from edge_guard.errors import ConfigError, DataError
from edge_guard.training import evaluate as ev
from edge_guard.training.attacks import BPDAJPEG, EOT, DefendedModel
from edge_guard.training.checkpoint import build_checkpoint, load_checkpoint, make_vaccination, save_checkpoint
from edge_guard.training.evaluate import EvalConfig, evaluate, on_device, robustness_target
from edge_guard.training.models import create_model
from edge_guard.training.run import Run
from tests.training.synthetic import fit_full_batch, tinted_squares

torch.set_num_threads(1)
SIZE = 16
CLASSES = ["a_red", "b_green", "c_blue", "d_gray"]
KWARGS = {"widths": [4, 8], "input_size": [SIZE, SIZE], "dropout": 0.0}
SMALL = dict(attacks=("fgsm", "pgd", "deepfool", "cw"), eps=(4, 8), qualities=(30, 60, 90), limit=24,
             adaptive_attacks=("fgsm", "pgd"), eot_samples=2, pgd_steps=3, cw_steps=20, cw_search_steps=3,
             batch_size=16, threads=1)


def _fit(x: np.ndarray, y: np.ndarray, seed: int, steps: int = 40) -> nn.Module:
    torch.manual_seed(seed)
    return fit_full_batch(create_model("compact_cnn", len(CLASSES), **KWARGS), x, y, steps)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """Dataset folder + ensemble folder (ensemble.json, base.pt, q40/ q80/ slq/ best.pt)."""
    root = tmp_path_factory.mktemp("evaluate_world")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEGUARD_CACHE_DIR", str(root / "cache"))
    rng = np.random.default_rng(0)
    data, ens = root / "data", root / "ens"
    xs, ys = [], []
    for c, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True)
        imgs = tinted_squares(c, 24, rng, SIZE, tint=30)
        for i, im in enumerate(imgs):
            cv2.imwrite(str(data / name / f"{i:03d}.png"), im[..., ::-1])
        xs.append(imgs)
        ys.append(np.full(24, c, np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    codec = jpeg.codec_info()
    run_config = {"data": str(data), "seed": 0, "val_fraction": 0.3}
    specs = {"base": ("none", None, x), "q40": ("jpeg", 40, jpeg.roundtrip(x, 40)),
             "q80": ("jpeg", 80, jpeg.roundtrip(x, 80)), "slq": ("slq", None, jpeg.slq(x, rng=0))}
    for i, (name, (kind, q, train_x)) in enumerate(specs.items()):
        model = _fit(train_x, y, seed=i)
        vacc = make_vaccination(kind, q, [q] if q else ([20, 40, 60, 80] if kind == "slq" else None), codec)
        ckpt = build_checkpoint(model, model_name="compact_cnn", model_kwargs=KWARGS, classes=CLASSES,
                                input_size=(SIZE, SIZE), vaccination=vacc, run_config=run_config, epoch=1,
                                optimizer=None, metrics={})
        save_checkpoint(ckpt, ens / ("base.pt" if name == "base" else f"{name}/best.pt"))
    (ens / "ensemble.json").write_text(json.dumps({
        "classes": CLASSES, "input_size": [SIZE, SIZE], "subsampling": "420", "backend": codec["backend"],
        "codec_version": codec["version"], "slq_qualities": [20, 40, 60, 80], "base": "base.pt",
        "members": [{"name": n, "checkpoint": f"{n}/best.pt", "vaccination": specs[n][0], "quality": specs[n][1]}
                    for n in ("q40", "q80", "slq")]}))
    yield {"root": root, "data": data, "ens": ens}
    mp.undo()


class Spy:
    """Wraps evaluate.create_attack: records each attacked model; optionally fails at call `fail_at`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> None:
        self.calls: list[tuple[str, nn.Module]] = []
        self.fail_at = fail_at
        real = ev.create_attack

        def spy(name: str, model: nn.Module, **kw):
            self.calls.append((name, model))
            if self.fail_at is not None and len(self.calls) >= self.fail_at:
                raise KeyboardInterrupt  # an interrupted evaluation
            return real(name, model, **kw)

        monkeypatch.setattr(ev, "create_attack", spy)


@pytest.fixture(scope="module")
def full(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "report"
    return evaluate(world["ens"], out, EvalConfig(**SMALL), progress=False)


def test_report_files_are_written_and_consistent(full) -> None:
    out, res = full.out_dir, full.results
    for name in ("results.json", "results.csv", "report.md", "cells.jsonl"):
        assert (out / name).is_file()
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [f"success_vs_quality_{a}.png" for a in sorted(SMALL["attacks"])]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["cells"] == res["cells"] and on_disk["config"]["limit"] == 24
    assert on_disk["data"]["n"] == 24 and on_disk["versions"]["torch"] == torch.__version__
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(res["cells"])
    for row, cell in zip(rows, res["cells"]):
        assert (row["threat"], row["attack"], row["system"]) == (cell["threat"], cell["attack"], cell["system"])
        assert float(row["accuracy"]) == pytest.approx(cell["accuracy"])
        if cell.get("success_rate") is not None:
            assert float(row["success_rate"]) == pytest.approx(cell["success_rate"])
    # every gray-box (attack, eps) was scored on every system, with the counts adding up
    systems = [s["name"] for s in res["systems"]]
    assert systems == ["base", "base_8bit", "base+jpeg30", "base+jpeg40", "base+jpeg60", "base+jpeg80",
                       "base+jpeg90", "ensemble", "slq_ensemble"]  # the member qualities 40, 80 join the sweep
    gray = [c for c in res["cells"] if c["threat"] == "graybox"]
    assert len(gray) == (2 + 2 + 1 + 1) * len(systems)
    for c in gray:
        assert c["n"] == 24 and 0 <= c["n_flipped"] <= c["n_correct"] <= 24
        assert c["success_rate"] == pytest.approx(c["n_flipped"] / c["n_correct"])
        assert c["accuracy"] <= c["clean_accuracy"] + 1e-9 or c["n_correct"] < 24
    fgsm8 = [c for c in gray if c["attack"] == "fgsm" and c["eps"] == 8]
    assert all(c["linf_all_median"] == pytest.approx(8 / 255, abs=1e-6) for c in fgsm8)
    deepfool = next(c for c in gray if c["attack"] == "deepfool" and c["system"] == "base")
    assert deepfool["eps"] is None and deepfool["n_flipped"] > 0 and deepfool["l2_median"] > 0
    md = (out / "report.md").read_text()
    assert "## Gray-box" in md and "## Adaptive white-box" in md and "accuracy / misclassification success" in md
    assert "| FGSM eps 8/255 |" in md and "| DeepFool |" in md and "| CW-L2 |" in md
    header = next(line for line in md.splitlines() if line.startswith("| attack |"))
    assert "base+JPEG q40" in header and "base+JPEG q80" in header and "base+JPEG q30" not in header
    assert "success_vs_quality_fgsm.png" in md
    assert set(res["target"]) == {"fgsm_eps8", "deepfool", "holds"} and res["target"]["fgsm_eps8"]["measured"]


def test_success_rate_matches_an_independent_computation(world, full) -> None:
    """Gray-box FGSM eps 8/255 on base+JPEG q30: FGSM by hand on the base, the codec by hand."""
    run = Run.open(world["ens"])
    data = run.dataset(limit=24, calibration=0)
    x = torch.from_numpy(data.images.transpose(0, 3, 1, 2).copy()).float() / 255
    y = torch.from_numpy(data.labels)
    base, _ = load_checkpoint(world["ens"] / "base.pt")
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(base(xx), y), xx)
    adv = (x + 8 / 255 * g.sign()).clamp(0, 1)

    def jpeg_pred(images: torch.Tensor) -> np.ndarray:
        u8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        z = torch.from_numpy(jpeg.roundtrip(u8, 30).transpose(0, 3, 1, 2).copy()).float() / 255
        with torch.no_grad():
            return base(z).argmax(1).numpy()

    correct = jpeg_pred(x) == data.labels
    flipped = correct & (jpeg_pred(adv) != data.labels)
    cell = next(c for c in full.results["cells"]
                if (c["threat"], c["attack"], c["eps"], c["system"]) == ("graybox", "fgsm", 8, "base+jpeg30"))
    assert correct.sum() > 10  # the tiny base is right on most images even after q30
    assert (cell["n_correct"], cell["n_flipped"]) == (int(correct.sum()), int(flipped.sum()))
    assert cell["success_rate"] == pytest.approx(flipped.sum() / correct.sum())


def test_adaptive_rows_exist_for_every_defended_system(full) -> None:
    res = full.results
    expected = ["base", "base_8bit", "base+jpeg40", "base+jpeg80", "ensemble", "slq_ensemble"]
    assert res["adaptive_systems"] == expected
    for attack in ("fgsm", "pgd"):
        for eps in (4, 8):
            got = {c["system"]: c for c in res["cells"]
                   if (c["threat"], c["attack"], c["eps"]) == ("adaptive", attack, eps)}
            assert sorted(got) == sorted(expected)
            assert all(got[s]["crafted_on"] == s and got[s]["n"] == 24 for s in expected)
    adaptive_table = full.out_dir.joinpath("report.md").read_text().split("## Adaptive white-box")[1].split("##")[0]
    for row in ("| FGSM eps 4/255 |", "| PGD eps 8/255 |"):
        line = next(line for line in adaptive_table.splitlines() if line.startswith(row))
        assert "not run" not in line
    for row in ("| DeepFool |", "| CW-L2 |"):  # gray-box only here: the adaptive table says so
        assert next(line for line in adaptive_table.splitlines() if line.startswith(row)).count("not run") == 6


def test_graybox_images_are_crafted_on_the_base_only(world, tmp_path, monkeypatch) -> None:
    spy = Spy(monkeypatch)
    cfg = EvalConfig(**{**SMALL, "attacks": ("fgsm", "deepfool"), "eps": (8,), "adaptive": False})
    evaluate(world["ens"], tmp_path / "gray", cfg, progress=False)
    base_state = torch.load(world["ens"] / "base.pt", weights_only=True)["model"]
    assert {name for name, _ in spy.calls} == {"fgsm", "deepfool"} and len(spy.calls) == 2 * 2  # 24 images, 16 a batch
    for _, model in spy.calls:
        assert not isinstance(model, (DefendedModel, EOT))
        state = model.state_dict()
        assert all(torch.equal(state[k].cpu(), v) for k, v in base_state.items())
    # adaptive targets are the defended systems themselves: BPDA JPEG for base+JPEG, EOT for the SLQ ensemble
    spy.calls.clear()
    cfg = EvalConfig(**{**SMALL, "attacks": ("fgsm",), "eps": (8,), "adaptive_attacks": ("fgsm",)})
    evaluate(world["ens"], tmp_path / "adaptive", cfg, progress=False)
    targets = [m for _, m in spy.calls]
    assert any(isinstance(m, DefendedModel) and isinstance(m.defenses[0], BPDAJPEG) and m.defenses[0].quality == 40
               for m in targets)
    assert any(isinstance(m, EOT) and m.samples == 2 for m in targets)
    ensemble = [m for m in targets if isinstance(m, DefendedModel) and len(m.members) == 3]
    assert ensemble and isinstance(ensemble[0].members[2], EOT)  # EOT over the SLQ member's draws only


def test_resume_skips_finished_cells(world, tmp_path, monkeypatch) -> None:
    out = tmp_path / "r"
    cfg = EvalConfig(**{**SMALL, "attacks": ("fgsm", "pgd"), "eps": (8,), "adaptive": False})
    spy = Spy(monkeypatch, fail_at=3)  # fgsm: 2 batches, then pgd's first batch is interrupted
    with pytest.raises(KeyboardInterrupt):
        evaluate(world["ens"], out, cfg, progress=False)
    stored = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
    assert {c["attack"] for c in stored} == {"none", "fgsm"}
    with pytest.raises(ConfigError, match="--resume"):
        evaluate(world["ens"], out, cfg, progress=False)
    spy.calls.clear()
    spy.fail_at = None
    res = evaluate(world["ens"], out, cfg, resume=True, progress=False).results
    assert [name for name, _ in spy.calls] == ["pgd", "pgd"]  # fgsm was not attacked again
    assert {c["attack"] for c in res["cells"] if c["threat"] == "graybox"} == {"fgsm", "pgd"}
    spy.calls.clear()
    again = evaluate(world["ens"], out, cfg, resume=True, progress=False).results
    assert spy.calls == [] and again["cells"] == res["cells"]
    with pytest.raises(ConfigError, match="limit"):  # settings that change numbers must match
        evaluate(world["ens"], out, EvalConfig(**{**SMALL, "limit": 20}), resume=True, progress=False)


def test_adaptive_limit_and_minimum_norm_attacks_run_once(world, tmp_path) -> None:
    cfg = EvalConfig(**{**SMALL, "attacks": ("cw",), "adaptive_attacks": ("deepfool",), "adaptive_limit": 8,
                        "adaptive_qualities": (60,)})
    res = evaluate(world["ens"], tmp_path / "a", cfg, progress=False).results
    adaptive = [c for c in res["cells"] if c["threat"] == "adaptive"]
    assert {c["system"] for c in adaptive} == {"base", "base_8bit", "base+jpeg60", "ensemble", "slq_ensemble"}
    assert all(c["n"] == 8 and c["eps"] is None and c["attack"] == "deepfool" for c in adaptive)
    assert [c["eps"] for c in res["cells"] if c["threat"] == "graybox" and c["system"] == "base"] == [None]
    assert res["data"]["n_adaptive"] == 8 and res["config"]["table_qualities"] == [60]


def test_robustness_target_rule() -> None:
    def cells(base: float, ens: float) -> dict:
        return {f"graybox|{a}|{e}|{s}": {"success_rate": r} for a, e in (("fgsm", 8), ("deepfool", "-"))
                for s, r in (("base", base), ("ensemble", ens))}

    assert robustness_target(cells(0.9, 0.3))["holds"] is True  # exactly a third
    t = robustness_target(cells(0.9, 0.31))
    assert t["holds"] is False and t["fgsm_eps8"]["ratio"] == pytest.approx(0.31 / 0.9)
    assert robustness_target({})["holds"] is False and not robustness_target({})["deepfool"]["measured"]


def test_clean_accuracy_on_the_official_test_split(world, tmp_path) -> None:
    """--split test --attacks none --no-adaptive: every test image, clean accuracy only, matching the
    base's own predictions on those images."""
    rng = np.random.default_rng(7)
    xs, ys = [], []
    for c, name in enumerate(CLASSES):
        (tmp_path / "d" / "test" / name).mkdir(parents=True)
        imgs = tinted_squares(c, 5, rng, SIZE, tint=30)
        imgs[0] = rng.integers(0, 256, imgs[0].shape, dtype=np.uint8)  # noise: some images are missed
        for i, im in enumerate(imgs):
            cv2.imwrite(str(tmp_path / "d" / "test" / name / f"{i:03d}.png"), im[..., ::-1])
        xs.append(imgs)
        ys.append(np.full(len(imgs), c))
    cfg = EvalConfig(attacks=(), adaptive=False, split="test", limit=1000, qualities=(50,), threads=1)
    res = evaluate(world["ens"], tmp_path / "out", cfg, data=tmp_path / "d", progress=False).results
    assert res["data"]["split"] == "test" and res["data"]["n"] == 20 == res["data"]["n_val_total"]
    assert {c["threat"] for c in res["cells"]} == {"clean"} and not res["target"]["holds"]
    base, _ = load_checkpoint(world["ens"] / "base.pt")
    x = torch.from_numpy(np.concatenate(xs).transpose(0, 3, 1, 2).copy()).float() / 255
    expected = float((base(x).argmax(1).numpy() == np.concatenate(ys)).mean())
    clean = {c["system"]: c["accuracy"] for c in res["cells"]}
    assert clean["base"] == pytest.approx(expected) and 0 < expected < 1
    assert "official test set" in (tmp_path / "out" / "report.md").read_text()
    cli = CliRunner().invoke(app, ["evaluate", "--models", str(world["ens"]), "--data", str(tmp_path / "d"),
                                   "--split", "test", "--attacks", "none", "--no-adaptive", "--qualities", "50",
                                   "--threads", "1", "--out", str(tmp_path / "cli")])
    assert cli.exit_code == 0, cli.output
    assert f"clean accuracy on 20 test images: base {100 * expected:.2f}%" in cli.output
    with pytest.raises(DataError, match="test/<class>"):  # the training folders are not a test set
        evaluate(world["ens"], tmp_path / "out2", cfg, data=world["data"], progress=False)


def test_on_device_moves_copies_and_leaves_the_callers_run(world) -> None:
    run = Run.open(world["ens"])
    same = on_device(run, torch.device("cpu"))
    assert same.base is run.base and all(a.model is b.model for a, b in zip(same.members, run.members))
    moved = on_device(run, torch.device("meta"))  # any other device: copies, on that device
    for new, old in [(moved.base, run.base)] + [(a.model, b.model) for a, b in zip(moved.members, run.members)]:
        assert new is not old and next(new.parameters()).is_meta and not next(old.parameters()).is_meta
    assert [m.name for m in moved.members] == [m.name for m in run.members] and moved.classes == run.classes


def test_config_rejects_bad_options() -> None:
    for bad in ({"attacks": ("fgsm", "nope")}, {"eps": (0,)}, {"qualities": (101,)}, {"eot_samples": 0},
                {"bpda_backward": "exact"}, {"limit": -1}, {"split": "train"}, {"roi": "tight"}, {"device": "gpu"}):
        with pytest.raises(ConfigError):
            EvalConfig(**bad)


def test_cli_evaluate(world, tmp_path) -> None:
    out = tmp_path / "cli"
    args = ["evaluate", "--models", str(world["ens"]), "--data", str(world["data"]), "--attacks", "fgsm",
            "--eps", "8", "--qualities", "50", "--limit", "16", "--out", str(out), "--adaptive-attacks", "fgsm",
            "--eot-samples", "2", "--batch-size", "16", "--threads", "1", "--seed", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "gray-box fgsm_eps8" in result.output
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["seed"] == 3 and res["data"]["n"] == 16 and (out / "report.md").is_file()
    assert any(c["threat"] == "adaptive" and c["system"] == "slq_ensemble" for c in res["cells"])
    again = CliRunner().invoke(app, args + ["--resume"])
    assert again.exit_code == 0 and json.loads((out / "results.json").read_text())["cells"] == res["cells"]
    bad = CliRunner().invoke(app, ["evaluate", "--models", str(world["ens"]), "--attacks", "fgsm,zoo",
                                   "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "error:" in bad.output and "zoo" in bad.output
    assert math.isfinite(res["elapsed_s"])


def test_worst_case_over_attacks_is_the_per_image_and(world, tmp_path) -> None:
    from edge_guard.training.worstcase import unpack_bits

    config = EvalConfig(**{**SMALL, "attacks": ("fgsm", "pgd", "apgd-ce", "apgd-dlr"), "eps": (8,),
                           "adaptive_attacks": ("apgd-ce",), "apgd_steps": 3, "limit": 16})
    result = evaluate(world["ens"], tmp_path / "wc", config, progress=False)
    cells = {c["key"]: c for c in result.results["cells"]}
    rows = {(r["threat"], r["system"]): r for r in result.results["worst_case"]}
    row = rows[("graybox", "ensemble")]
    assert row["attacks"] == ["apgd-ce", "apgd-dlr", "fgsm", "pgd"] and row["eps"] == 8
    n = row["n"]
    expected = unpack_bits(cells["clean|none|-|ensemble"]["correct_bits"], n)
    for a in row["attacks"]:
        bits = unpack_bits(cells[f"graybox|{a}|8|ensemble"]["correct_bits"], n)
        assert row["accuracy"][a] == pytest.approx(cells[f"graybox|{a}|8|ensemble"]["accuracy"])
        expected &= bits
    assert row["robust_accuracy"] == pytest.approx(expected.mean())
    assert row["robust_accuracy"] <= min(row["accuracy"].values())
    assert rows[("adaptive", "ensemble")]["attacks"] == ["apgd-ce"]
    report = (tmp_path / "wc" / "report.md").read_text()
    assert "AutoAttack rule" in report and "APGD-DLR eps 8/255" in report
