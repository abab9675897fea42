"""Run.open: ensemble.json is a declarative schema (errors by key path), and the run config is typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_guard.errors import ConfigError
from edge_guard.spec import Vaccination
from edge_guard.training.checkpoint import build_checkpoint, make_vaccination, save_checkpoint
from edge_guard.training.models import create_model
from edge_guard.training.run import Run, train_config

CODEC = {"backend": "opencv", "version": "3.0.0"}


def _ensemble(root: Path, **changes) -> Path:
    model = create_model("compact_cnn", 2, widths=[4, 8, 8], input_size=[16, 16])
    for name, kind, q in (("base", "none", None), ("q40", "jpeg", 40)):
        save_checkpoint(build_checkpoint(model, model_name="compact_cnn",
                                         model_kwargs={"widths": [4, 8, 8], "input_size": [16, 16]},
                                         classes=["a", "b"], input_size=(16, 16),
                                         vaccination=make_vaccination(kind, q, [q] if q else None, CODEC),
                                         run_config={"data": "d", "seed": 3, "val_fraction": 0.25, "limit": 40,
                                                     "resolved": {"torch": "x"}},
                                         epoch=1, optimizer=None, metrics={}), root / name / "best.pt")
    spec = {"classes": ["a", "b"], "input_size": [16, 16], "backend": "opencv", "codec_version": "3.0.0",
            "base": "base/best.pt", "members": [{"name": "q40", "checkpoint": "q40/best.pt", "vaccination": "jpeg",
                                                 "quality": 40}], **changes}
    (root / "ensemble.json").write_text(json.dumps(spec))
    return root


def test_open_an_ensemble_gives_typed_members_codec_and_config(tmp_path):
    run = Run.open(_ensemble(tmp_path))
    assert run.kind == "ensemble" and run.base is not None and run.classes == ("a", "b")
    assert [(m.name, m.vaccination, m.quality) for m in run.members] == [("q40", Vaccination.JPEG, 40)]
    assert run.vaccinating_codec().to_dict() == {"backend": "opencv", "version": "3.0.0"}
    # the checkpoint's run config, typed (its "resolved" record left out); it reproduces the split
    assert (run.config.data, run.config.seed, run.config.val_fraction, run.config.limit) == ("d", 3, 0.25, 40)


@pytest.mark.parametrize("changes, match", [
    ({"input_sise": [16, 16]}, r"ensemble\.json\.input_sise: unknown key.*Did you mean 'input_size'"),
    ({"members": [{"name": "q40", "checkpoint": "q40/best.pt", "vaccination": "jpg", "quality": 40}]},
     r"ensemble\.json\.members\[0\]\.vaccination: expected one of 'none', 'jpeg', 'slq', got 'jpg'.*'jpeg'"),
    ({"members": []}, r"ensemble\.json\.members: expected a non-empty list, got \[\]"),
    ({"slq_qualities": [20, 400]}, r"ensemble\.json\.slq_qualities\[1\]: expected an integer in 1\.\.100, got 400"),
])
def test_a_malformed_ensemble_json_names_the_key(tmp_path, changes, match):
    with pytest.raises(ConfigError, match=match):
        Run.open(_ensemble(tmp_path, **changes))


def test_train_config_from_json_takes_lists_back_to_tuples_and_checks_values():
    config = train_config({"low_res": [[16, 2], [24, 2]], "epochs": 6, "eval_qualities": [], "resolved": {}})
    assert config.low_res == ((16, 2), (24, 2)) and config.eval_qualities == ()
    with pytest.raises(ConfigError, match="epochs"):
        train_config({"epochs": 0})
    with pytest.raises(ConfigError, match=r"^runs/x/config\.json\.low_res\[0\]: expected a list of 2 values, "
                                          r"got 1 value\."):
        train_config({"low_res": [[16]], "epochs": 6}, "runs/x/config.json")
    with pytest.raises(ConfigError, match=r"^run config\.epochs: expected an integer, got '3' \(str\)"):
        train_config({"epochs": "3"})

