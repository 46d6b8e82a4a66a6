"""Helpers of the bad-input tests: run the CLI in-process, and a pickle that must never load."""

from __future__ import annotations

import re
from pathlib import Path

from lungvlm.cli import main


class CreatesMarker:
    """Unpickling this object creates (opens for writing) the file at ``path``: a checkpoint
    holding it proves a loader unpickled it when the file exists."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``lungvlm argv`` in-process: (exit code, stdout + stderr). An escaping exception fails."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse errors
        code = int(exit_.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


def assert_clear_error(
    code: int, output: str, expected_code: int, named: str, problem: str
) -> None:
    """A corpus case's common checks: the exit code, no traceback, the file named and the
    problem (a regex, matched with whitespace collapsed) stated."""
    assert code == expected_code, output
    assert "Traceback" not in output
    assert named in output, f"{named} not named in:\n{output}"
    flat = " ".join(output.split())
    assert re.search(problem, flat), f"{problem!r} not in:\n{output}"
