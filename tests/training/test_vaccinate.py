from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edge_guard import jpeg
from edge_guard.cli import app
from edge_guard.errors import ConfigError
from edge_guard.spec import member_spec
from edge_guard.training.adversarial import AdversarialConfig
from edge_guard.training.checkpoint import load_checkpoint
from edge_guard.training.config import TrainConfig
from edge_guard.training.data import Dataset, split_by_track
from edge_guard.training.predict import accuracy, robustness_views
from edge_guard.training.train import TrainResult, train
from edge_guard.training.transforms import jpeg_augment_transform, mixed_transform
from edge_guard.training.vaccinate import VaccinateResult, _transform, ensemble_metrics, majority_vote, vaccinate
from tests.training.synthetic import make_dataset, write_gtsrb

torch.set_num_threads(1)
Q = 10  # low quality: JPEG visibly changes the 32x32 shapes, so vaccination has something to fix


@pytest.fixture(scope="module")
def data() -> Dataset:
    return make_dataset(n_per_class=40, seed=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, data: Dataset) -> TrainResult:
    out = tmp_path_factory.mktemp("vacc") / "base"
    cfg = TrainConfig(epochs=6, batch_size=8, lr=3e-3, augment=False, num_threads=1, out_dir=str(out),
                      eval_qualities=(Q, 50), slq_qualities=(20, 40, 60, 80))
    return train(cfg, data, progress=False)


@pytest.fixture(scope="module")
def ensemble(base: TrainResult, data: Dataset) -> VaccinateResult:
    return vaccinate(base.best_checkpoint, dataset=data, qualities=(Q,), slq=True, epochs=3, lr=1e-3,
                     num_threads=1, out_dir=base.out_dir.parent / "ens", progress=False)


