"""keras_normreg._atomic: a file is the old version or the new one, never half written."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest

from keras_normreg import _atomic


def test_write_json_and_text_replace_the_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    _atomic.write_json(path, {"b": [1, 2.5], "a": None}, indent=1, sort_keys=True, newline=True)
    assert path.read_text() == '{\n "a": null,\n "b": [\n  1,\n  2.5\n ]\n}\n'
    _atomic.write_text(path, "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    assert os.listdir(tmp_path) == ["state.json"]  # no temporaries left


@pytest.mark.parametrize("durable", [True, False])
def test_failure_half_way_keeps_the_old_file(tmp_path, durable):
    path = tmp_path / "f.txt"
    path.write_text("old content")

    def write(tmp):
        with open(tmp, "w") as f:
            f.write("new con")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        _atomic.replace_via_temp(path, write, durable=durable)
    assert path.read_text() == "old content"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_durable_syncs_file_then_folder(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(_atomic, "fsync_file", lambda p: calls.append(("file", os.path.exists(
        tmp_path / "x.txt"))))
    monkeypatch.setattr(_atomic, "fsync_dir", lambda p: calls.append(("dir", str(p))))
    _atomic.write_text(tmp_path / "x.txt", "1")
    # the temporary is synced before the rename (x.txt not there yet), the folder after it
    assert calls == [("file", False), ("dir", str(tmp_path))]
    calls.clear()
    _atomic.write_text(tmp_path / "x.txt", "2", durable=False)
    assert calls == []


def test_suffix_lets_keras_write_weights(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path / "ckpt.weights.h5"
    _atomic.replace_via_temp(path, lambda tmp: model.save_weights(tmp, overwrite=True),
                             prefix=".tmp-state-", suffix=".weights.h5")
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    other.load_weights(path)
    for a, b in zip(model.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.weights.h5"]


def test_json_of_a_state_round_trips(tmp_path):
    state = {"epochs_done": 3, "history": {"loss": [2.3, 1.1]}, "seed_states": [[1, 2]]}
    _atomic.write_json(tmp_path / "s.json", state)
    assert json.loads((tmp_path / "s.json").read_text()) == state


# -- SIGTERM during a write: real signals, in a child process --------------------------------
# The child loads _atomic.py by its path (it imports only the standard library), so it starts
# in a fraction of a second instead of importing Keras.
_CHILD = r"""
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("_atomic", sys.argv[1])
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
mode, folder = sys.argv[2], sys.argv[3]

def mark(name):
    open(os.path.join(folder, "..", name), "w").close()

if mode == "write":  # SIGTERM while the temporary is half written
    def write(tmp):
        with open(tmp, "w") as f:
            f.write("half of the new")
        mark("ready")
        time.sleep(600)  # the signal arrives here
    atomic.replace_via_temp(os.path.join(folder, "state.txt"), write)
elif mode == "critical":  # SIGTERM inside critical(): deferred to the end of the block
    with atomic.sigterm_as_exception() as guard:
        with guard.critical():
            os.kill(os.getpid(), 15)
            time.sleep(0.5)  # the Python handler has run by now: it only recorded the signal
            mark("critical-done")
        mark("after-critical")  # never: the signal is delivered when the block ends
mark("exited-normally")
"""


def _run_child(tmp_path, mode):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "state.txt").write_text("old")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, _atomic.__file__, mode,
                              str(folder)], stderr=subprocess.PIPE, text=True)
    if mode == "write":
        deadline = time.monotonic() + 120
        while not (tmp_path / "ready").exists():
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, "the child did not reach the write"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    return child.returncode, err, folder


def test_sigterm_mid_write_removes_the_temporary(tmp_path):
    code, err, folder = _run_child(tmp_path, "write")
    # ended by SIGTERM (not by an exception's exit status 1), after removing the temporary
    assert code == -signal.SIGTERM, err
    assert "Traceback" not in err, err
    assert os.listdir(folder) == ["state.txt"]  # no temporary left
    assert (folder / "state.txt").read_text() == "old"  # the old version, untouched
    assert not (tmp_path / "exited-normally").exists()


def test_sigterm_in_a_critical_block_waits_for_its_end(tmp_path):
    code, err, _ = _run_child(tmp_path, "critical")
    assert code == -signal.SIGTERM, err
    assert (tmp_path / "critical-done").exists()  # the block ran to its end ...
    assert not (tmp_path / "after-critical").exists()  # ... and the signal ended it there
    assert not (tmp_path / "exited-normally").exists()


def test_sigterm_guard_leaves_a_program_handler_and_other_threads_alone(tmp_path):
    calls = []

    def handler(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with _atomic.sigterm_as_exception():
            assert signal.getsignal(signal.SIGTERM) is handler  # the program's handler decides
        _atomic.write_text(tmp_path / "a.txt", "x")
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    seen = []

    def in_thread():
        with _atomic.sigterm_as_exception() as guard:
            seen.append(signal.getsignal(signal.SIGTERM))
            with guard.critical():  # a plain block there
                seen.append("critical")

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGTERM), "critical"]
    assert calls == []
