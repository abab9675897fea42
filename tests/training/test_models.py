from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_guard.errors import ConfigError
from edge_guard.training.checkpoint import build_checkpoint, load_checkpoint, make_vaccination, save_checkpoint
from edge_guard.training.models import count_parameters, create_model, list_models, register_model

torch.set_num_threads(1)
CODEC = {"backend": "turbojpeg", "version": "2.1.5"}


def test_registry_lists_and_rejects() -> None:
    assert {"compact_cnn", "resnet14", "resnet_small"} <= set(list_models())
    with pytest.raises(ConfigError, match="compact_cnn"):
        create_model("no_such_net", 10)
    with pytest.raises(ConfigError, match="already registered"):
        register_model("compact_cnn")(lambda n: torch.nn.Linear(1, n))
    with pytest.raises(ConfigError, match="bad options"):
        create_model("compact_cnn", 10, no_such_option=1)
    with pytest.raises(ConfigError, match="depth"):
        create_model("resnet_small", 10, depth=21)
    # resnet14 is ResNet-14: 2 residual blocks per stage where resnet_small (ResNet-20) has 3
    assert len(create_model("resnet14", 10).blocks) == 6 and len(create_model("resnet_small", 10).blocks) == 9


@pytest.mark.parametrize("name", ["compact_cnn", "resnet14", "resnet_small"])
def test_output_shape_and_size(name: str) -> None:
    model = create_model(name, 43).eval()
    out = model(torch.rand(5, 3, 32, 32))
    assert out.shape == (5, 43) and out.dtype == torch.float32
    assert 100_000 <= count_parameters(model) <= 300_000  # Raspberry-Pi-class budget


@pytest.mark.parametrize("name", ["compact_cnn", "resnet14", "resnet_small"])
def test_normalization_is_inside_the_model(name: str) -> None:
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.1)
    torch.manual_seed(0)
    model = create_model(name, 7, mean=mean, std=std).eval()
    plain = create_model(name, 7, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    plain.load_state_dict(state, strict=False)
    assert model.state_dict()["normalize.mean"].flatten().tolist() == pytest.approx(mean)
    x = torch.rand(2, 3, 32, 32)
    normalized = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), plain(normalized))


@pytest.mark.parametrize("name", ["compact_cnn", "resnet14", "resnet_small"])
def test_exports_to_onnx_with_same_logits(name: str, tmp_path: Path) -> None:
    import onnxruntime as ort  # a runtime dependency, always installed
    model = create_model(name, 5, mean=(0.3, 0.3, 0.3), std=(0.2, 0.2, 0.2)).eval()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(2, 3, 32, 32),), str(path), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    (logits,) = session.run(None, {"input": x})
    np.testing.assert_allclose(logits, model(torch.from_numpy(x)).detach().numpy(), atol=1e-4)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = create_model("compact_cnn", 4, widths=(8, 16, 32), mean=(0.1, 0.2, 0.3)).eval()
    kwargs = {"widths": [8, 16, 32], "mean": [0.1, 0.2, 0.3]}
    vacc = make_vaccination("jpeg", 40, [40], CODEC)
    ckpt = build_checkpoint(model, model_name="compact_cnn", model_kwargs=kwargs, classes=list("abcd"),
                            input_size=(32, 32), vaccination=vacc, run_config={"epochs": 1}, epoch=3,
                            optimizer=None, metrics={"val_accuracy": 0.5})
    path = save_checkpoint(ckpt, tmp_path / "x" / "best.pt")
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    assert meta["classes"] == list("abcd") and meta["input_size"] == [32, 32] and meta["epoch"] == 3
    assert meta["vaccination"] == {"kind": "jpeg", "quality": 40, "qualities": [40], "subsampling": "420",
                                   "backend": "turbojpeg", "codec_version": "2.1.5", "adversarial": None}


def test_bad_checkpoints_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="existing .pt"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(ConfigError, match="missing"):
        load_checkpoint(tmp_path / "partial.pt")
    with pytest.raises(ConfigError, match="vaccination kind"):
        make_vaccination("vodka", None, None, CODEC)
