"""Progress on stderr for the commands: one rich bar per step the library reports, or, when
stderr is not a terminal (a log file, a pipe, a batch job), plain lines for the long steps."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from lungvlm import progress

#: Without a terminal, a step gets a line once it has run this many seconds (short steps stay
#: silent), then one at most every :data:`PLAIN_LINE_EVERY_S` seconds, and one when it ends.
PLAIN_LINE_AFTER_S = 5.0
PLAIN_LINE_EVERY_S = 30.0


class PlainProgressLines:
    """A :data:`lungvlm.progress.ProgressCallback` writing ``step: done/total (N s)`` lines.

    Args:
        stream: where the lines go (stderr).
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self._started: dict[str, float] = {}
        self._last_line: dict[str, float | None] = {}

    def __call__(self, step: str, done: int, total: int | None) -> None:
        now = self.clock()
        if step not in self._started or done == 0:  # a new run of this step (e.g. a new scan)
            self._started[step], self._last_line[step] = now, None
        elapsed = now - self._started[step]
        last = self._last_line[step]
        finished = total is not None and done >= total
        due = elapsed >= PLAIN_LINE_AFTER_S and (last is None or now - last >= PLAIN_LINE_EVERY_S)
        if due or (finished and last is not None):
            of = f"/{total}" if total is not None else ""
            print(f"{step}: {done}{of} ({elapsed:.0f} s)", file=self.stream, flush=True)
            self._last_line[step] = now


@contextlib.contextmanager
def progress_bars(enabled: bool = True) -> Iterator[None]:
    """Show every :func:`lungvlm.progress.update` step inside the block on stderr.

    On a terminal each step gets a rich bar; otherwise long steps get plain lines
    (:class:`PlainProgressLines`), so a run written to a log never looks like a hang. With
    ``enabled`` False nothing is shown.
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
    if not console.is_terminal:
        with progress.listening(PlainProgressLines(sys.stderr)):
            yield
        return
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
