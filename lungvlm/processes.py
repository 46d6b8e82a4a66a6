"""Process hygiene after a crash: workers die with their parent, and stale leftovers are known.

A ``kill -9`` of a command gives it no chance to stop its worker processes or to remove its
temporary folders. Two helpers make that safe:

- :func:`die_with_parent`, a pool initializer: on Linux the kernel sends the worker SIGKILL
  when its parent dies (``prctl(PR_SET_PDEATHSIG)``); everywhere a daemon thread also polls
  the parent pid and exits when it is gone (macOS, or a parent that died before the prctl).
- :func:`pid_alive` and :func:`owner_pid`: a temporary name records its writer's pid
  (``.tmp-<name>-<pid>``), and only a leftover whose writer is dead is removed, so a rerun
  never deletes the folder of a run still going.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCHDOG_PERIOD_S = 0.5
_PID_SUFFIX = re.compile(r"-(\d+)$")


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this machine (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): kill(0) said it exists


def owner_pid(name: str) -> int | None:
    """The writer pid at the end of a temporary name (``.tmp-<case>-<pid>``), else None."""
    match = _PID_SUFFIX.search(name)
    return int(match.group(1)) if match else None


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid and not pid_alive(parent_pid):
            os._exit(1)  # the parent is gone: stop writing at once
        time.sleep(WATCHDOG_PERIOD_S)


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker when ``parent_pid`` dies (module docstring).

    Args:
        parent_pid: the pid of the process that owns the pool (``os.getpid()`` there).
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the watchdog below still ends the worker
    if not pid_alive(parent_pid):
        os._exit(1)  # the parent died before the prctl took effect
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
