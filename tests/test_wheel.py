"""The wheel carries the shipped bundles and profiles: built here, unpacked away from the source tree (which is
what installing a pure-Python wheel does), it classifies with the default bundle and loads a profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import json, numpy as np
import edge_guard
from edge_guard import Guard
from edge_guard.bundle import default_bundle_path
from edge_guard.profiles import load_profile
guard = Guard.from_bundle(threads=1)
pred = guard.classify(np.full((48, 48, 3), 128, np.uint8))[0]
print(json.dumps({"package": edge_guard.__file__, "bundle": str(default_bundle_path()), "name": guard.bundle.name,
                  "votes": len(pred.votes), "profile": load_profile("raspberry-pi-5").bundle_path().name}))
"""


def test_the_wheel_ships_the_default_bundle_and_the_profiles(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("edge_guard-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(site)
    for bundle in ("gtsrb-shield-r14", "gtsrb-shield", "gtsrb-shield-robust"):  # the default, compact and robust
        for part in ("manifest.json", "README.md", "fused.onnx"):
            assert f"edge_guard/bundles/{bundle}/{part}" in names
    assert "edge_guard/firmware_profiles/raspberry-pi-5.toml" in names
    for part in ("base.onnx", "demo_attack.npz"):  # the demo's undefended model and shipped attack
        assert f"edge_guard/bundles/gtsrb-undefended/{part}" in names
    env = {k: v for k, v in os.environ.items() if k != "EDGEGUARD_BUNDLE"}
    env["PYTHONPATH"] = str(site)  # ahead of the editable install: the unpacked wheel is what gets imported
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["package"].startswith(str(site)) and report["bundle"].startswith(str(site))
    assert report["name"] == "gtsrb-shield-r14" and report["votes"] == 4 and report["profile"] == "gtsrb-shield"
