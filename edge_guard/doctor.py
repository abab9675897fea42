"""`edgeguard doctor`: what this machine can run (versions, JPEG backend, onnxruntime providers)."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from edge_guard import __version__


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_report(bundle: str | None = None) -> dict[str, Any]:
    """A flat dict of facts about this machine's EdgeGuard runtime, with the self-check of `bundle` (None: the
    shipped default); "ok" is False when the bundle is missing or fails its checks. Never imports torch."""
    import onnxruntime

    from edge_guard import jpeg
    from edge_guard.errors import EdgeGuardError

    report: dict[str, Any] = {
        "edge_guard": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": _version("numpy"),
        "opencv": _version("opencv-python-headless"),
        "pyturbojpeg": _version("PyTurboJPEG"),
        "onnxruntime": onnxruntime.__version__,
        "ort_providers": onnxruntime.get_available_providers(),
        "jpeg_backends": jpeg.available_backends(),
    }
    try:
        info = jpeg.codec_info("auto")
        report["jpeg_backend"] = info["backend"]
        report["libjpeg_turbo"] = info["version"]
    except EdgeGuardError as exc:
        report["jpeg_backend"] = f"none ({exc})"
    report.update(_self_check(bundle))
    report["torch (train extra)"] = _version("torch")
    return report


def _self_check(path: str | None) -> dict[str, Any]:
    """Load the bundle (hashes verified) and classify one synthetic image through it."""
    import time

    import numpy as np

    from edge_guard.errors import EdgeGuardError
    from edge_guard.guard import Guard

    try:
        guard = Guard.from_bundle(path)
        image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        guard.classify(image)  # first call pays one-time allocation costs
        start = time.perf_counter()
        pred = guard.classify(image)[0]
        ms = (time.perf_counter() - start) * 1000
    except EdgeGuardError as exc:
        return {"bundle": f"FAILED: {exc}", "ok": False}
    bundle = guard.bundle
    return {
        "ok": True,
        "bundle": (f"{bundle.name} ({bundle.root}): {len(bundle.members)} members, defense {bundle.defense.kind}, "
                   "hashes verified"),
        "self_check": f"classified a test image in {ms:.1f} ms on {guard.engine.active_providers[0]} "
                      f"(-> {pred.class_name!r}, votes {list(pred.votes)})",
    }
