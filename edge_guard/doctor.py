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


def environment_report() -> dict[str, Any]:
    """A flat dict of facts about this machine's EdgeGuard runtime. Never imports torch."""
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
    try:
        from edge_guard.bundle import default_bundle_path, load_bundle

        bundle = load_bundle(default_bundle_path())
        report["default_bundle"] = f"{bundle.name} ({len(bundle.members)} members, verified)"
    except (EdgeGuardError, ImportError) as exc:
        report["default_bundle"] = f"unavailable ({exc})"
    report["torch (train extra)"] = _version("torch")
    return report
