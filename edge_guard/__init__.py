"""EdgeGuard: adversarially robust traffic-sign classification for edge devices.

The runtime half (this package minus `edge_guard.training`) never imports torch.
`Guard` is imported lazily so `import edge_guard` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Guard", "Prediction", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from edge_guard.guard import Guard, Prediction


def __getattr__(name: str) -> Any:
    if name in ("Guard", "Prediction"):
        from edge_guard import guard

        return getattr(guard, name)
    raise AttributeError(f"module 'edge_guard' has no attribute {name!r}")
