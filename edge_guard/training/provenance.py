"""What made an artifact: library versions recorded in bundle manifests and evaluation results."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from collections.abc import Sequence

from edge_guard import __version__, jpeg

# distribution name -> key in the result
_DISTS = {"torch": "torch", "onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript",
          "numpy": "numpy"}


def versions(extra: Sequence[str] = (), *, with_platform: bool = False) -> dict[str, str]:
    """Versions of python, torch, onnx, onnxruntime, onnxscript, numpy, edge_guard, the JPEG backend and
    libjpeg-turbo, plus the distributions named in `extra`. Packages that are not installed are left out."""
    out = {"python": sys.version.split()[0]}
    if with_platform:
        out["platform"] = platform.platform()
    for dist, key in {**_DISTS, **{name: name for name in extra}}.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    torch = sys.modules.get("torch")
    if torch is not None:  # with its build tag (+cpu, +cu130), which a distribution's metadata may leave out
        out["torch"] = str(torch.__version__)
    out["edge_guard"] = __version__
    try:
        info = jpeg.codec_info()
        out["libjpeg-turbo"] = str(info["version"])
        out["jpeg_backend"] = str(info["backend"])
    except Exception as exc:  # no JPEG backend on this machine: say so rather than fail the caller
        out["libjpeg-turbo"] = f"unavailable ({type(exc).__name__})"
    return out
