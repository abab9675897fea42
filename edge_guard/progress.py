"""The one progress bar: rich, on stderr (stdout stays for results), drawn only on a terminal.

    with progress_bar(enabled=True, fields=("loss {task.fields[loss]:.3f}",)) as bar:
        task = bar.add_task("epoch 1/15", total=steps, loss=float("nan"))
        bar.update(task, advance=1, loss=0.42)
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(*, enabled: bool = True, transient: bool = False, fields: Sequence[str] = (),
                 label: str = "{task.description}") -> Progress:
    """A Progress with label, bar, done/total, `fields` (rich format strings over task fields), elapsed and
    remaining time. Disabled (a no-op) when not enabled or when stderr is not a terminal (logs, CI, pipes)."""
    console = Console(stderr=True)
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), *(TextColumn(f) for f in fields),
               TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=console, disable=not (enabled and console.is_terminal), transient=transient)
