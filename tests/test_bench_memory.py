"""bench/_memory.py against hand-counted buffers: XLA's memory analysis of a function whose
buffers are known, the resident-set peak of a step that writes a known array, TensorFlow's
allocator counter on a known transient, and each backend's train step of one Dense layer (the
kernel gradient is a buffer of exactly 4·d² bytes that every step must materialize)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import load_bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_memory = load_bench("_memory")

MIB = 2**20
# Linux keeps a process' RSS in per-CPU counters folded in batches of max(32, 2·CPUs) pages, and
# VmRSS / VmHWM read the folded total: each of the two reads may miss up to a batch per CPU.
_CPUS = os.cpu_count() or 1
RSS_SLACK = 2 * max(32, 2 * _CPUS) * _CPUS * 4096


def test_jax_compiled_counts_a_materialized_intermediate():
    """f(a, b) = sum(sort(a @ b.T)): the (n, n) product must exist in memory before the sort
    (a sort is not fused into its operand), so temp >= 4 n² bytes; the arguments are exactly
    the two (n, k) float32 inputs and the output one float32 scalar, none donated."""
    jnp = pytest.importorskip("jax.numpy")
    n, k = 512, 8
    a = np.ones((n, k), np.float32)

    def f(a, b):
        return jnp.sum(jnp.sort(a @ b.T, axis=1))

    found = _memory.jax_compiled(f, a, a)
    assert found["argument"] == 2 * 4 * n * k
    assert found["output"] == 4
    assert found["alias"] == 0
    assert found["temp"] >= 4 * n * n
    assert found["total"] == found["argument"] + found["output"] + found["temp"]


def test_jax_compiled_donation_is_aliased():
    """x -> x + 1 with x donated: the output reuses the input buffer (alias = its 4 n bytes)."""
    pytest.importorskip("jax")
    x = np.ones(4096, np.float32)
    found = _memory.jax_compiled(lambda x: x + 1, x, donate_argnums=0)
    assert found["argument"] == found["output"] == found["alias"] == 4 * x.size
    assert found["total"] == 4 * x.size + found["temp"]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux only")
def test_rss_step_peak_sees_a_transient_array():
    """A step writing a 64 MiB array and dropping it: glibc maps blocks that large directly
    (above its largest dynamic mmap threshold, 32 MiB) and unmaps them when freed, so the peak
    grows by the array (whole pages, all written), up to the kernel counters' RSS_SLACK.
    Upper bound: the array plus 16 MiB for whatever else the interpreter allocates meanwhile."""
    size = 64 * MIB

    def step():
        a = np.ones(size // 4, np.float32)
        return float(a[-1])

    step()
    grown = _memory.rss_step_peak(step, 2)
    assert size - RSS_SLACK <= grown <= size + 16 * MIB


def test_tf_step_peak_sees_a_transient_tensor():
    """TensorFlow's allocator counter on a tf.function whose (n, n) product lives only inside
    the call: >= its 4 n² bytes (1 MiB, above the oneDNN allocator's 256 KiB small-block pool,
    which keeps no statistics); <= 8 such buffers (the product, the sort's values and indices
    and the copies between them all fit)."""
    tf = pytest.importorskip("tensorflow")
    n = 512
    x = tf.ones((n, n))
    f = tf.function(lambda x: tf.reduce_sum(tf.sort(tf.matmul(x, x, transpose_b=True))))
    f(x)
    try:
        grown = _memory.tf_step_peak(lambda: f(x), 2)
    except _memory.Unavailable as e:  # TF_ENABLE_ONEDNN_OPTS=0 or a non-x86 build
        pytest.skip(str(e))
    assert 4 * n * n <= grown <= 8 * 4 * n * n


CHILD = """
import json, sys
sys.path.insert(0, {bench!r})
import keras, numpy as np
import _memory
d, b = 512, 128
inp = keras.Input((d,))
model = keras.Model(inp, keras.layers.Dense(d)(inp))
model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse")
x = np.ones((b, d), np.float32)
step = lambda: model.train_on_batch(x, x)
step(); step()
if keras.backend.backend() == "jax":
    print(json.dumps(_memory.jax_train_step(model, x, x)))
else:
    print(json.dumps({{"peak": _memory.torch_step_peak(model, step, 3)[0]}}))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_dense_train_step(backend):
    """Dense(512) on 512 features, batch 128, SGD(momentum), mse: every step materializes the
    kernel gradient (4·512² = 1 MiB) and the output (4·128·512 = 256 KiB): at least 1.25 MiB;
    at most 4 MiB (two kernel-sized and four output-sized buffers, with room to spare). JAX's
    arguments hold at least kernel + bias, their momenta, x and y. torch runs in a process with
    the fixed mmap threshold, as bench_backends.py runs its children (its lower bound less the
    kernel counters' RSS_SLACK)."""
    pytest.importorskip(backend)
    d, b = 512, 128
    env = {**os.environ, **_memory.MALLOC_ENV, "KERAS_BACKEND": backend,
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", CHILD.format(bench=os.path.join(ROOT, "bench"))],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    low, high = 4 * d * d + 4 * b * d, 4 * MIB
    if backend == "jax":
        assert low <= found["temp"] <= high
        assert found["argument"] >= 2 * 4 * (d * d + d) + 2 * 4 * b * d
    else:
        assert low - RSS_SLACK <= found["peak"] <= high
