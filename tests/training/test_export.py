"""edgeguard export: ONNX conversion + parity, fused and in-graph JPEG graphs, precision variants, CLI.

Everything runs on a tiny generated dataset (4 colour classes, 16x16 images written as PNG folders)
and small CNNs trained for a few dozen steps, so each export takes about a second with the
TorchScript exporter. One test runs the dynamo exporter (slower) to check the default path.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edge_guard import jpeg
from edge_guard.bundle import load_bundle
from edge_guard.cli import app
from edge_guard.errors import BundleError, ConfigError
from edge_guard.guard import Guard
from edge_guard.spec import MemberSpec, member_spec
from edge_guard.training.checkpoint import build_checkpoint, make_vaccination, save_checkpoint
from edge_guard.training.config import TrainConfig
from edge_guard.training.diffjpeg import DiffJPEG
from edge_guard.training.export import ExportOptions, export_run
from edge_guard.training.export.in_graph import jpeg_graph
from edge_guard.training.export.pipeline import resolve_defense
from edge_guard.training.models import create_model
from edge_guard.training.run import Run, RunMember
from tests.training.synthetic import fit_full_batch, tinted_squares

SIZE = 16
CLASSES = ("a_red", "b_green", "c_blue", "d_gray")
PER_CLASS = 30


def _tiny_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, len(CLASSES)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A PNG dataset on disk and trained tiny members (base, q40, q80, slq)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export_world")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEGUARD_CACHE_DIR", str(root / "cache"))  # load_dataset's cache stays in tmp
    rng = np.random.default_rng(0)
    data = root / "data"
    xs, ys = [], []
    for c, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True)
        imgs = tinted_squares(c, PER_CLASS, rng, SIZE, tint=110)
        for i, im in enumerate(imgs):
            cv2.imwrite(str(data / name / f"{i:03d}.png"), im[..., ::-1])
        xs.append(imgs)
        ys.append(np.full(PER_CLASS, c, np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    models = {
        "base": fit_full_batch(_tiny_net(0), x, y),
        "q40": fit_full_batch(_tiny_net(1), jpeg.roundtrip(x, 40), y),
        "q80": fit_full_batch(_tiny_net(2), jpeg.roundtrip(x, 80), y),
        "slq": fit_full_batch(_tiny_net(3), jpeg.slq(x, (40, 80), rng=0), y),
    }
    yield {"root": root, "data": data, "models": models, "x": x, "y": y}
    mp.undo()


def _run(world, members=("q40", "q80"), *, data=True, base=True) -> Run:
    spec = {"q40": ("jpeg", 40), "q80": ("jpeg", 80), "slq": ("slq", None), "base": ("none", None)}
    return Run(
        classes=CLASSES, input_size=(SIZE, SIZE),
        members=tuple(RunMember(MemberSpec(name=n, vaccination=spec[n][0], quality=spec[n][1]), world["models"][n])
                      for n in members),
        slq_qualities=(40, 80), base=world["models"]["base"] if base else None,
        config=TrainConfig(data=str(world["data"]), seed=0, val_fraction=0.3) if data else TrainConfig(),
    )


def _opts(out: Path, **kw) -> ExportOptions:
    return ExportOptions(out=out, exporter=kw.pop("exporter", "torchscript"), progress=False, **kw)


def _guard_ids(path: Path, images: np.ndarray, **kw) -> list[int]:
    guard = Guard.from_bundle(path, seed=0, warn_codec_mismatch=False, **kw)
    return [p.class_id for p in guard.classify(images)]


# ----------------------------------------------------------------------------- fp32 export


def test_fp32_bundle_passes_checker_parity_and_schema(world, tmp_path):
    res = export_run(_run(world), _opts(tmp_path / "b"))
    bundle = load_bundle(res.path)  # schema + hashes
    assert [m.name for m in bundle.members] == ["q40", "q80"]
    assert bundle.defense.kind == "jpeg" and bundle.defense.per_member and bundle.defense.qualities == (40, 80)
    metrics = bundle.metrics
    x = np.random.default_rng(5).random((5, 3, SIZE, SIZE), dtype=np.float32)
    for m in bundle.members:
        model = onnx.load(str(bundle.member_path(m)))
        onnx.checker.check_model(model, full_check=True)
        props = {p.key: p.value for p in model.metadata_props}
        assert json.loads(props["edgeguard.classes"]) == list(CLASSES)
        assert json.loads(props["edgeguard.defense"])["qualities"] == [40, 80]
        assert props["edgeguard.member"] == m.name
        assert {o.domain: o.version for o in model.opset_import}[""] == 18
        sess = ort.InferenceSession(str(bundle.member_path(m)), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["logits"]
        # our own parity check, on inputs the exporter never saw, batch sizes 5 and 1 (dynamic axis)
        with torch.no_grad():
            ref = world["models"][m.name](torch.from_numpy(x)).numpy()
        assert np.abs(sess.run(None, {"input": x})[0] - ref).max() <= 1e-4
        assert sess.run(None, {"input": x[:1]})[0].shape == (1, len(CLASSES))
        parity = metrics["parity"][m.name]
        assert parity["passed"] and parity["max_abs_diff"] <= 1e-4 and parity["argmax_agreement"] == 1.0
        assert parity["n_real"] == metrics["validation"]["n"] > 0 and parity["n_checked"] == 16 + parity["n_real"]
        assert metrics["exporter"][m.name] == "torchscript"
    assert 0.8 <= metrics["accuracy"] <= 1.0  # the tiny members learn these colour classes
    assert set(metrics["member_accuracy"]) == {"q40", "q80"}
    assert 0.0 <= metrics["fgsm"]["accuracy"] <= 1.0
    assert metrics["fgsm_setup"]["crafted_on"].startswith("base model") and metrics["fgsm_setup"]["eps_levels"] == 8.0
    prov = bundle.provenance
    assert prov.versions["torch"] == torch.__version__
    assert prov.versions["libjpeg-turbo"] == jpeg.codec_info()["version"]
    assert {"onnx", "onnxruntime", "edge_guard"} <= set(prov.versions)


def test_validation_split_is_the_runs_held_out_split(world, tmp_path):
    from edge_guard.training.data import load_dataset, split_by_track

    res = export_run(_run(world), _opts(tmp_path / "b", limit=10))
    _, val = split_by_track(load_dataset(world["data"], "train", SIZE), 0.3, 0)
    info = res.manifest.metrics["validation"]
    assert info["n"] == 10 and info["n_val_total"] == len(val) and info["seed"] == 0 and info["val_fraction"] == 0.3


def test_tampered_bundle_is_refused(world, tmp_path):
    res = export_run(_run(world), _opts(tmp_path / "b"))
    path = res.path / res.manifest.members[0].file
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(res.path)


def test_existing_output_needs_overwrite(world, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="--overwrite"):
        export_run(_run(world), _opts(out))
    assert (out / "keep.txt").exists()
    # --overwrite replaces the bundle's own files and keeps the rest (a README, notes)
    (out / "stale.onnx").write_bytes(b"old graph")
    res = export_run(_run(world), _opts(out, overwrite=True))
    assert (out / "keep.txt").read_text() == "x" and not (out / "stale.onnx").exists()
    assert any("keep.txt" in note for note in res.notes)
    load_bundle(out)


# ----------------------------------------------------------------------------- fused


@pytest.mark.parametrize("defense,members,shape", [
    ("per-member", ("q40", "q80", "slq"), 5),  # each member its own CPU preprocessing: [M,N,3,H,W]
    ("slq", ("q40", "slq"), 4),                # one shared SLQ draw: [N,3,H,W]
])
def test_fused_and_member_graphs_give_the_same_predictions(world, tmp_path, defense, members, shape):
    res = export_run(_run(world, members), _opts(tmp_path / "b", fused=True, defense=defense))
    bundle = load_bundle(res.path)
    assert bundle.fused is not None and res.manifest.metrics["fused_parity"]["argmax_agreement"] == 1.0
    fused = onnx.load(str(bundle.fused_path()))
    assert [o.name for o in fused.graph.output] == ["member_logits"]
    assert len(fused.graph.input[0].type.tensor_type.shape.dim) == shape
    images = world["x"][::3]
    assert _guard_ids(res.path, images, use_fused=True) == _guard_ids(res.path, images, use_fused=False)
    sess = ort.InferenceSession(str(bundle.fused_path()), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random(((len(members),) if shape == 5 else ()) + (3, 3, SIZE, SIZE), dtype=np.float32)
    assert sess.run(None, {"input": x})[0].shape == (len(members), 3, len(CLASSES))


# ----------------------------------------------------------------------------- in-graph JPEG


def test_in_graph_jpeg_agrees_with_the_cpu_codec(world, tmp_path):
    res = export_run(_run(world), _opts(tmp_path / "b", in_graph_jpeg=True, fused=True))
    bundle = load_bundle(res.path)
    assert bundle.defense.in_graph and bundle.fused is not None
    metrics = res.manifest.metrics
    assert all(v >= 0.9 for v in metrics["in_graph_jpeg_agreement"].values())
    # independent check: the raw-input member graph vs libjpeg-turbo round trip + the torch member
    images = world["x"]
    raw = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    for m in bundle.members:
        sess = ort.InferenceSession(str(bundle.member_path(m)), providers=["CPUExecutionProvider"])
        in_graph = sess.run(None, {"input": raw})[0].argmax(1)
        cpu = jpeg.roundtrip(images, m.quality).transpose(0, 3, 1, 2).astype(np.float32) / 255
        with torch.no_grad():
            ref = world["models"][m.name](torch.from_numpy(cpu)).numpy().argmax(1)
        assert np.mean(in_graph == ref) >= 0.9
    # the runtime feeds raw images (no CPU JPEG) and still classifies well
    guard = Guard.from_bundle(res.path, warn_codec_mismatch=False)
    assert not guard.cpu_defense
    assert np.mean(np.array([p.class_id for p in guard.classify(images)]) == world["y"]) >= 0.8


def test_jpeg_graph_is_close_to_libjpeg_turbo(world):
    images = world["x"][:40]
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    graph = jpeg_graph(40, "420", x[:4], x, exporter="torchscript")
    sess = ort.InferenceSession(graph.model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x})[0]
    levels = np.round(out * 255).transpose(0, 2, 3, 1)
    codec = jpeg.roundtrip(images, 40).astype(np.float32)
    assert np.abs(levels - codec).mean() < 1.0  # within a grey level on average (float DCT vs islow)
    assert np.mean(levels == codec) > 0.6
    with torch.no_grad():
        assert np.abs(DiffJPEG(40)(torch.from_numpy(x)).numpy() - out).mean() * 255 <= 1.0
    assert graph.mean_level_diff <= 1.0 and 0.9 <= graph.pixel_agreement <= 1.0


def test_in_graph_refuses_slq_members_and_shared_defenses(world, tmp_path):
    with pytest.raises(ConfigError, match="SLQ"):
        export_run(_run(world, ("q40", "slq")), _opts(tmp_path / "a", in_graph_jpeg=True))
    with pytest.raises(ConfigError, match="per-member"):
        export_run(_run(world), _opts(tmp_path / "b", in_graph_jpeg=True, defense="slq"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_resolve_defense(world):
    d = resolve_defense(_run(world, ("q40", "q80", "slq")), None, False)
    assert (d.kind, d.per_member, d.qualities) == ("jpeg", True, (40, 80))  # the SLQ set doubles as qualities
    assert resolve_defense(_run(world, ("slq",)), None, False).kind == "slq"
    assert resolve_defense(_run(world, ("base",)), None, False).kind == "none"
    odd = Run(CLASSES, (SIZE, SIZE), (RunMember(member_spec("jpeg", 60), world["models"]["q40"]),
                                            RunMember(member_spec("slq"), world["models"]["slq"])),
                    slq_qualities=(40, 80))
    with pytest.raises(ConfigError, match="SLQ set"):
        resolve_defense(odd, None, False)
    with pytest.raises(ConfigError, match="--defense"):
        resolve_defense(odd, "jpeg-ish", False)


# ----------------------------------------------------------------------------- precision variants


def test_int8_export_records_variant_numbers(world, tmp_path):
    res = export_run(_run(world), _opts(tmp_path / "b", precision="int8", fused=True))
    bundle = load_bundle(res.path)
    assert all(m.file.endswith(".int8.onnx") for m in bundle.members)
    ops = {n.op_type for n in onnx.load(str(bundle.member_path(bundle.members[0]))).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    metrics = bundle.metrics
    assert metrics["precision"] == "int8" and metrics["validation"]["n_calibration"] > 0
    for numbers in (metrics, metrics["fp32"]):
        assert 0.0 <= numbers["accuracy"] <= 1.0 and 0.0 <= numbers["fgsm"]["accuracy"] <= 1.0
    check = metrics["variant"]["accuracy_check"]
    assert check["passed"] and check["accuracy_drop_points"] == pytest.approx(
        100 * (metrics["fp32"]["accuracy"] - metrics["accuracy"]))
    assert metrics["variant"]["cpu_runnable"] is True
    assert set(metrics["variant"]["parity_vs_fp32"]) == {"q40", "q80"}
    # the first convolution (and what precedes it) stays float; the rest is int8
    float_nodes = metrics["variant"]["conversion"]["q40"]["float_nodes"]
    graph = onnx.load(str(bundle.member_path(bundle.members[0]))).graph
    first_conv = next(n for n in graph.node if n.op_type == "Conv")
    assert first_conv.name == float_nodes[-1] and not any(i.endswith("_DequantizeLinear_Output") for i in first_conv.input)
    assert sum(n.op_type == "Conv" for n in graph.node) == 2
    ids = _guard_ids(res.path, world["x"])
    assert np.mean(np.array(ids) == world["y"]) >= 0.8


def test_accuracy_drop_guard_and_force(world, tmp_path):
    # a negative limit means even an equal accuracy is "too large a drop": the guard must trigger
    with pytest.raises(BundleError, match=r"drop of -?\d+\.\d+ points > --max-accuracy-drop -1"):
        export_run(_run(world), _opts(tmp_path / "b", precision="int8", max_accuracy_drop=-1.0))
    assert not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".b.partial-*"))  # nothing half-written left behind
    res = export_run(_run(world), _opts(tmp_path / "b", precision="int8", max_accuracy_drop=-1.0, force=True))
    check = res.manifest.metrics["variant"]["accuracy_check"]
    assert check["passed"] is False and check["forced"] is True
    assert any("despite" in note for note in res.notes)
    load_bundle(res.path)


def test_fp16_runs_on_onnxruntime_cpu(world, tmp_path):
    res = export_run(_run(world, ("q40",)), _opts(tmp_path / "b", precision="fp16"))
    metrics = res.manifest.metrics
    assert metrics["variant"]["cpu_runnable"] is True
    model = onnx.load(str(res.path / res.manifest.members[0].file))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
    assert metrics["variant"]["parity_vs_fp32"]["q40"]["max_abs_diff"] < 0.05


def test_variants_need_data(world, tmp_path):
    with pytest.raises(ConfigError, match="calibrate"):
        export_run(_run(world, data=False), _opts(tmp_path / "b", precision="int8"))


# ----------------------------------------------------------------------------- exporter, no data


def test_dynamo_exporter_and_random_only_parity_without_data(world, tmp_path):
    res = export_run(_run(world, ("base",), data=False, base=False), _opts(tmp_path / "b", exporter="auto"))
    metrics = res.manifest.metrics
    assert metrics["exporter"]["base"] == "dynamo"
    assert metrics["validation"]["source"] is None and "random-input parity" in metrics["validation"]["note"]
    assert metrics["parity"]["base"]["n_real"] == 0 and metrics["parity"]["base"]["passed"]
    assert "accuracy" not in metrics
    assert res.manifest.defense.kind == "none"


def test_exporter_falls_back_to_torchscript_on_error_or_parity_failure(world, monkeypatch):
    from edge_guard.training.export import onnx_io

    model, impostor = world["models"]["q40"], world["models"]["q80"]
    real_export = onnx_io.export_graph
    x = np.random.default_rng(0).random((8, 3, SIZE, SIZE), dtype=np.float32)
    example = torch.from_numpy(x[:2])

    def dynamo_raises(module, example, *, output_name, dynamo):
        if dynamo:
            raise RuntimeError("unsupported op for the test")
        return real_export(module, example, output_name=output_name, dynamo=False)

    monkeypatch.setattr(onnx_io, "export_graph", dynamo_raises)
    conv = onnx_io.convert(model, example, x, None, exporter="auto")
    assert conv.exporter == "torchscript" and "unsupported op for the test" in conv.fallback_reason

    def dynamo_wrong_graph(module, example, *, output_name, dynamo):  # a graph that does not match the model
        return real_export(impostor if dynamo else module, example, output_name=output_name, dynamo=False)

    monkeypatch.setattr(onnx_io, "export_graph", dynamo_wrong_graph)
    conv = onnx_io.convert(model, example, x, None, exporter="auto")
    assert conv.exporter == "torchscript" and "failed parity" in conv.fallback_reason and conv.parity.passed
    with pytest.raises(BundleError, match="failed parity"):
        onnx_io.convert(model, example, x, None, exporter="dynamo")


# ----------------------------------------------------------------------------- CLI from checkpoints on disk


def _checkpoint(path: Path, seed: int, vaccination: dict, run_config: dict) -> None:
    torch.manual_seed(seed)
    kwargs = {"widths": [4, 8], "input_size": [SIZE, SIZE]}
    model = create_model("compact_cnn", len(CLASSES), **kwargs)
    save_checkpoint(build_checkpoint(model, model_name="compact_cnn", model_kwargs=kwargs, classes=list(CLASSES),
                                     input_size=(SIZE, SIZE), vaccination=vaccination, run_config=run_config,
                                     epoch=1, optimizer=None, metrics={}), path)


def test_cli_exports_an_ensemble_directory_and_a_single_run(world, tmp_path):
    codec = jpeg.codec_info()
    run_config = {"data": str(world["data"]), "seed": 0, "val_fraction": 0.3}
    ens = tmp_path / "shield"
    _checkpoint(ens / "base.pt", 0, make_vaccination("none", None, None, codec), run_config)
    for i, q in enumerate((40, 80)):
        _checkpoint(ens / f"q{q}" / "best.pt", i + 1, make_vaccination("jpeg", q, [q], codec), run_config)
    (ens / "ensemble.json").write_text(json.dumps({
        "classes": list(CLASSES), "input_size": [SIZE, SIZE], "subsampling": "420", "backend": codec["backend"],
        "codec_version": codec["version"], "slq_qualities": [40, 80], "base": "base.pt",
        "members": [{"name": f"q{q}", "checkpoint": f"q{q}/best.pt", "vaccination": "jpeg", "quality": q}
                    for q in (40, 80)]}))
    runner = CliRunner()
    out = tmp_path / "export" / "shield"
    result = runner.invoke(app, ["export", str(ens), "--out", str(out), "--exporter", "torchscript", "--limit", "20",
                                 "--fused", "--vote", "soft"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "clean accuracy" in result.output
    bundle = load_bundle(out)
    assert [m.name for m in bundle.members] == ["q40", "q80"] and bundle.vote == "soft" and bundle.fused is not None
    assert bundle.metrics["validation"]["from"] == "run config.json" and bundle.metrics["validation"]["n"] == 20
    assert bundle.provenance.command.startswith("edgeguard export ")
    assert "--fused" in bundle.provenance.command and "--vote soft" in bundle.provenance.command
    assert bundle.defense.codec.version == codec["version"]

    # a single run directory (best.pt) -> a 1-member bundle, data given explicitly
    single = tmp_path / "single"
    _checkpoint(single / "best.pt", 7, make_vaccination("jpeg", 60, [60], codec), {})
    result = runner.invoke(app, ["export", str(single), "--out", str(tmp_path / "one"), "--exporter", "torchscript",
                                 "--data", str(world["data"]), "--limit", "12", "--name", "solo"])
    assert result.exit_code == 0, result.output
    one = load_bundle(tmp_path / "one")
    assert one.name == "solo" and [(m.name, m.quality) for m in one.members] == [("q60", 60)]
    assert one.metrics["validation"]["from"] == "--data"
    assert [m.name for m in Run.open(single / "best.pt").members] == ["q60"]  # a checkpoint file works too

    # bad input: one clear line, exit code 2, no traceback
    result = runner.invoke(app, ["export", str(single), "--out", str(tmp_path / "bad"), "--precision", "int4"])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "ensemble.json" in result.output
