"""FusedBatchNormalization: Keras' BatchNormalization with TensorFlow's fused training kernel.

Compared with the NumPy formulas of batch normalization (outputs, the three gradients, the
moving statistics) and with ``keras.layers.BatchNormalization`` on the same weights, on the
fused path (TensorFlow, rank 4, channels last, training) and on every fallback.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_normreg import layers
from keras_normreg.layers.fused_batch_norm import FUSED_MIN_EPSILON
from tests.backend_marks import FLOAT64
from tests.helpers import BACKEND, assert_config_roundtrip, assert_saved_model_equal, gradients

pytestmark = pytest.mark.backends  # a block's tests: run on every backend (backend_marks.py)


def _set(layer, shape, channels):
    layer.build(shape)
    layer.gamma.assign(np.linspace(0.5, 2.0, channels).astype("float32"))
    layer.beta.assign(np.linspace(-1.0, 1.0, channels).astype("float32"))
    layer.moving_mean.assign(np.full(channels, 0.3, "float32"))
    layer.moving_variance.assign(np.full(channels, 1.7, "float32"))


def _reference(x, u, axis, epsilon, momentum):
    """NumPy (float64) batch norm over every axis but ``axis``: output, d/dx, d/dgamma,
    d/dbeta of ``sum(y * u)``, and the moving mean / variance after one update."""
    x64, u64 = x.astype("float64"), u.astype("float64")
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    shape = [1] * x.ndim
    shape[axis] = -1
    channels = x.shape[axis]
    gamma = np.linspace(0.5, 2.0, channels).reshape(shape)
    beta = np.linspace(-1.0, 1.0, channels).reshape(shape)
    n = x.size // channels
    mu = x64.mean(axes, keepdims=True)
    var = ((x64 - mu) ** 2).mean(axes, keepdims=True)  # biased, as Keras
    inv = 1.0 / np.sqrt(var + epsilon)
    xhat = (x64 - mu) * inv
    y = gamma * xhat + beta
    # d/dx of sum(u * y) through mu and var (standard batch-norm backward)
    du = u64 * gamma
    dx = inv / n * (n * du - du.sum(axes, keepdims=True)
                    - xhat * (du * xhat).sum(axes, keepdims=True))
    dgamma = (u64 * xhat).sum(axes)
    dbeta = u64.sum(axes)
    moving_mean = 0.3 * momentum + mu.reshape(-1) * (1 - momentum)
    moving_var = 1.7 * momentum + var.reshape(-1) * (1 - momentum)
    return y, dx, dgamma, dbeta, moving_mean, moving_var


CASES = {
    # name: (input shape, layer kwargs): the first takes the fused kernel on TensorFlow,
    # the others Keras' own path everywhere (rank 2, channels first, rank 3, tiny epsilon)
    "nhwc": ((4, 3, 5, 6), {}),
    "rank2": ((16, 6), {}),
    "channels_first": ((4, 6, 3, 5), {"axis": 1}),
    "rank3": ((4, 7, 6), {}),
    "tiny_epsilon": ((4, 3, 5, 6), {"epsilon": FUSED_MIN_EPSILON / 10}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_step_matches_numpy_and_keras(case):
    """float32 bound: n <= 60 entries per channel, standardized values O(1); the sums in the
    gradients carry ~n * 6e-8 relative rounding, the inverse square root ~1e-7:
    rtol/atol 2e-5 (output, statistics) and 1e-4 (gradients, sums of 60 O(1) terms)."""
    shape, kwargs = CASES[case]
    axis = kwargs.get("axis", -1)
    channels = shape[axis]
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=shape).astype("float32")
    u = rng.normal(size=shape).astype("float32")
    epsilon = kwargs.get("epsilon", 1e-3)
    ref = _reference(x, u, axis, epsilon, momentum=0.9)
    ut = keras.ops.convert_to_tensor(u)
    results = {}
    for name, cls in (("fused", layers.FusedBatchNormalization),
                      ("keras", keras.layers.BatchNormalization)):
        # one layer for the gradients, an identical one for the output and the statistics
        # (gradients() runs statelessly on JAX and applies the assignments elsewhere)
        grad_layer, layer = cls(momentum=0.9, **kwargs), cls(momentum=0.9, **kwargs)
        _set(grad_layer, shape, channels)
        _set(layer, shape, channels)
        _, (dx, dgamma, dbeta) = gradients(
            lambda x, g=grad_layer: keras.ops.sum(g(x, training=True) * ut), [x],
            [grad_layer.gamma, grad_layer.beta])
        y = keras.ops.convert_to_numpy(layer(x, training=True))
        results[name] = (y, dx, dgamma, dbeta, layer.moving_mean.numpy(),
                         layer.moving_variance.numpy())
    for got in results.values():
        np.testing.assert_allclose(got[0], ref[0], rtol=2e-5, atol=2e-5)
        for g, r in zip(got[1:4], ref[1:4], strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got[4], ref[4], rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(got[5], ref[5], rtol=2e-5, atol=2e-5)


def test_fused_path_is_taken_exactly_where_documented():
    layer = layers.FusedBatchNormalization()
    x4 = keras.ops.zeros((2, 3, 3, 4))
    tf = BACKEND == "tensorflow"
    assert layer._fused_applies(x4, True, None) is tf
    assert not layer._fused_applies(x4, False, None)
    assert not layer._fused_applies(x4, True, keras.ops.ones((2, 3, 3)))
    assert not layer._fused_applies(keras.ops.zeros((2, 4)), True, None)
    assert not layers.FusedBatchNormalization(axis=1)._fused_applies(x4, True, None)
    if tf:  # synchronized is a TensorFlow-only argument of Keras' layer
        synced = layers.FusedBatchNormalization(synchronized=True)
        assert not synced._fused_applies(x4, True, None)
    assert not layers.FusedBatchNormalization(renorm=True)._fused_applies(x4, True, None)
    assert not layers.FusedBatchNormalization(epsilon=1e-6)._fused_applies(x4, True, None)
    if BACKEND != "jax" or FLOAT64:  # float64 inputs: Keras' float64 path, not the kernel's
        assert not layer._fused_applies(keras.ops.zeros((2, 3, 3, 4), "float64"), True, None)
    frozen = layers.FusedBatchNormalization()
    frozen.trainable = False
    assert not frozen._fused_applies(x4, True, None)


def test_no_scale_no_center_and_inference_match_keras():
    """scale=False / center=False feed ones / zeros to the kernel; inference is Keras' path.
    Same float32 bound as above."""
    x = np.random.default_rng(1).normal(size=(3, 4, 4, 5)).astype("float32")
    for kwargs in ({"scale": False}, {"center": False}, {"scale": False, "center": False}):
        a = layers.FusedBatchNormalization(**kwargs)
        b = keras.layers.BatchNormalization(**kwargs)
        for training in (True, False):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a(x, training=training)),
                                       keras.ops.convert_to_numpy(b(x, training=training)),
                                       rtol=2e-5, atol=2e-5)


def test_mixed_precision_output_dtype_and_values():
    """float16 compute: the kernel runs in float32 (like Keras), the output is cast back;
    float16 rounding of O(1) outputs: 1e-3 relative, atol 5e-3 for values up to ~4."""
    x = np.random.default_rng(2).normal(size=(2, 3, 3, 4)).astype("float32")
    a = layers.FusedBatchNormalization(dtype="mixed_float16")
    b = keras.layers.BatchNormalization(dtype="mixed_float16")
    ya, yb = a(x.astype("float16"), training=True), b(x.astype("float16"), training=True)
    assert keras.backend.standardize_dtype(ya.dtype) == "float16"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ya).astype("float32"),
                               keras.ops.convert_to_numpy(yb).astype("float32"),
                               rtol=1e-3, atol=5e-3)


def test_fit_under_xla_and_save_load(tmp_path):
    """A compiled fit (XLA forced where the backend has it) trains the layer, and the model
    saves and loads with the same inference outputs (safe_mode)."""
    inputs = keras.Input((4, 4, 3))
    hidden = keras.layers.Conv2D(5, 3, padding="same")(inputs)
    outputs = layers.FusedBatchNormalization(name="bn")(hidden)
    model = keras.Model(inputs, outputs)
    jit = BACKEND in ("tensorflow", "jax")
    model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=jit)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 4, 4, 3)).astype("float32")
    y = rng.normal(size=(8, 4, 4, 5)).astype("float32")
    before = model.get_layer("bn").moving_mean.numpy().copy()
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    assert not np.allclose(model.get_layer("bn").moving_mean.numpy(), before)
    assert_saved_model_equal(model, x, tmp_path)
    assert_config_roundtrip(layers.FusedBatchNormalization(momentum=0.8, epsilon=1e-4))
