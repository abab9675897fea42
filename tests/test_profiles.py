"""Firmware profiles: the shipped files validate, errors name the key, and infer/bench apply them (flags win)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from edge_guard.cli import app
from edge_guard.errors import ConfigError
from edge_guard.profiles import list_profiles, load_profile
from tests.onnx_fixtures import make_bundle, solid


def test_the_shipped_profiles_validate():
    names = list_profiles()
    assert {"x86-cpu", "raspberry-pi-5", "jetson-orin-nano", "jetson-agx-orin"} <= set(names)
    nano = load_profile("jetson-orin-nano")
    assert nano.provider_names() == ["tensorrt", "cuda"] and not nano.allow_fallback
    assert nano.provider_options()["tensorrt"]["trt_engine_cache_enable"] is True
    assert load_profile("raspberry-pi-5").bundle == "gtsrb-shield"  # the compact bundle for Pi-class CPUs


@pytest.mark.parametrize("text, match", [
    ('name = "b"\nprovidres = []\n', r"b\.toml\.providres: unknown key.*Did you mean 'providers'"),
    ('name = "b"\n[camera]\nfsp = 30\n', r"b\.toml\.camera\.fsp: unknown key.*Did you mean 'fps'"),
    ('name = "b"\nthreads = "four"\n', r"b\.toml\.threads: expected an integer.*got 'four' \(str\)"),
    ('name = "b"\nbatch = 0\n', r"b\.toml\.batch: expected an integer >= 1, got 0"),
    ('name = "b"\n[[providers]]\nname = "cdua"\n', r"b\.toml\.providers\[0\]\.name: .*Did you mean 'cuda'"),
    ('name = "b"\ndefense = "gpu"\n', r"b\.toml\.defense: expected one of 'cpu', 'in-graph', got 'gpu'"),
    ('name = "b"\nbatch = \n', r"b\.toml: expected valid TOML"),
])
def test_a_bad_profile_is_one_clear_error(tmp_path, text, match):
    path = tmp_path / "b.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_profile(path)
    result = CliRunner().invoke(app, ["profiles", "validate", str(path)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_an_unknown_profile_name_suggests_the_nearest():
    with pytest.raises(ConfigError, match="Did you mean 'raspberry-pi-5'"):
        load_profile("raspbery-pi-5")


def test_profiles_list_and_show():
    listed = CliRunner().invoke(app, ["profiles", "list"])
    assert listed.exit_code == 0 and "jetson-orin-nano" in listed.output and "tensorrt,cuda" in listed.output
    shown = json.loads(CliRunner().invoke(app, ["profiles", "show", "x86-cpu"]).output)
    assert shown["name"] == "x86-cpu" and shown["providers"] == [{"name": "cpu", "options": {}}]


def _profile(tmp_path, bundle, **extra) -> str:
    lines = ['name = "test-board"', f'bundle = "{bundle}"', "threads = 1", "batch = 2"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    lines += ["[regions]", "rois = [[0, 0, 16, 16]]"]
    path = tmp_path / "board.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_infer_takes_the_profile_and_a_flag_wins_over_it(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    image = tmp_path / "two.png"
    cv2.imwrite(str(image), np.ascontiguousarray(np.concatenate([solid((220, 20, 20)), solid((20, 20, 220))],
                                                                 axis=1)[..., ::-1]))
    profile = _profile(tmp_path, bundle)
    used = CliRunner().invoke(app, ["infer", str(image), "--profile", profile])
    assert used.exit_code == 0, used.output
    assert json.loads(used.stdout)["regions"][0]["box"] == [0, 0, 16, 16]  # the profile's region
    won = CliRunner().invoke(app, ["infer", str(image), "--profile", profile, "--roi", "16,0,32,16"])
    assert json.loads(won.stdout)["regions"][0]["class_name"] == "blue"
    assert "profile test-board: --roi ['16,0,32,16'] from the command line overrides" in won.stderr


def test_bench_checks_the_profile_latency_budget(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    fast = CliRunner().invoke(app, ["bench", "--profile", _profile(tmp_path, bundle, latency_budget_ms=10000.0),
                                    "--frames", "3", "--warmup", "0", "--synthetic", "96x64"])
    assert fast.exit_code == 0 and "latency budget: p99 per frame" in fast.output and "PASS" in fast.output
    slow = CliRunner().invoke(app, ["bench", "--profile", _profile(tmp_path, bundle, latency_budget_ms=0.0001),
                                    "--frames", "3", "--warmup", "0", "--synthetic", "96x64"])
    assert slow.exit_code == 1 and "FAIL" in slow.output


def test_a_gpu_profile_passes_its_provider_options_and_refuses_to_fall_back(tmp_path, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    seen = {}
    real = ort.InferenceSession

    def session(model, sess_options=None, providers=None, provider_options=None):
        seen.update(providers=providers, options=provider_options)
        return real(model, sess_options=sess_options, providers=["CPUExecutionProvider"])  # the GPU "fails"

    monkeypatch.setattr(ort, "InferenceSession", session)
    bundle = make_bundle(tmp_path / "bundle")
    text = (f'name = "gpu"\nbundle = "{bundle}"\n[[providers]]\nname = "tensorrt"\n'
            'options = { trt_fp16_enable = true, trt_engine_cache_path = "/tmp/trt" }\n[[providers]]\nname = "cuda"\n')
    (tmp_path / "gpu.toml").write_text(text)
    result = CliRunner().invoke(app, ["bench", "--profile", str(tmp_path / "gpu.toml"), "--frames", "1"])
    assert result.exit_code == 2 and "TensorrtExecutionProvider" in result.stderr  # no silent CPU fallback
    assert seen["providers"] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert seen["options"][0] == {"trt_fp16_enable": "True", "trt_engine_cache_path": "/tmp/trt"}


def test_a_profile_with_trusted_keys_refuses_an_unsigned_bundle(tmp_path):
    from edge_guard.signing import generate_keys, sign_bundle

    bundle = make_bundle(tmp_path / "bundle")
    keys = generate_keys(tmp_path / "keys")
    path = tmp_path / "signed.toml"
    path.write_text(f'name = "signed"\nbundle = "{bundle}"\ntrusted_keys = ["keys/edgeguard.pub"]\n')
    assert load_profile(path).trusted_keys == (str(tmp_path / "keys" / "edgeguard.pub"),)  # relative to the file
    args = ["bench", "--profile", str(path), "--frames", "1", "--warmup", "0", "--synthetic", "96x64"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "expected a signed bundle" in refused.stderr
    sign_bundle(bundle, keys.private)
    assert CliRunner().invoke(app, args).exit_code == 0


def test_a_profile_expecting_in_graph_jpeg_refuses_a_cpu_defense_bundle(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    image = tmp_path / "red.png"
    cv2.imwrite(str(image), np.ascontiguousarray(solid((220, 20, 20))[..., ::-1]))
    path = tmp_path / "gpu.toml"
    path.write_text(f'name = "in-graph-board"\nbundle = "{bundle}"\ndefense = "in-graph"\n')
    result = CliRunner().invoke(app, ["infer", str(image), "--profile", str(path)])
    assert result.exit_code == 2 and "--in-graph-jpeg" in result.stderr
