"""Files that are either the old version or the new one, never half written.

Every writer of state that another process (or a later run) reads goes through
:func:`replace_via_temp`: the content is written to a temporary file in the destination's own
folder (same file system, so the rename is atomic), optionally flushed to disk, then
``os.replace``-d over the destination; on any failure the temporary is removed and the old file
is untouched. ``saving.save_entry`` writes several files under one lock and uses the fsync
helpers directly.

A SIGTERM (what ``kill``, a job scheduler or a container stop sends) would end the process at
once, before any ``except``/``finally`` runs, and leave the temporaries behind. While a write
is under way :func:`sigterm_as_exception` therefore turns a SIGTERM into an exception (in the
main thread, and only where SIGTERM still has its default action): the temporaries are removed
on the way out, and then the signal is delivered again with its default action, so the process
still ends by SIGTERM (exit status -15 / 143). Inside :meth:`TermGuard.critical` (a group of
renames that belong together) the signal waits until the group is done.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator


class Terminated(BaseException):
    """A SIGTERM received during a guarded write (:func:`sigterm_as_exception`). A
    ``BaseException``, like ``KeyboardInterrupt``: ``except Exception`` does not swallow it."""


class TermGuard:
    """What :func:`sigterm_as_exception` yields: :meth:`critical` defers the signal."""

    def __init__(self):
        self._critical = 0
        self._pending = False

    def _handle(self, signum, frame):
        if self._critical:
            self._pending = True
            return
        raise Terminated(signum)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A SIGTERM received inside the block raises only when the block is done."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if not self._critical and self._pending:
            self._pending = False
            raise Terminated(signal.SIGTERM)


_active = threading.local()


@contextlib.contextmanager
def sigterm_as_exception() -> Iterator[TermGuard]:
    """Within the block, a SIGTERM raises :class:`Terminated` (so the ``except``/``finally``
    clauses inside remove their temporaries); when it leaves the block, the default action of
    SIGTERM is restored and the signal sent again: the process ends as it would have.

    Only in the main thread and where SIGTERM has its default action (a handler installed by
    the program, or an ignored SIGTERM, is left alone: the handler decides). Re-entrant: an
    inner block shares the outer one's guard.
    """
    outer = getattr(_active, "guard", None)
    if outer is not None:
        yield outer
        return
    guard = TermGuard()
    sigterm = getattr(signal, "SIGTERM", None)
    if (sigterm is None or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(sigterm) != signal.SIG_DFL):
        yield guard  # nothing installed: critical() is then a plain block
        return
    signal.signal(sigterm, guard._handle)
    _active.guard = guard
    terminated = False
    try:
        yield guard
    except Terminated:
        terminated = True
    finally:
        guard._critical += 1  # from here on a SIGTERM is only recorded
        _active.guard = None
        signal.signal(sigterm, signal.SIG_DFL)
        if terminated or guard._pending:
            os.kill(os.getpid(), sigterm)  # the default action: the process ends here
    if terminated:  # pragma: no cover - reached only where SIGTERM is blocked
        raise Terminated(sigterm)


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
    after the rename (what survives a power cut, not only a killed process). A SIGTERM
    meanwhile removes the temporary before the process ends (:func:`sigterm_as_exception`)."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    with sigterm_as_exception() as guard:  # a SIGTERM during the write removes the temporary
        tmp = None
        try:
            with guard.critical():  # the temporary exists only once its name is known
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
            os.close(fd)
            write(tmp)
            if durable:
                fsync_file(tmp)
            os.replace(tmp, path)
        except BaseException:
            if tmp is not None:
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
