"""Fixtures of the tuning tests: the tiny digits study, written into a temporary directory, and
the helpers of the tests that run studies as separate processes (here and in tests/faults)."""

import contextlib
import glob
import json
import os
import signal
import sys
import time

import pytest
import tomli_w

from keras_normreg import config
from keras_normreg.tuning import launcher

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tuning", "tiny_digits.toml")


def write_tiny_spec(tmp_path, **changes) -> str:
    """A copy of tuning/tiny_digits.toml whose outputs go under ``tmp_path``; ``changes`` are
    ``section={key: value}`` updates (or top-level values)."""
    raw = config.read_toml(TINY)
    raw["output"] = {"directory": str(tmp_path / "runs"),
                     "export_dir": str(tmp_path / "saved_models")}
    _merge(raw, changes)
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(raw))
    return str(path)


def _merge(into: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


@pytest.fixture
def tiny_spec_path(tmp_path):
    return write_tiny_spec(tmp_path)


def read_trials(project, filename: str = "trial.json") -> dict:
    """``{trial_id: contents}`` of one JSON file per trial directory of a keras-tuner project
    (``trial.json``, or e.g. our ``result.json``)."""
    out = {}
    for path in glob.glob(os.path.join(project, "trial_*", filename)):
        with open(path) as f:
            t = json.load(f)
        out[t["trial_id"]] = t
    return out


def mid_trial(project) -> bool:
    """At least one trial completed and one running (the moment to kill a process)."""
    ts = read_trials(project).values()
    return (sum(t["status"] == "COMPLETED" for t in ts) >= 1
            and any(t["status"] == "RUNNING" for t in ts))


# ------------------------------------------------------------- studies as separate processes
def tune_env() -> dict:
    """The environment of a ``keras-normreg tune`` subprocess: ours minus the launcher's own
    variables and the oracle's secret and TLS files (a process started by hand has no
    secret; the launcher makes one), TensorFlow quiet, the TensorFlow backend unless one is
    set."""
    env = {k: v for k, v in os.environ.items()
           if k not in launcher.ENV_KEYS + launcher.SECURITY_ENV_KEYS}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.setdefault("KERAS_BACKEND", "tensorflow")
    return env


def tune_cmd(*args) -> list:
    return [sys.executable, "-m", "keras_normreg.cli", "tune", *args]


def kill_all(procs) -> None:
    """Kill every process still running (a stopped one is continued first) and reap it."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGCONT)
            p.kill()
            p.wait(timeout=30)


def wait_for(predicate, procs, timeout, what) -> None:
    """Poll ``predicate`` every 0.2 s; fail if a process of ``procs`` exits with an error or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            if p.poll() is not None and p.returncode != 0:
                raise AssertionError(f"a process exited with {p.returncode} while waiting for "
                                     f"{what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def children(pid) -> list[int]:
    """Pids of the direct children of ``pid`` (Linux /proc)."""
    out = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        with open(task) as f:
            out += [int(x) for x in f.read().split()]
    return out


def cmdline(pid) -> str:
    """The command line of ``pid`` ('' once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def fake_processes(monkeypatch, record) -> None:
    """Replace the launcher's Popen by a fake one that calls ``record(cmd, kwargs)`` and
    'exits' at once with 0 (so run_local returns as soon as everything is started). A fake
    that runs the preexec_fn runs it in THIS process: the launcher's death signal is kept off
    pytest itself (test_distributed.py::test_children_get_the_death_signal checks that part)."""

    class FakePopen:
        def __init__(self, cmd, **kwargs):
            record(cmd, kwargs)
            self.returncode = 0

        def poll(self):
            return 0

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(launcher.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(launcher, "check_distributed_dependencies", lambda: None)
    monkeypatch.setattr(launcher, "_libc", lambda: None)
