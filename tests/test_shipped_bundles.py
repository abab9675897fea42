"""The shipped bundles classify fixed inputs exactly as recorded (tests/data/shipped_predictions.json).

Guards every refactoring of the runtime path (crop, resize, defense, tensor conversion, engine, vote):
class ids and member votes must match exactly, confidences to 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_guard import Guard, jpeg
from tests.golden_inputs import BUNDLES, predictions

ROOT = Path(__file__).resolve().parent.parent
RECORDED = json.loads((Path(__file__).parent / "data" / "shipped_predictions.json").read_text())


@pytest.mark.parametrize("backend", ["opencv", "turbojpeg"])
@pytest.mark.parametrize("fused", [False, True], ids=["members", "fused"])
@pytest.mark.parametrize("name", BUNDLES)
def test_shipped_bundle_predictions_unchanged(name: str, fused: bool, backend: str) -> None:
    if backend not in jpeg.available_backends():
        pytest.skip("libturbojpeg is not installed on this machine (make setup installs it)")
    guard = Guard.from_bundle(ROOT / "export" / name, seed=0, backend=backend, use_fused=fused, threads=1,
                              warn_codec_mismatch=False)
    got = predictions(guard)
    want = RECORDED[f"{name}/{backend}/{'fused' if fused else 'members'}"]
    assert [p["class_id"] for p in got] == [p["class_id"] for p in want]
    assert [p["votes"] for p in got] == [p["votes"] for p in want]
    assert [p["confidence"] for p in got] == pytest.approx([p["confidence"] for p in want], abs=1e-5)
