"""`edgeguard` command line. Commands parse options, call one library function, and print.

Training-half commands import `edge_guard.training` inside the command body, so the runtime
commands work without torch installed.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from edge_guard.errors import EdgeGuardError

app = typer.Typer(
    name="edgeguard",
    help="EdgeGuard: traffic-sign classifiers hardened against adversarial images, for edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the EdgeGuard version and exit.", is_eager=True),
) -> None:
    """EdgeGuard: traffic-sign classifiers hardened against adversarial images, for edge devices."""
    if version:
        from edge_guard import __version__

        typer.echo(__version__)
        raise typer.Exit()


def friendly_errors(fn: F) -> F:
    """Turn an EdgeGuardError into one clear line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgeGuardError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def parse_int_list(text: str, what: str) -> list[int]:
    """Parse '20,40,60' into [20, 40, 60]; ConfigError naming `what` otherwise."""
    from edge_guard.errors import ConfigError, expected_got

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(expected_got(what, "comma-separated integers like 20,40,60", repr(text))) from None


@app.command()
@friendly_errors
def doctor(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Check this machine: versions, JPEG codec backend and libjpeg-turbo version, onnxruntime providers.

    Example: edgeguard doctor --json
    """
    from edge_guard.doctor import environment_report

    report = environment_report()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        typer.echo(f"{key:>22}: {value}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
