"""bench/bench_roofline.py: its --quick runs (JAX's byte counts; the eager kernels' arm on PyTorch and
TensorFlow, in subprocesses) and its byte counts against hand counts."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import pytest

from tests.helpers import load_bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_minimum_extra_bytes_by_hand():
    """3 x the float32 bytes of the rank >= 2 weights for the projection optimizers, 2 x for
    weight normalization: an MLP with kernels 6x5 and 5x3 (biases and BN not counted)."""
    roofline = load_bench("bench_roofline")
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(5)(inputs)
    hidden = keras.layers.BatchNormalization()(hidden)
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    kernel_bytes = (6 * 5 + 5 * 3) * 4
    assert roofline.minimum_extra_bytes("sgd", model) == 3 * kernel_bytes
    assert roofline.minimum_extra_bytes("adam", model) == 3 * kernel_bytes
    assert roofline.minimum_extra_bytes("wn_dense", model) == 2 * kernel_bytes


@pytest.mark.backends  # selected by the JAX session of `make test`
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="XLA cost analysis: JAX only")
def test_step_bytes_of_a_dense_step_within_hand_bounds():
    """Plain SGD on Dense(64), batch 8: the step reads the kernel (forward), writes its gradient
    or the new kernel and reads the kernel again for the update, so it moves at least 2 kernels
    (2 x 16 KiB); everything it touches is a few kernel-sized and batch-sized buffers (< 20)."""
    import numpy as np

    roofline = load_bench("bench_roofline")
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dense(64)(inputs))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.ones((8, 64), "float32")
    model.train_on_batch(x, x)
    nbytes = roofline.step_bytes(model, x, x)
    kernel = 64 * 64 * 4
    assert 2 * kernel <= nbytes <= 20 * kernel


def _quick_rows(backend):
    """stdout and table rows (split on " | ") of ``bench_roofline.py --quick`` on ``backend``."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_roofline.py"),
                          "--quick"], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split(" | ") for line in out.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| benchmark")]
    return out.stdout, rows


def test_quick_run_prints_the_table():
    stdout, rows = _quick_rows("jax")
    assert [r[1] for r in rows] == ["WeightNorm Dense vs plain Dense", "SGDP vs keras SGD(wd)",
                                    "AdamP vs keras AdamW"]
    assert "GB/s" in stdout and "command: KERAS_BACKEND=jax" in stdout


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_quick_eager_run_has_the_eager_kernels_column(backend):
    """Without XLA the table has the eager kernels' ratio (an arm timed in the same rounds)
    instead of byte counts: a ratio for every row."""
    if backend == "torch":
        pytest.importorskip("torch")
    stdout, rows = _quick_rows(backend)
    kind = {"torch": "PyTorch", "tensorflow": "TensorFlow"}[backend]
    assert f"## Roofline on {kind}" in stdout and f"{kind} (no XLA) a + b" in stdout
    assert [r[1] for r in rows] == ["WeightNorm Dense vs plain Dense", "SGDP vs keras SGD(wd)",
                                    "AdamP vs keras AdamW"]
    assert all(float(r[4]) > 0 for r in rows)
    # the algorithm bounds: 1 + minimum bytes / bandwidth / baseline time, printed to 3
    # decimals (--quick's kernels are a few hundred bytes: 1.000)
    assert all(float(r[6]) >= 1 and float(r[7].rstrip(" |")) >= 1 for r in rows)


def test_extra_kernels_run_on_the_models_shapes():
    """The eager kernels: none on JAX (its table counts bytes); on TensorFlow they
    run on tensors of the model's shapes (weight normalization's outputs: y and dz of the
    batch's shape, dv of the kernel's)."""
    roofline = load_bench("bench_roofline")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(5)(inputs)))
    assert roofline.extra_kernels("sgd", model, "jax", 4) is None
    assert roofline._kernel_shapes(model) == [(6, 5), (5, 3)]
    if keras.backend.backend() == "tensorflow":  # one (coef, ratio) per kernel, coef per unit
        out = roofline.extra_kernels("adam", model, "tensorflow", 4)()
        assert [tuple(coef.shape) for coef, _ in out] == [(5,), (3,)]
        inputs = keras.Input((6,))
        dense = keras.Model(inputs, keras.layers.Dense(5)(inputs))
        y, dz, dv = roofline.extra_kernels("wn_dense", dense, "tensorflow", 4)()
        assert (tuple(y.shape), tuple(dz.shape), tuple(dv.shape)) == ((4, 5), (4, 5), (6, 5))
