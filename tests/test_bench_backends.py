"""Smoke test of bench/bench_backends.py: `--quick` in a subprocess per backend (Keras picks its
backend at import, so each backend needs its own process). Checks the table, never a timing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "bench_backends.py")


def _run(backend, *extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    out = subprocess.run([sys.executable, SCRIPT, "--backend", backend, "--quick",
                          "--threads", "0", *extra],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _rows(stdout):
    return [line for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| benchmark")]


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_quick_one_group_per_backend(backend):
    stdout = _run(backend, "--only", "wn_dense,adam", "--warmup", "1")
    assert f"## {backend}: step time vs plain Keras" in stdout
    assert f"--backend {backend} --quick" in stdout  # the command that reproduces the table
    modes = ["auto", "xla"] if backend == "tensorflow" else ["auto"]
    expected = [(group, mode) for group in ("WeightNorm Dense vs plain Dense",
                                            "AdamP vs keras AdamW") for mode in modes]
    got = [(row.split(" | ")[1], row.split(" | ")[0].rsplit("jit ", 1)[1])
           for row in _rows(stdout)]
    assert got == expected
    target = "<= 1.10" if backend == "torch" else "<= 1.05"
    assert all(f"| {target} |" in row for row in _rows(stdout))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_quick_all_groups(backend):
    rows = _rows(_run(backend))
    per_mode = 2 if backend == "tensorflow" else 1
    # wn_dense 1, wn_conv 1, sgd 2, adam 1, bn 2 arms vs their baselines, per XLA mode
    assert len(rows) == 7 * per_mode


def test_rejects_unknown_backend_and_group():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for args in (["--backend", "mxnet"], ["--backend", "jax", "--only", "nope"]):
        out = subprocess.run([sys.executable, SCRIPT, "--quick", *args], capture_output=True,
                             text=True, cwd=ROOT, env=env, timeout=300)
        assert out.returncode == 2, out.stderr
        assert "invalid choice: 'mxnet'" in out.stderr or "Received: only='nope'" in out.stderr
