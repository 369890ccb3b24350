"""The optimizers under tf.distribute.MirroredStrategy with 2 logical CPU devices.

Logical devices must be configured before TensorFlow initializes, so the check runs in a
subprocess (it would break the other tests otherwise). The subprocess trains the same model from
the same weights on the same data with the default strategy and with MirroredStrategy and
compares the weights; it also checks sphere norms and the decayed set under the strategy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.backend_marks import requires_tensorflow

SCRIPT = textwrap.dedent(
    r"""
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from keras_normreg import optimizers as O

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")

    def build():
        inp = keras.Input((6,))
        h = keras.layers.Dense(8, name="hidden")(inp)
        h = keras.layers.LayerNormalization(name="ln")(h)
        h = keras.layers.ReLU()(h)
        out = keras.layers.Dense(2, name="head")(h)
        return keras.Model(inp, out)

    keras.utils.set_random_seed(0)
    w0 = build().get_weights()

    FACTORIES = {
        "dwd_sgd": lambda: O.DecoupledWeightDecay(
            keras.optimizers.SGD(0.1, momentum=0.9), 0.05, semantics="corrected",
            exclude=("bias", "normalization"), sphere=("glob:hidden/kernel",)),
        "dwd_adam_schedule": lambda: O.DecoupledWeightDecay(
            keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(0.01, 1, 0.9)),
            0.1, semantics="schedule", decay_schedule=keras.optimizers.schedules.
            ExponentialDecay(1.0, 2, 0.5), exclude=("1d",)),
        "sgdp": lambda: O.SGDP(0.1, momentum=0.9, weight_decay=0.05, nesterov=True),
        "adamp": lambda: O.AdamP(0.01, weight_decay=0.05),
        "lso_dwd": lambda: keras.optimizers.LossScaleOptimizer(
            O.DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.05, exclude=())),
    }

    def run(strategy, name):
        with strategy.scope():
            model = build()
            model.set_weights(w0)
            model.compile(optimizer=FACTORIES[name](), loss="mse", jit_compile=False)
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        return model

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    for name in FACTORIES:
        a = run(mirrored, name)
        b = run(tf.distribute.get_strategy(), name)
        for va, vb in zip(a.weights, b.weights):
            np.testing.assert_allclose(va.numpy(), vb.numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name}: {va.path}")
        assert not np.allclose(a.get_weights()[0], w0[0]), name  # it trained
        if name == "dwd_sgd":
            k = a.get_layer("hidden").kernel.numpy()
            np.testing.assert_allclose(np.linalg.norm(k, axis=0), 1.0, atol=1e-6)
            plan = a.optimizer.decay_plan()
            assert plan["hidden/kernel"] == "sphere" and plan["head/kernel"] == "decay", plan
            assert plan["hidden/bias"] == "skip" and plan["ln/gamma"] == "skip", plan
        print("ok", name, flush=True)
    print("ALL OK")
    """
)


@requires_tensorflow
def test_mirrored_strategy_matches_single_device():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or "ALL OK" not in proc.stdout:
        pytest.fail(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
