"""keras_normreg._locks.FileLock with real processes: holder named, dies with its holder,
re-entrant per process, waits with a timeout, and serialises a real read-modify-write race."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from keras_normreg import _locks
from keras_normreg._locks import FileLock, LockError

pytestmark = pytest.mark.skipif(_locks.fcntl is None, reason="POSIX flock")

# Children load _locks.py on its own (standard library only): no Keras import, fast start.
_PRELUDE = f"""
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("_locks", {_locks.__file__!r})
_locks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(_locks)
"""


def _child(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _PRELUDE + code, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


_HOLD = """
lock = _locks.FileLock(sys.argv[1], sys.argv[2])
lock.acquire()
print("locked", flush=True)
time.sleep(float(sys.argv[3]))
lock.release()
print("released", flush=True)
"""


def _holding_child(path, purpose="training run runs/x", seconds=60.0) -> subprocess.Popen:
    child = _child(_HOLD, path, purpose, seconds)
    line = child.stdout.readline()
    assert line.strip() == "locked", (line, child.stderr.read() if child.poll() is not None else "")
    return child


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.kill()
    child.wait(timeout=30)


# -- basics ---------------------------------------------------------------------------------------
def test_file_written_while_held_and_deleted_on_release(tmp_path):
    path = tmp_path / "sub" / "x.lock"
    with FileLock(path, "the purpose") as lock:
        assert lock.held and lock.depth == 1
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["purpose"] == "the purpose"
        assert {"host", "command", "started"} <= set(record)
        assert _locks.read_holder(path) == record
    assert not lock.held and lock.depth == 0
    assert not path.exists()
    assert _locks.read_holder(path) is None


def test_reentrant_within_the_process(tmp_path):
    path = tmp_path / "x.lock"
    outer = FileLock(path, "outer")
    with outer:
        with outer:  # the same object again
            assert outer.depth == 2
        # another object, through a different spelling of the same path (symlinked folder)
        (tmp_path / "alias").symlink_to(tmp_path)
        other = FileLock(tmp_path / "alias" / "x.lock", "inner")
        with other:
            assert other.depth == outer.depth == 2
            assert _locks.read_holder(path)["purpose"] == "outer"  # the first holder's record
        assert outer.depth == 1 and path.exists()
        # still excludes other processes after an inner release
        probe = _child("""
try:
    _locks.FileLock(sys.argv[1], "probe").acquire()
    print("acquired")
except _locks.LockError as e:
    print("refused")
""", path)
        assert probe.communicate(timeout=60)[0].strip() == "refused"
    assert outer.depth == 0 and not path.exists()
    outer.release()  # releasing more than acquired is a no-op
    assert outer.depth == 0


def test_threads_of_one_process_share_the_lock(tmp_path):
    path = tmp_path / "x.lock"
    seen = []
    with FileLock(path, "main thread"):
        def worker():
            with FileLock(path, "worker thread", timeout=0) as lock:
                seen.append(lock.depth)

        t = threading.Thread(target=worker)
        t.start()
        t.join(timeout=30)
        assert seen == [2] and path.exists()
    assert not path.exists()


def test_forked_child_holds_nothing(tmp_path):
    path = tmp_path / "x.lock"
    with FileLock(path, "parent"):
        pid = os.fork()
        if pid == 0:  # child: the parent's hold is not ours
            code = 3
            try:
                FileLock(path, "child").acquire()
                code = 1
            except LockError:
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _locks.read_holder(path)["purpose"] == "parent"
    assert not path.exists()


# -- real processes -------------------------------------------------------------------------------
def test_message_names_the_holder(tmp_path):
    path = tmp_path / "x.lock"
    child = _holding_child(path, purpose="training run runs/mnist1d")
    try:
        with pytest.raises(LockError) as info:
            FileLock(path, "training run runs/mnist1d").acquire()
        message = str(info.value)
        assert f"pid {child.pid} on " in message
        assert "training run runs/mnist1d is in use by" in message
        assert f"Lock file: {path}" in message
        assert _locks.read_holder(path)["pid"] == child.pid
    finally:
        _stop(child)


def test_released_when_the_holder_is_sigkilled(tmp_path):
    path = tmp_path / "x.lock"
    child = _holding_child(path)
    with pytest.raises(LockError):
        FileLock(path, "me").acquire()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert path.exists()  # the file is left behind; the lock is not
    with FileLock(path, "me", timeout=0) as lock:
        assert lock.held and _locks.read_holder(path)["pid"] == os.getpid()
    assert not path.exists()


def test_timeout_waits_for_the_holder(tmp_path):
    path = tmp_path / "x.lock"
    child = _holding_child(path, seconds=1.5)
    try:
        start = time.monotonic()
        with pytest.raises(LockError, match="is in use by"):
            FileLock(path, "me", timeout=0.3).acquire()
        assert 0.3 <= time.monotonic() - start < 1.4
        with FileLock(path, "me", timeout=60) as lock:
            waited = time.monotonic() - start
            assert lock.held
        assert waited >= 1.0  # it waited for the child to release
        assert child.wait(timeout=30) == 0
        assert child.stdout.read().strip() == "released"
    finally:
        _stop(child)


_COUNT = """
lock_path, counter, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
while not os.path.exists(counter):  # start together
    time.sleep(0.001)
for _ in range(rounds):
    with _locks.FileLock(lock_path, "counter", timeout=120):
        with open(counter) as f:
            value = int(f.read())
        time.sleep(0.0005)  # widen the read-modify-write window
        with open(counter, "w") as f:
            f.write(str(value + 1))
"""


def test_four_processes_count_to_120(tmp_path):
    lock_path, counter = tmp_path / "count.lock", tmp_path / "count"
    children = [_child(_COUNT, lock_path, counter, 30) for _ in range(4)]
    try:
        time.sleep(0.2)
        tmp = tmp_path / "count.tmp"
        tmp.write_text("0")
        os.replace(tmp, counter)
        for c in children:
            _, err = c.communicate(timeout=120)
            assert c.returncode == 0, err
    finally:
        for c in children:
            _stop(c)
    assert int(counter.read_text()) == 120
    assert not lock_path.exists()


def test_lock_error_is_a_runtime_error():
    assert issubclass(LockError, RuntimeError)
    assert Path(_locks.__file__).name == "_locks.py"
