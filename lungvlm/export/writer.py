"""Atomic writes: single files and whole output folders appear complete or not at all.

A reader (a PACS import job, a web page, a second ``lungvlm report`` run) must never see a
half-written ``report.json`` or a case folder missing its DICOM files. Files are written to a
temporary sibling and moved into place with :func:`os.replace`, which is atomic on one file
system (POSIX ``rename``); folders are built under a temporary sibling name and renamed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path


def write_bytes_atomic(path: str | PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder.

    Args:
        path: destination file; its parent folder is created if needed.
        data: the bytes to write.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: if ``data`` is not bytes.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | PathLike[str], text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    return write_bytes_atomic(path, text.encode("utf-8"))


@contextmanager
def atomic_output_dir(path: str | PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary sibling name and move it to ``path`` on success.

    Usage::

        with atomic_output_dir("out/case_001") as tmp:
            (tmp / "report.json").write_text(...)

    If the block raises, the temporary folder is deleted and ``path`` is left as it was. With
    ``overwrite=True`` an existing ``path`` is replaced; between the two renames a reader can
    briefly find no folder, but never a mixed one.

    Args:
        path: final folder; its parent is created if needed.
        overwrite: replace an existing ``path`` instead of raising.

    Yields:
        The temporary folder to write into (same parent as ``path``).

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"output folder {path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        old.rmdir()
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
