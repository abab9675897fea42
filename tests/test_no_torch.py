"""The runtime half never imports torch: checked in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
import numpy as np
import importlib, pkgutil
import edge_guard
def import_all(package):  # every runtime module, new ones too (walk_packages would import training)
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name != "edge_guard.training":
            module = importlib.import_module(info.name)
            if info.ispkg:
                import_all(module)
import_all(edge_guard)
from edge_guard import Guard
from tests.onnx_fixtures import defense_dict, make_bundle, solid

root = make_bundle(Path(tempfile.mkdtemp()) / "b", [
    {"name": "q20", "vaccination": "jpeg", "quality": 20},
    {"name": "q60", "vaccination": "jpeg", "quality": 60},
    {"name": "slq", "vaccination": "slq", "quality": None},
], defense=defense_dict("jpeg", [20, 60], per_member=True), fused=True)
guard = Guard.from_bundle(root, seed=0, threads=1)
preds = guard.classify([solid((200, 30, 30)), solid((30, 30, 200))])
print(json.dumps({"classes": [p.class_name for p in preds],
                  "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}))
"""


def test_runtime_classifies_without_importing_torch():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["classes"] == ["red", "blue"]
    assert report["torch"] == []
