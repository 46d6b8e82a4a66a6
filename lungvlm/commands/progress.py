"""Rich progress bars on stderr for the commands: one bar per step the library reports."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from lungvlm import progress


@contextlib.contextmanager
def progress_bars(enabled: bool = True) -> Iterator[None]:
    """Draw a rich bar for every :func:`lungvlm.progress.update` step inside the block.

    Bars go to stderr (stdout keeps the command's results). With ``enabled`` False, or when
    stderr is not a terminal and rich cannot draw, the block runs without bars.
    """
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr)
    bars = Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, int] = {}

    def listener(step: str, done: int, total: int | None) -> None:
        if step not in tasks or (done == 0 and bars.tasks[tasks[step]].completed > 0):
            tasks[step] = bars.add_task(step, total=total)
        bars.update(tasks[step], completed=done, total=total)

    with bars, progress.listening(listener):
        yield
