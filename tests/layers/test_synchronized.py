"""Synchronized (cross-replica) statistics under tf.distribute.MirroredStrategy.

Two logical CPU devices must be configured before TensorFlow initializes its devices, which the
rest of the test session has long done; so the distributed part runs in a fresh interpreter
(``python -m tests.layers.test_synchronized``) that prints its measurements as JSON, and the
tests here only check those numbers. The worker compares against NumPy full-batch formulas.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.backend_marks import requires_tensorflow

pytestmark = requires_tensorflow  # tf.distribute.MirroredStrategy: TensorFlow only

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------- NumPy reference
def _ref(x, axis, kind, k):
    ax = axis % x.ndim
    xc = np.moveaxis(np.asarray(x, np.float64), ax, 0).reshape(x.shape[ax], -1)
    mu = xc.mean(axis=1)
    dev = np.abs(xc - mu[:, None])
    n = xc.shape[1]
    if kind == "l1":
        sigma = math.sqrt(math.pi / 2) * dev.mean(axis=1)
    else:
        c = 0.5 * (1 + math.sqrt(math.pi * math.log(4))) / math.sqrt(2 * math.log(n))
        sigma = c * (-np.sort(-dev, axis=1))[:, : min(k, n)].mean(axis=1)
    shape = [1] * x.ndim
    shape[ax] = -1
    y = (x - mu.reshape(shape)) / (sigma.reshape(shape) + 1e-3)
    return y, mu, sigma


def _worker():  # pragma: no cover - runs in the subprocess
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras

    from keras_normreg import layers

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    out = {"replicas": strategy.num_replicas_in_sync}

    def distribute(x):
        half = x.shape[0] // 2
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(x[ctx.replica_id_in_sync_group * half:][:half])
        )

    def gather(per_replica):
        return np.concatenate([t.numpy() for t in strategy.experimental_local_results(per_replica)])

    cases = [("l1", (16, 5), -1, 10), ("topk", (16, 5), -1, 3), ("topk", (16, 5), -1, 10),
             ("l1", (8, 3, 4, 4), 1, 10), ("topk", (8, 3, 4, 2), 1, 7)]
    for kind, shape, axis, k in cases:
        name = f"{kind}-{len(shape)}d-k{k}"
        cls = layers.L1BatchNormalization if kind == "l1" else layers.TopKBatchNormalization
        kw = {"k": k} if kind == "topk" else {}
        x = (rng.normal(size=shape) * 2 + rng.normal(size=shape[axis]).reshape(
            [-1 if i == axis % len(shape) else 1 for i in range(len(shape))])).astype("float32")
        # make the two replicas' halves differ so local statistics would be visibly wrong
        x[shape[0] // 2:] = x[shape[0] // 2:] * 3 + 1
        weights = rng.normal(size=shape).astype("float32")
        y_ref, mu, sigma = _ref(x, axis, kind, k)
        with strategy.scope():
            sync = cls(axis=axis, momentum=0.5, synchronized=True, **kw)
            local = cls(axis=axis, momentum=0.5, synchronized=False, **kw)
            sync.build(shape)
            local.build(shape)

        @tf.function
        def step(xr, wr, layer):
            with tf.GradientTape() as tape:
                tape.watch(xr)
                y = layer(xr, training=True)
                loss = tf.reduce_sum(y * wr)
            return y, tape.gradient(loss, xr)

        y_sync, g_sync = strategy.run(step, args=(distribute(x), distribute(weights), sync))
        y_local, _ = strategy.run(step, args=(distribute(x), distribute(weights), local))
        # Single-device full-batch gradient of the same total loss.
        single = cls(axis=axis, synchronized=False, **kw)
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(single(xt, training=True) * weights)
        g_single = tape.gradient(loss, xt).numpy()
        mm = [v.numpy() for v in sync.moving_mean.value.values]
        mv = [v.numpy() for v in sync.moving_variance.value.values]
        out[name] = {
            "y_err": float(np.abs(gather(y_sync) - y_ref).max()),
            "y_local_err": float(np.abs(gather(y_local) - y_ref).max()),
            "grad_err": float(np.abs(gather(g_sync) - g_single).max()),
            "grad_scale": float(np.abs(g_single).max()),
            "moving_mean_err": float(max(np.abs(m - 0.5 * mu).max() for m in mm)),
            "moving_var_err": float(max(np.abs(v - (0.5 + 0.5 * sigma**2)).max() for v in mv)),
        }

    # model.fit with synchronized layers and a data-initialized WeightNormalization.
    x = rng.normal(size=(32, 6)).astype("float32")
    x[16:] = x[16:] * 3 + 2
    y = rng.normal(size=(32, 2)).astype("float32")
    with strategy.scope():
        wn = layers.WeightNormalization(keras.layers.Dense(4), data_init=True)
        model = keras.Sequential([
            keras.Input((6,)), wn,
            layers.L1BatchNormalization(synchronized=True),
            layers.TopKBatchNormalization(synchronized=True, k=5),
            keras.layers.Dense(2),
        ])
        model.compile(keras.optimizers.SGD(0.0), "mse")
    v = wn.v.numpy().astype(np.float64)
    t = x @ (v / np.linalg.norm(v, axis=0))
    g_ref = 1 / np.sqrt(t.var(axis=0) + 1e-6)
    hist = model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    gs = [g.numpy() for g in wn.g.value.values]
    bs = [b.numpy() for b in wn.bias.value.values]
    out["fit"] = {
        "loss_finite": bool(np.isfinite(hist.history["loss"]).all()),
        "g_err": float(max(np.abs(g - g_ref).max() for g in gs)),
        "bias_err": float(max(np.abs(b + t.mean(axis=0) * g_ref).max() for b in bs)),
        "initialized": [bool(f.numpy()) for f in wn.initialized.value.values],
    }
    print("RESULT " + json.dumps(out))


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.layers.test_synchronized"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


CASES = ["l1-2d-k10", "topk-2d-k3", "topk-2d-k10", "l1-4d-k10", "topk-4d-k7"]


def test_two_replicas(results):
    assert results["replicas"] == 2


@pytest.mark.parametrize("case", CASES)
def test_synchronized_output_equals_full_batch_formula(results, case):
    r = results[case]
    assert r["y_err"] < 1e-4
    # The unsynchronized layer normalizes each half on its own: visibly different.
    assert r["y_local_err"] > 0.1


@pytest.mark.parametrize("case", CASES)
def test_synchronized_gradient_and_moving_stats(results, case):
    r = results[case]
    assert r["grad_err"] < 1e-4 * max(1.0, r["grad_scale"])
    assert r["moving_mean_err"] < 1e-5
    assert r["moving_var_err"] < 1e-4


def test_fit_with_data_init_uses_global_batch(results):
    r = results["fit"]
    assert r["loss_finite"]
    assert r["initialized"] == [True, True]
    assert r["g_err"] < 1e-4
    assert r["bias_err"] < 1e-4


if __name__ == "__main__":
    _worker()
