"""One process at a time: an advisory lock file that names its holder and dies with it.

:class:`FileLock` takes an exclusive ``flock`` on a small file (``fcntl`` on POSIX; an
exclusive-create file with a liveness check of the recorded pid elsewhere) and writes the holder
into it: pid, host, command line, start time and what it holds the lock for. The operating system
drops a ``flock`` when its process dies, so a crashed or killed holder never blocks the next run;
a leftover file is harmless (the next holder locks and rewrites it). A second process asking for
a held lock gets :class:`LockError` naming the holder, at once (no waiting), unless ``timeout`` is
given.

On release the file is deleted while still locked; a process that opened it just before checks
after locking that the path still names the file it locked, and starts over if not, so two
processes never both hold the lock.

Used for run directories (one training per ``runs/<name>``) and saved entries (one writer per
``saved_models/<name>``). Module of the standard library only: no Keras import.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import time

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["FileLock", "LockError", "read_holder"]


class LockError(RuntimeError):
    """The lock is held by another live process (the message names it)."""


def _holder_record(purpose: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "command": " ".join(sys.argv) or sys.executable,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "purpose": purpose}


def read_holder(path: str | os.PathLike) -> dict | None:
    """The holder record written in a lock file, or None (no file, or unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.loads(f.read() or "null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _describe(record: dict | None) -> str:
    if not record:
        return "another process (its record is not readable yet)"
    return (f"pid {record.get('pid')} on {record.get('host')} since {record.get('started')} "
            f"({record.get('purpose', '')}: {record.get('command', '')})")


def _pid_alive(pid) -> bool:  # pragma: no cover - used only without fcntl
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


class FileLock:
    """An exclusive lock on ``path`` held by this process; a context manager.

    Args:
        path: the lock file (its folder is created).
        purpose: what the lock protects, recorded for the message another process gets
            (e.g. ``"training run runs/mnist1d_cnn1d_batch"``).
        timeout: seconds to keep trying before :class:`LockError`; 0 (default) fails at once.
    """

    def __init__(self, path: str | os.PathLike, purpose: str, *, timeout: float = 0.0):
        self.path = os.fspath(path)
        self.purpose = purpose
        self.timeout = float(timeout)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FileLock:
        if self._fd is not None:
            raise LockError(f"{self.path}: this lock object already holds the lock.")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        deadline = time.monotonic() + self.timeout
        while True:
            if self._try_acquire():
                return self
            if time.monotonic() >= deadline:
                raise LockError(
                    f"{self.purpose} is in use by {_describe(read_holder(self.path))}. Wait for "
                    f"it to finish or stop that process; a process that died releases the lock "
                    f"by itself. Lock file: {self.path}")
            time.sleep(0.05)

    def _try_acquire(self) -> bool:
        record = json.dumps(_holder_record(self.purpose))
        if fcntl is None:  # pragma: no cover - Windows: exclusive create + pid liveness
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR)
            except FileExistsError:
                holder = read_holder(self.path)
                if holder and not _pid_alive(holder.get("pid")):
                    os.unlink(self.path)
                return False
            os.write(fd, record.encode())
            self._fd = fd
            return True
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # released (and deleted) between our open and our lock: try again
            os.close(fd)
            return self._try_acquire()
        os.ftruncate(fd, 0)
        os.write(fd, record.encode())
        os.fsync(fd)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # pragma: no cover - a lock left held by a forgotten object
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