def test_vaccinated_member_beats_base_on_jpeg_inputs(base: TrainResult, ensemble: VaccinateResult,
                                                     data: Dataset, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    test = make_dataset(n_per_class=100, seed=99)  # held out: 400 images never seen in training
    compressed = jpeg.roundtrip(test.images, Q)
    base_model, _ = load_checkpoint(base.best_checkpoint)
    member, _ = load_checkpoint(ensemble.members[f"q{Q}"].best_checkpoint)
    base_acc, member_acc = accuracy(base_model, compressed, test.labels), accuracy(member, compressed, test.labels)
    assert base_acc < accuracy(base_model, test.images, test.labels) - 0.1  # q10 hurts the clean-trained base
    assert member_acc >= base_acc + 0.05, (member_acc, base_acc)  # seed 0: 0.78 vs 0.60
    # control: the same fine-tuning without the JPEG step helps less (seed 0: 0.71)
    monkeypatch.setattr("edge_guard.training.vaccinate._transform", lambda spec, cfg, model, adv: lambda x, rng: x)
    control = vaccinate(base.best_checkpoint, dataset=data, qualities=(Q,), slq=False, epochs=3, lr=1e-3,
                        num_threads=1, out_dir=tmp_path / "control", progress=False)
    control_model, _ = load_checkpoint(control.members[f"q{Q}"].best_checkpoint)
    control_acc = accuracy(control_model, compressed, test.labels)
    assert member_acc > control_acc, (member_acc, control_acc)
    # the recorded metrics are the measured ones
    _, val = split_by_track(data, 0.2, 0)
    own = accuracy(member, jpeg.roundtrip(val.images, Q), val.labels)
    assert ensemble.metrics["members"][f"q{Q}"]["val_accuracy"] == pytest.approx(own, abs=1e-4)


def test_jpeg_augmented_base_is_better_on_jpeg_inputs(base: TrainResult, data: Dataset, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=6, batch_size=8, lr=3e-3, augment=False, num_threads=1, out_dir=str(tmp_path / "jb"),
                      eval_qualities=(Q, 50), slq_qualities=(20, 40, 60, 80), jpeg_augment=(Q,), jpeg_p=0.5)
    augmented = train(cfg, data, progress=False)
    assert json.loads((tmp_path / "jb" / "config.json").read_text())["jpeg_augment"] == [Q]
    test = make_dataset(n_per_class=100, seed=99)
    compressed = jpeg.roundtrip(test.images, Q)
    plain_model, _ = load_checkpoint(base.best_checkpoint)
    augmented_model, _ = load_checkpoint(augmented.best_checkpoint)
    plain_acc = accuracy(plain_model, compressed, test.labels)
    augmented_acc = accuracy(augmented_model, compressed, test.labels)
    assert augmented_acc >= plain_acc + 0.05, (augmented_acc, plain_acc)  # seed 0: 0.71 vs 0.60
    # members fine-tuned from it do not inherit the augmentation: their JPEG step is their own
    members = vaccinate(augmented.best_checkpoint, dataset=data, qualities=(50,), slq=False, epochs=1,
                        num_threads=1, out_dir=tmp_path / "ens", eval_qualities=(), progress=False)
    member_cfg = json.loads((tmp_path / "ens" / "q50" / "config.json").read_text())
    assert member_cfg["jpeg_augment"] == [] and member_cfg["eval_qualities"] == []
    member_metrics = json.loads((tmp_path / "ens" / "q50" / "metrics.json").read_text())
    assert member_metrics["jpeg"] == {} and member_metrics["val_preprocessing"] == "jpeg_50"
    assert member_metrics["val_accuracy"] == members.metrics["members"]["q50"]["val_accuracy"]


def test_jpeg_augment_transform_mixes_runtime_jpeg_and_clean() -> None:
    x = make_dataset(n_per_class=50).images  # 200 images
    np.testing.assert_array_equal(jpeg_augment_transform((30,), 1.0)(x, np.random.default_rng(0)),
                                  jpeg.roundtrip(x, 30))
    np.testing.assert_array_equal(jpeg_augment_transform((30,), 0.0)(x, np.random.default_rng(0)), x)
    out = jpeg_augment_transform((20, 90), 0.5)(x, np.random.default_rng(1))
    refs = (("clean", x), ("q20", jpeg.roundtrip(x, 20)), ("q90", jpeg.roundtrip(x, 90)))
    kinds = [next((name for name, ref in refs if np.array_equal(out[i], ref[i])), "other") for i in range(len(x))]
    counts = {k: kinds.count(k) for k in ("clean", "q20", "q90", "other")}
    assert counts["other"] == 0 and 70 < counts["clean"] < 130 and counts["q20"] > 25 and counts["q90"] > 25, counts
    with pytest.raises(ConfigError, match="jpeg_p"):
        TrainConfig(jpeg_augment=(40,), jpeg_p=1.5)
    with pytest.raises(ConfigError, match="jpeg_augment"):
        TrainConfig(jpeg_augment=(0,))


def test_ensemble_folder_follows_the_contract(ensemble: VaccinateResult, base: TrainResult) -> None:
    out = ensemble.out_dir
    spec = json.loads((out / "ensemble.json").read_text())
    codec = jpeg.codec_info()
    assert spec["classes"] == ["circle", "square", "triangle", "cross"] and spec["input_size"] == [32, 32]
    assert (spec["subsampling"], spec["backend"], spec["codec_version"]) == ("420", codec["backend"], codec["version"])
    assert spec["slq_qualities"] == [20, 40, 60, 80] and spec["base"] == "base.pt" and (out / "base.pt").is_file()
    assert spec["shared_epochs"] == 0 and not (out / "shared.pt").exists()
    assert spec["members"] == [
        {"name": "q10", "checkpoint": "q10/best.pt", "vaccination": "jpeg", "quality": 10},
        {"name": "slq", "checkpoint": "slq/best.pt", "vaccination": "slq", "quality": None},
    ]
    for member in spec["members"]:
        for name in ("best.pt", "config.json", "metrics.json", "train.log"):
            assert (out / member["name"] / name).is_file()
        _, ckpt = load_checkpoint(out / member["checkpoint"])
        vacc = ckpt["vaccination"]
        assert (vacc["kind"], vacc["quality"], vacc["subsampling"]) == (member["vaccination"], member["quality"], "420")
        assert vacc["qualities"] == ([10] if member["quality"] else [20, 40, 60, 80])
    slq_metrics = json.loads((out / "slq" / "metrics.json").read_text())
    assert slq_metrics["val_preprocessing"] == "slq" and set(slq_metrics["jpeg"]) == {"10", "50"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["members"]) == {"q10", "slq"} and metrics["ensemble"]["vote"] == "majority"
    assert 0.5 < metrics["ensemble"]["per_member"] <= 1 and 0.5 < metrics["ensemble"]["slq"] <= 1


def test_ensemble_metrics_reuse_the_members_final_logits(ensemble: VaccinateResult, base: TrainResult,
                                                          data: Dataset) -> None:
    assert {"jpeg_10", "slq"} <= set(ensemble.members["q10"].val_logits)
    # reloading every member and predicting again gives the same report
    _, val = split_by_track(data, 0.2, 0)
    views = robustness_views(val.images, TrainConfig(eval_qualities=(Q,), slq_qualities=(20, 40, 60, 80)))
    reloaded = {name: dataclasses.replace(member, val_logits={}) for name, member in ensemble.members.items()}
    base_model, _ = load_checkpoint(base.best_checkpoint)
    specs = [member_spec("jpeg", Q), member_spec("slq")]
    assert ensemble_metrics(reloaded, specs, base_model, views, val.labels, TrainConfig()) == ensemble.metrics


def test_majority_vote_counts_votes_and_breaks_ties_by_probability() -> None:
    a = np.array([[5.0, 0, 0], [0, 5.0, 0]])
    b = np.array([[4.0, 0, 0], [0, 0, 1.0]])
    c = np.array([[0, 9.0, 0], [0, 0, 9.0]])
    # image 0: class 0 has 2 votes although class 1 has the single most confident vote
    # image 1: one vote each for classes 1, 2, 2 -> class 2
    assert majority_vote([a, b, c]).tolist() == [0, 2]
    # a 1-1 tie goes to the class with the larger summed probability
    assert majority_vote([np.array([[3.0, 0.0]]), np.array([[0.0, 1.0]])]).tolist() == [0]


def test_training_transforms_use_the_runtime_codec() -> None:
    cfg = TrainConfig()
    x = make_dataset(n_per_class=2).images
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(_transform(member_spec("jpeg", 30), cfg, None, None)(x, rng), jpeg.roundtrip(x, 30, subsampling="420"))
    slq = _transform(member_spec("slq"), cfg, None, None)
    first, second = slq(x, np.random.default_rng(5)), slq(x, np.random.default_rng(5))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, jpeg.slq(x, (20, 40, 60, 80), rng=np.random.default_rng(5)))
    assert not np.array_equal(first, slq(x, np.random.default_rng(6)))  # fresh draw per batch


