"""EdgeGuard's typed errors.

Every message says what was expected, what was got, and what to do. The CLI turns any
`EdgeGuardError` into one line on stderr and exit code 2.
"""

from __future__ import annotations


class EdgeGuardError(Exception):
    """Base class of every error EdgeGuard raises on purpose."""


class ConfigError(EdgeGuardError):
    """A profile, run configuration or command-line option is invalid."""


class InputError(EdgeGuardError, ValueError):
    """An image, frame or array does not have the expected dtype, shape or content."""


class BundleError(EdgeGuardError):
    """A model bundle is missing, malformed, or fails its integrity check."""


class CodecError(EdgeGuardError):
    """A JPEG backend is unavailable or failed to encode/decode."""


class ProviderError(EdgeGuardError):
    """An onnxruntime execution provider was requested but cannot run."""


class DataError(EdgeGuardError):
    """A dataset on disk is missing, corrupt, or not in a supported layout."""


def expected_got(what: str, expected: object, got: object, fix: str = "") -> str:
    """Format the standard error message: `what: expected X, got Y. fix` (control characters escaped)."""
    msg = f"{what}: expected {expected}, got {got}."
    return printable(f"{msg} {fix}" if fix else msg)


def printable(text: str) -> str:
    """`text` with control and other non-printable characters escaped, so data echoed in a message cannot
    move the cursor, recolour the terminal or forge another line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
