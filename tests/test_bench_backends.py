"""Smoke test of bench/bench_backends.py: `--quick` in a subprocess per backend (Keras picks its
backend at import, so each backend needs its own process). Checks the table, never a timing."""

from __future__ import annotations

import json
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
    stdout = _run(backend, "--only", "wn_dense,adam,sphere,monitor", "--warmup", "1")
    assert f"## {backend}: step time vs plain Keras" in stdout
    assert f"--backend {backend} --quick" in stdout  # the command that reproduces the table
    modes = ["auto", "xla"] if backend == "tensorflow" else ["auto"]
    expected = [(group, mode) for group in (
        "WeightNorm Dense vs plain Dense", "AdamP vs keras AdamW",
        "DecoupledWeightDecay(SGD) sphere vs keras SGD(wd)",
        "+ NormMonitor(every 10) vs keras SGD(wd)") for mode in modes]
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
    # wn_dense 1, wn_conv 1, sgd 2, adam 1, bn 2, sphere 1, monitor 1 arms vs their baselines,
    # per XLA mode
    assert len(rows) == 9 * per_mode


def _memory_rows(stdout):
    table = stdout.split("peak memory of a training step", 1)[1]
    return [line.split(" | ") for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| benchmark")]


def test_memory_quick_jax(tmp_path):
    """--memory adds a table with XLA's temp and total per arm; the NormMonitor arm runs the
    same compiled step as its baseline (the monitor is outside it), so its ratio is exactly 1.
    --json writes the same rows, in bytes."""
    path = tmp_path / "jax.json"
    stdout = _run("jax", "--only", "sphere,monitor", "--memory", "--json", str(path))
    rows = _memory_rows(stdout)
    assert [(r[1], r[2]) for r in rows] == [
        (arm, measure) for arm in ("DecoupledWeightDecay(SGD) sphere vs keras SGD(wd)",
                                   "+ NormMonitor(every 10) vs keras SGD(wd)")
        for measure in ("XLA temp", "XLA total")]
    assert all(r[3] != "n/a" and r[4] != "n/a" and r[5] != "n/a" for r in rows)
    assert [r[5] for r in rows[2:]] == ["1.000", "1.000"]
    assert "tracked weights" in rows[2][6]
    saved = json.loads(path.read_text())
    assert saved["backend"] == "jax" and len(saved["rows"]) == 2
    assert [(m["name"], m["measure"], f"{m['arm_bytes'] / 2**20:.3f}") for m in saved["memory"]] \
        == [(r[1].split(" vs ")[0], r[2], r[4]) for r in rows]
    assert saved["memory"][2]["arm_bytes"] == saved["memory"][2]["base_bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_memory_quick_tensorflow_torch(backend):
    """TensorFlow: the allocator counter (in-process); torch: one child process per arm.
    Quick shapes are below the counters' resolution, so only the table's shape is checked."""
    rows = _memory_rows(_run(backend, "--only", "monitor", "--memory"))
    measure = "TF allocator peak" if backend == "tensorflow" else "RSS peak growth"
    assert [(r[1], r[2]) for r in rows] == [
        ("+ NormMonitor(every 10) vs keras SGD(wd)", measure)] * (
            2 if backend == "tensorflow" else 1)
    assert all(r[3] != "n/a" and r[4] != "n/a" for r in rows)


def test_rejects_unknown_backend_and_group():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for args in (["--backend", "mxnet"], ["--backend", "jax", "--only", "nope"]):
        out = subprocess.run([sys.executable, SCRIPT, "--quick", *args], capture_output=True,
                             text=True, cwd=ROOT, env=env, timeout=300)
        assert out.returncode == 2, out.stderr
        assert "invalid choice: 'mxnet'" in out.stderr or "Received: only='nope'" in out.stderr