def test_dataset_must_match_the_base(base: TrainResult, tmp_path: Path) -> None:
    other = make_dataset(n_per_class=10, n_classes=3)
    with pytest.raises(ConfigError, match="classes"):
        vaccinate(base.best_checkpoint, dataset=other, qualities=(50,), slq=False, out_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="at least one"):
        vaccinate(base.best_checkpoint, dataset=other, qualities=(), slq=False, out_dir=tmp_path, progress=False)


def test_cli_vaccinate(base: TrainResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEGUARD_CACHE_DIR", str(tmp_path / "cache"))
    write_gtsrb(tmp_path / "g", n_classes=4, tracks=3, per_track=4)  # same class names as the base
    out = tmp_path / "ens"
    result = CliRunner().invoke(app, ["vaccinate", "--base", str(base.best_checkpoint), "--data", str(tmp_path / "g"),
                                      "--qualities", "50", "--no-slq", "--epochs", "2", "--val-every", "2",
                                      "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "q50" in result.output and "ensemble majority vote" in result.output
    member = json.loads((out / "q50" / "metrics.json").read_text())
    assert set(member["jpeg"]) == {"10", "50"}  # the base's grid
    assert [h["val_accuracy"] is None for h in member["history"]] == [True, False]  # --val-every 2
    assert [m["name"] for m in json.loads((out / "ensemble.json").read_text())["members"]] == ["q50"]
    bad = CliRunner().invoke(app, ["vaccinate", "--base", str(tmp_path / "none.pt")])
    assert bad.exit_code == 2 and "none.pt" in bad.output
    bad = CliRunner().invoke(app, ["vaccinate", "--base", str(base.best_checkpoint), "--data", str(tmp_path / "g"),
                                   "--epochs", "2", "--shared-epochs", "2", "--out", str(tmp_path / "e2")])
    assert bad.exit_code == 2 and "--shared-epochs" in bad.output and "0..1" in bad.output


def test_mixed_transform_gives_each_image_one_members_preprocessing() -> None:
    x = make_dataset(n_per_class=10, seed=3).images
    steps = [lambda b, rng: jpeg.roundtrip(b, 10), lambda b, rng: jpeg.roundtrip(b, 90), lambda b, rng: b]
    out = mixed_transform(steps)(x, np.random.default_rng(0))
    options = [jpeg.roundtrip(x, 10), jpeg.roundtrip(x, 90), x]
    which = np.array([[np.array_equal(out[i], o[i]) for o in options] for i in range(len(x))])
    assert which.any(1).all() and which.any(0).all()  # every image is one of them; every step is used
    np.testing.assert_array_equal(out, mixed_transform(steps)(x, np.random.default_rng(0)))  # seeded


def test_shared_epochs_train_once_then_each_member_alone(base: TrainResult, data: Dataset, tmp_path: Path) -> None:
    kw = dict(dataset=data, qualities=(Q, 50), slq=True, epochs=2, lr=1e-3, num_threads=1, progress=False)
    with pytest.raises(ConfigError, match="fewer than --epochs"):
        vaccinate(base.best_checkpoint, **{**kw, "epochs": 1}, shared_epochs=1, out_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="adversarial"):
        vaccinate(base.best_checkpoint, **kw, shared_epochs=1, adversarial=AdversarialConfig(eps=4 / 255),
                  out_dir=tmp_path / "x")
    said: list[str] = []
    result = vaccinate(base.best_checkpoint, **kw, shared_epochs=1, out_dir=tmp_path / "s", echo=said.append)
    assert json.loads(result.ensemble_json.read_text())["shared_epochs"] == 1
    assert any(line.startswith("shared start: epochs 1..1 of 2") for line in said)
    shared = torch.load(tmp_path / "s" / "shared.pt", weights_only=True)["model"]
    base_weights = torch.load(base.best_checkpoint, weights_only=True)["model"]
    assert not torch.equal(shared["fc.weight"], base_weights["fc.weight"])  # the shared epoch trained
    finals = []
    for name, member in result.members.items():
        assert [h["epoch"] for h in member.metrics["history"]] == [2], name  # only its own epoch
        finals.append(torch.load(member.last_checkpoint, weights_only=True)["model"]["fc.weight"])
        # one epoch at lr 1e-3 from the shared weights: closer to them than to the base
        assert (finals[-1] - shared["fc.weight"]).norm() < (finals[-1] - base_weights["fc.weight"]).norm(), name
    assert not torch.equal(finals[0], finals[1]) and not torch.equal(finals[1], finals[2])
    # --resume reuses the shared start instead of training it again
    said.clear()
    vaccinate(base.best_checkpoint, **kw, shared_epochs=1, out_dir=tmp_path / "s", resume=True, echo=said.append)
    assert any(line.startswith("shared start: reusing") for line in said)
    (tmp_path / "s" / "shared.pt").write_bytes(b"truncated")  # an unreadable one is trained again, not trusted
    said.clear()
    vaccinate(base.best_checkpoint, **kw, shared_epochs=1, out_dir=tmp_path / "s", resume=True, echo=said.append)
    assert any("cannot read" in line for line in said) and any("epochs 1..1 of 2" in line for line in said)
