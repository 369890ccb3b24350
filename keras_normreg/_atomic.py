"""Files that are either the old version or the new one, never half written.

Every writer of state that another process (or a later run) reads goes through
:func:`replace_via_temp`: the content is written to a temporary file in the destination's own
folder (same file system, so the rename is atomic), optionally flushed to disk, then
``os.replace``-d over the destination; on any failure the temporary is removed and the old file
is untouched. ``saving.save_entry`` writes several files under one lock and uses the fsync
helpers directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's bytes to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the renames in folder ``path`` durable (POSIX; a no-op where folders cannot be
    opened or synced)."""
    if not hasattr(os, "O_DIRECTORY"):  # pragma: no cover - Windows
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # pragma: no cover - a folder we may not open
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems without directory fsync
        pass
    finally:
        os.close(fd)


def replace_via_temp(path: str | os.PathLike, write: Callable[[str], object], *,
                     prefix: str = ".tmp-", suffix: str = "", durable: bool = True) -> None:
    """Write ``path`` atomically: ``write(tmp)`` fills a new temporary file (named
    ``<prefix>…<suffix>`` in ``path``'s folder; Keras wants ``.weights.h5`` / ``.keras``
    endings), then it replaces ``path``. ``durable``: fsync the file before and the folder
    after the rename (what survives a power cut, not only a killed process)."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if durable:
        fsync_dir(folder)


def write_text(path: str | os.PathLike, text: str, **kwargs) -> None:
    """:func:`replace_via_temp` with ``text`` (UTF-8)."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    replace_via_temp(path, write, **kwargs)


def write_json(path: str | os.PathLike, obj, *, indent=None, sort_keys: bool = False,
               newline: bool = False, **kwargs) -> None:
    """:func:`replace_via_temp` with ``obj`` as JSON (a final newline if ``newline``)."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) +
               ("\n" if newline else ""), **kwargs)
