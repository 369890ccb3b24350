"""Smoke test of bench/bench_backends.py: `--quick` in a subprocess per backend (Keras picks its
backend at import, so each backend needs its own process). Checks the table, never a timing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "bench_backends.py")
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _run(backend, *extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    out = subprocess.run([sys.executable, SCRIPT, "--backend", backend, "--quick",
                          "--threads", "0", *extra],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _rows(stdout):
    """The rows of the step-time table (10 columns; the img/s table has 4)."""
    return [line for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| benchmark")
            and line.count("|") == 11]


WN_TORCH = "torch weight_norm (plain PyTorch)"
LINEAR_TORCH = "torch Linear (plain PyTorch)"
ADAMP_TORCH = "AdamP reference (plain PyTorch)"
SGDP_TORCH = "SGDP reference (plain PyTorch)"
SGD_TORCH = "torch SGD (plain PyTorch)"
ADAMW_TORCH = "torch AdamW (plain PyTorch)"
#: the rows of a group, per XLA mode: (arm vs baseline, has the backend's target)
ROWS = {
    "wn_dense": [("WeightNorm Dense vs plain Dense", True),
                 (f"{LINEAR_TORCH} vs plain Dense", False),
                 (f"{WN_TORCH} vs plain Dense", False),
                 (f"WeightNorm Dense vs {WN_TORCH}", False),
                 (f"{WN_TORCH} vs {LINEAR_TORCH}", False)],
    "wn_conv": [("WeightNorm Conv2D vs plain Conv2D", True)],
    "bn": [("Fused BN vs keras BN", True), ("L1 BN vs keras BN", True),
           ("TopK BN vs keras BN", True)],
    "sphere": [("DecoupledWeightDecay(SGD) sphere vs keras SGD(wd)", True)],
    "monitor": [("+ NormMonitor(every 10) vs keras SGD(wd)", True)],
    "sgd": [("DecoupledWeightDecay(SGD) vs keras SGD(wd)", True),
            ("SGDP vs keras SGD(wd)", True),
            (f"{SGDP_TORCH} vs keras SGD(wd)", False),
            (f"{SGD_TORCH} vs keras SGD(wd)", False),
            (f"SGDP vs {SGDP_TORCH}", False),
            (f"{SGDP_TORCH} vs {SGD_TORCH}", False)],
    "adam": [("AdamP vs keras AdamW", True),
             (f"{ADAMP_TORCH} vs keras AdamW", False),
             (f"{ADAMW_TORCH} vs keras AdamW", False),
             (f"AdamP vs {ADAMP_TORCH}", False),
             (f"{ADAMP_TORCH} vs {ADAMW_TORCH}", False)],
    "resnet20": [("zoo ResNet-20, keras BN vs zoo ResNet-20", False),
                 ("PyTorch ResNet-20 eager vs zoo ResNet-20", False),
                 ("PyTorch ResNet-20 torch.compile(aot_eager) vs zoo ResNet-20", False)],
}


def _check_rows(stdout, backend, groups):
    """The rows of ``groups`` in order, per XLA mode, with the backend's target on the Keras
    arms and none on the plain-PyTorch peers; no arm left out."""
    modes = ["auto", "xla"] if backend == "tensorflow" else ["auto"]
    target = "<= 1.10" if backend == "torch" else "<= 1.05"
    expected = [(name, mode, target if targeted else "-")
                for group in groups for mode in modes for name, targeted in ROWS[group]
                if targeted or HAS_TORCH]  # without torch: no peer arms
    got = [(row.split(" | ")[1], row.split(" | ")[0].rsplit("jit ", 1)[1], row.split(" | ")[-2])
           for row in _rows(stdout)]
    assert got == expected
    assert ("torch.set_num_threads(" in stdout) == HAS_TORCH and "errors" not in stdout
    return modes


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_quick_one_group_per_backend(backend):
    stdout = _run(backend, "--only", "wn_dense,adam,sphere,monitor", "--warmup", "1")
    assert f"## {backend}: step time vs plain Keras" in stdout
    assert f"--backend {backend} --quick" in stdout  # the command that reproduces the table
    _check_rows(stdout, backend, ("wn_dense", "adam", "sphere", "monitor"))


def _check_resnet20(stdout, backend, groups=("resnet20",)):
    """The rows of ``groups`` (resnet20 among them): the zoo ResNet vs PyTorch eager and
    torch.compile(aot_eager); and the img/s of every resnet20 arm."""
    modes = _check_rows(stdout, backend, groups)
    assert "torch.compile(backend='aot_eager')" in stdout
    arms = ["zoo ResNet-20", "zoo ResNet-20, keras BN", "PyTorch ResNet-20 eager",
            "PyTorch ResNet-20 torch.compile(aot_eager)"]
    throughput = [line.strip("| ").split(" | ") for line in stdout.splitlines()
                  if line.startswith("| ResNet-8 8x8x3, batch 4") and line.count("|") == 5]
    assert [(group.rsplit("jit ", 1)[1], arm) for group, arm, _, _ in throughput] == [
        (mode, arm) for mode in modes for arm in arms]
    for _, _, ms, per_s in throughput:
        # img/s = batch / step time = 4e3 / ms; ms is printed to +-0.05, img/s to +-0.5
        ms, per_s = float(ms), float(per_s)
        assert ms > 0.05 and 4e3 / (ms + 0.05) - 0.5 <= per_s <= 4e3 / (ms - 0.05) + 0.5


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_quick_resnet20_and_sgd_on_torch():
    """The resnet20 group on the backend without XLA (the TensorFlow and JAX runs compile the
    ResNet with XLA: minutes on 2 cores, in the slow test below), and the sgd group's peer."""
    stdout = _run("torch", "--only", "sgd,resnet20", "--warmup", "1")
    _check_resnet20(stdout, "torch", ("sgd", "resnet20"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_quick_all_groups(backend):
    stdout = _run(backend)
    _check_resnet20(stdout, backend, ("wn_dense", "wn_conv", "sgd", "adam", "bn", "sphere",
                                      "monitor", "resnet20"))
    rows = _rows(stdout)
    per_mode = 2 if backend == "tensorflow" else 1
    # wn_dense 1, wn_conv 1, sgd 2, adam 1, bn 3, sphere 1, monitor 1, resnet20 1 arms vs
    # their baselines, per XLA mode; the plain-PyTorch peers: wn_dense 4 rows, sgd 2, adam 2,
    # resnet20 2
    assert len(rows) == (11 + 10) * per_mode


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


def test_rejects_unknown_backend_group_and_negative_settle():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    expected = ["invalid choice: 'mxnet'", "Received: only='nope'", "Received: settle=-1.0"]
    for args, message in zip((["--backend", "mxnet"], ["--backend", "jax", "--only", "nope"],
                               ["--backend", "jax", "--settle", "-1"]), expected, strict=True):
        out = subprocess.run([sys.executable, SCRIPT, "--quick", *args], capture_output=True,
                             text=True, cwd=ROOT, env=env, timeout=300)
        assert out.returncode == 2, out.stderr
        assert message in out.stderr
