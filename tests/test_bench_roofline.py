"""bench/bench_roofline.py: its --quick run (JAX, in a subprocess) and its byte counts against
hand counts."""

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


def test_quick_run_prints_the_table():
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_roofline.py"),
                          "--quick"], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split(" | ") for line in out.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| benchmark")]
    assert [r[1] for r in rows] == ["WeightNorm Dense vs plain Dense", "SGDP vs keras SGD(wd)",
                                    "AdamP vs keras AdamW"]
    assert "GB/s" in out.stdout and "command:" in out.stdout
