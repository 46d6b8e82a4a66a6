"""Progress of long steps, reported by the library and drawn by whoever listens.

The library calls :func:`update` from inside long loops (sliding windows, nodules, exports,
scans); nothing is drawn unless a caller installed a listener with :func:`listening` (the
commands draw rich progress bars; the Python API takes a callback). With no listener, an update
costs one context-variable lookup.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

#: A listener: ``(step, done, total)``; ``total`` is None when unknown.
ProgressCallback = Callable[[str, int, "int | None"], None]

_LISTENER: contextvars.ContextVar[ProgressCallback | None] = contextvars.ContextVar(
    "lungvlm_progress", default=None
)


def update(step: str, done: int, total: int | None = None) -> None:
    """Report that ``done`` of ``total`` units of ``step`` are finished (no-op without listener).

    Args:
        step: a short human-readable name ("segmentation windows", "nodules", ...).
        done: units finished so far.
        total: units in all, or None when unknown.
    """
    listener = _LISTENER.get()
    if listener is not None:
        listener(step, done, total)


@contextlib.contextmanager
def listening(callback: ProgressCallback | None) -> Iterator[None]:
    """Send :func:`update` calls made inside the ``with`` block to ``callback``.

    ``None`` keeps the listener already installed (if any), so library calls nest.
    """
    if callback is None:
        yield
        return
    token = _LISTENER.set(callback)
    try:
        yield
    finally:
        _LISTENER.reset(token)
