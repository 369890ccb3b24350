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

The lock is held by a *process*, not by a thread or an object: a process that already holds
``path`` (through any :class:`FileLock` object, in any of its threads) acquires it again at once,
and the file is really unlocked when the last of these nested holds is released. So a training
that holds its entry's lock from start to finish can call ``save_entry``, which takes the same
lock, without deadlocking itself. Threads of one process therefore share the lock; it excludes
other processes only. A child made by ``fork`` does not inherit its parent's holds (it closes
the inherited descriptors and must lock for itself).

Used for run directories (one training per ``runs/<name>``), dataset preparation (one process
prepares a tfds set, the others wait and read it) and saved entries (one writer per
``saved_models/<name>``). Module of the standard library only: no Keras import.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import threading
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


# The locks this process holds: realpath of the lock file -> [fd, depth]. Guarded by
# _REGISTRY_LOCK, which is held only for non-blocking steps (never while waiting); an RLock so
# that a forgotten object released by the garbage collector inside a locked step cannot deadlock.
_HELD: dict[str, list] = {}
_REGISTRY_LOCK = threading.RLock()


def _forget_after_fork() -> None:  # pragma: no cover - runs in forked children
    """A forked child holds none of its parent's locks: close the inherited descriptors (the
    parent's flock stays, as the parent still has its own) and empty the registry."""
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.RLock()
    for fd, _ in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _key(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _pid_alive(pid) -> bool:  # pragma: no cover - used only without fcntl
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


class FileLock:
    """An exclusive lock on ``path`` held by this process; a context manager.

    Re-entrant per process: acquiring a ``path`` this process already holds (through this or
    any other :class:`FileLock` object, from any thread) returns at once and counts one more
    hold; the file is unlocked and deleted when the last hold is released.

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
        self._holds = 0  # holds taken through this object (a process may hold more in others)
        self._key = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock (at least one unreleased acquire)."""
        return self._holds > 0

    @property
    def depth(self) -> int:
        """How many holds this process has on ``path`` (through all its objects); 0 if none."""
        with _REGISTRY_LOCK:
            entry = _HELD.get(_key(self.path))
        return entry[1] if entry else 0

    def acquire(self) -> FileLock:
        key = _key(self.path)
        os.makedirs(os.path.dirname(key), exist_ok=True)
        deadline = time.monotonic() + self.timeout
        while True:
            with _REGISTRY_LOCK:
                entry = _HELD.get(key)
                if entry is not None:  # this process holds it already: one more hold
                    entry[1] += 1
                    self._holds += 1
                    self._key = key
                    return self
                fd = self._try_acquire(key)
                if fd is not None:
                    _HELD[key] = [fd, 1]
                    self._holds += 1
                    self._key = key
                    return self
            if time.monotonic() >= deadline:
                raise LockError(
                    f"{self.purpose} is in use by {_describe(read_holder(key))}. Wait for "
                    f"it to finish or stop that process; a process that died releases the lock "
                    f"by itself. Lock file: {self.path}")
            time.sleep(0.05)

    def _try_acquire(self, path: str) -> int | None:
        """Lock ``path`` in the file system; the descriptor, or None if another process has it."""
        record = json.dumps(_holder_record(self.purpose))
        if fcntl is None:  # pragma: no cover - Windows: exclusive create + pid liveness
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR)
            except FileExistsError:
                holder = read_holder(path)
                if holder and not _pid_alive(holder.get("pid")):
                    os.unlink(path)
                return None
            os.write(fd, record.encode())
            return fd
        while True:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # released (and deleted) between our open and our lock: try again
        try:
            os.ftruncate(fd, 0)
            os.write(fd, record.encode())
            os.fsync(fd)
        except OSError:  # e.g. a full disk: give the lock (and its file) back
            try:
                os.unlink(path)
            except OSError:
                pass
            os.close(fd)
            raise
        return fd

    def release(self) -> None:
        """Give back one hold; the last hold of the process unlocks and deletes the file."""
        if self._holds == 0:
            return
        with _REGISTRY_LOCK:
            self._holds -= 1
            entry = _HELD.get(self._key)
            if entry is None:  # pragma: no cover - forgotten after a fork
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _HELD[self._key]
            fd = entry[0]
            try:
                os.unlink(self._key)
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)  # closing drops the flock

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # pragma: no cover - a lock left held by a forgotten object
        try:
            while self._holds:
                self.release()
        except Exception:
            pass
