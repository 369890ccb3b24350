"""WeightNormalization: w = g * v / ||v|| per output unit, data init, fixed gain, saving."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_normreg import layers
from keras_normreg.layers import WeightNormalization
from tests.helpers import (
    BACKEND,
    assert_config_roundtrip,
    assert_saved_model_equal,
    assert_serialize_roundtrip,
    gradients,
    requires_float64,
)

# (factory of the inner layer, input shape, NumPy axes of the norm of the kernel)
LAYER_CASES = {
    "dense": (lambda: keras.layers.Dense(4, activation="tanh"), (5, 3), (0,)),
    "dense_3d": (lambda: keras.layers.Dense(4), (2, 5, 3), (0,)),
    # rows <= fan_in: the output-scaling path, (x @ v) * (g / ||v||)
    "dense_wide": (lambda: keras.layers.Dense(4, activation="tanh"), (3, 6), (0,)),
    "dense_3d_wide": (lambda: keras.layers.Dense(4), (2, 2, 6), (0,)),
    "conv1d_causal": (lambda: keras.layers.Conv1D(4, 3, padding="causal", dilation_rate=2),
                      (2, 9, 3), (0, 1)),
    "conv2d": (lambda: keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
               (2, 7, 7, 3), (0, 1, 2)),
    "conv2d_groups": (lambda: keras.layers.Conv2D(4, (2, 3), groups=2, use_bias=False),
                      (2, 6, 6, 4), (0, 1, 2)),
    "conv2d_channels_first": (lambda: keras.layers.Conv2D(4, 3, data_format="channels_first"),
                              (2, 3, 7, 7), (0, 1, 2)),
    "conv3d": (lambda: keras.layers.Conv3D(2, 2), (2, 4, 4, 4, 3), (0, 1, 2, 3)),
    "depthwise1d": (lambda: keras.layers.DepthwiseConv1D(3, depth_multiplier=2), (2, 8, 3),
                    (0,)),
    "depthwise2d": (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"),
                    (2, 6, 6, 3), (0, 1)),
}


def _build_random(name, rng, **kwargs):
    factory, shape, axes = LAYER_CASES[name]
    wrapper = WeightNormalization(factory(), **kwargs)
    wrapper.build(shape)
    wrapper.v.assign(rng.normal(size=wrapper.v.shape))
    if wrapper.g.trainable:
        wrapper.g.assign(rng.uniform(0.5, 2.0, size=wrapper.g.shape))
    if wrapper.bias is not None:
        wrapper.bias.assign(rng.normal(size=wrapper.bias.shape))
    return wrapper, shape, axes


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_output_equals_plain_layer_with_formula_kernel(name):
    rng = np.random.default_rng(0)
    wrapper, shape, axes = _build_random(name, rng)
    v, g = wrapper.v.numpy().astype(np.float64), wrapper.g.numpy().astype(np.float64)
    w = g * v / np.sqrt(np.sum(v**2, axis=axes, keepdims=True))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(wrapper.effective_kernel()), w,
                               rtol=1e-5, atol=1e-6)
    # Independent reference: the plain Keras layer with kernel w.
    plain = LAYER_CASES[name][0]()
    plain.build(shape)
    plain.weights[0].assign(w)
    if wrapper.bias is not None:
        plain.bias.assign(wrapper.bias.numpy())
    x = rng.normal(size=shape).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(wrapper(x)),
                               keras.ops.convert_to_numpy(plain(x)), rtol=1e-4, atol=1e-5)
    assert wrapper.compute_output_shape(shape) == tuple(plain(x).shape)


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_output_invariant_to_scaling_v(name):
    rng = np.random.default_rng(1)
    wrapper, shape, _ = _build_random(name, rng)
    x = rng.normal(size=shape).astype("float32")
    y0 = keras.ops.convert_to_numpy(wrapper(x))
    wrapper.v.assign(wrapper.v.numpy() * 3.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(wrapper(x)), y0, rtol=1e-5, atol=1e-6)


def test_channels_first_bias_when_width_equals_filters():
    # keras.ops.add takes a bias_add fast path that broadcasts a (1, C, 1, 1) bias along the
    # last axis when W == C (Keras 3.15), so plain Conv2D(channels_first) is wrong there.
    wrapper = WeightNormalization(keras.layers.Conv2D(4, 3, data_format="channels_first"))
    x = np.random.default_rng(8).normal(size=(2, 3, 6, 6)).astype("float32")  # output 4x4x4
    y0 = keras.ops.convert_to_numpy(wrapper(x))
    wrapper.bias.assign([1.0, 2.0, 3.0, 4.0])
    diff = keras.ops.convert_to_numpy(wrapper(x)) - y0
    np.testing.assert_allclose(diff, np.broadcast_to(np.reshape([1.0, 2, 3, 4], (1, 4, 1, 1)),
                                                     y0.shape), atol=1e-5)


def test_variables_names_and_no_inner_kernel():
    wrapper = WeightNormalization(keras.layers.Dense(3), name="wn")
    wrapper.build((None, 5))
    assert [w.path for w in wrapper.trainable_weights] == ["wn/v", "wn/g", "wn/bias"]
    assert wrapper.layer.weights == [] and not wrapper.layer.built
    assert tuple(wrapper.v.shape) == (5, 3) and tuple(wrapper.g.shape) == (3,)
    # g starts at ||v|| so that the initial kernel is v itself (Keras initializer semantics).
    np.testing.assert_allclose(wrapper.g.numpy(), np.linalg.norm(wrapper.v.numpy(), axis=0),
                               rtol=1e-6)
    dw = WeightNormalization(keras.layers.DepthwiseConv2D(3, depth_multiplier=2))
    dw.build((None, 8, 8, 4))
    assert tuple(dw.g.shape) == (4, 2) and tuple(dw.bias.shape) == (8,)


def test_inner_regularizers_and_constraint_apply_to_v_and_bias():
    wrapper = WeightNormalization(keras.layers.Dense(
        3, kernel_regularizer=keras.regularizers.L2(0.1), bias_regularizer="l1",
        kernel_constraint="non_neg"))
    wrapper.build((None, 2))
    assert wrapper.v.regularizer is wrapper.layer.kernel_regularizer
    assert isinstance(wrapper.v.constraint, keras.constraints.NonNeg)
    v = wrapper.v.numpy()
    expected = 0.1 * np.sum(v**2) + 0.01 * np.sum(np.abs(wrapper.bias.numpy()))
    np.testing.assert_allclose(float(sum(wrapper.losses)), expected, rtol=1e-5)
    # The inner activity regularizer acts on the wrapper's output.
    act = WeightNormalization(keras.layers.Dense(2, activity_regularizer=keras.regularizers.L1(
        0.5)))
    y = keras.ops.convert_to_numpy(act(np.ones((3, 2), "float32")))
    np.testing.assert_allclose(float(sum(act.losses)), 0.5 * np.abs(y).sum() / 3, rtol=1e-5)


@pytest.mark.parametrize("name,jit", [
    ("dense", False),
    pytest.param("dense", True, marks=pytest.mark.skipif(
        BACKEND == "torch", reason="XLA: TensorFlow and JAX (torch.compile is not XLA)")),
    ("conv2d_channels_first", False), ("depthwise2d", False), ("conv1d_causal", False)])
def test_data_init_in_fit_gives_standardized_preactivations(name, jit):
    rng = np.random.default_rng(2)
    factory, shape, _ = LAYER_CASES[name]
    inner = factory()
    inner.activation = keras.activations.get(None)
    inner_config = inner.get_config()
    wrapper = WeightNormalization(inner.__class__.from_config(inner_config), data_init=True)
    x = (rng.normal(size=(16,) + shape[1:]) * 3 + 1).astype("float32")
    model = keras.Sequential([keras.Input(shape[1:]), wrapper])
    # lr 0: only the init changes weights; jit: XLA-compiled train step (cond + assign inside)
    model.compile(keras.optimizers.SGD(0.0), "mse", jit_compile=jit)
    y = np.zeros((16,) + model.output_shape[1:], "float32")
    if BACKEND == "jax":  # JAX's trainer drops assignments to g/bias: init eagerly (documented)
        model(x, training=True)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    assert bool(wrapper.initialized.numpy())
    pre = keras.ops.convert_to_numpy(wrapper(x, training=False)).astype(np.float64)
    axis = 1 if "channels_first" in name else -1
    red = tuple(i for i in range(pre.ndim) if i != axis % pre.ndim)
    np.testing.assert_allclose(pre.mean(axis=red), 0.0, atol=1e-4)
    np.testing.assert_allclose(pre.var(axis=red), 1.0, atol=1e-3)
    # A second training call does not re-initialize.
    g = wrapper.g.numpy().copy()
    wrapper(x * 5.0, training=True)
    np.testing.assert_array_equal(wrapper.g.numpy(), g)


def test_data_init_numpy_formula_eager():
    rng = np.random.default_rng(3)
    wrapper = WeightNormalization(keras.layers.Dense(3), data_init=True)
    x = rng.normal(size=(20, 4)).astype("float32") * [1, 2, 3, 4]
    wrapper.build(x.shape)
    v = wrapper.v.numpy().astype(np.float64)
    t = x @ (v / np.linalg.norm(v, axis=0))
    wrapper(x, training=False)  # inference does not initialize
    assert not bool(wrapper.initialized.numpy())
    wrapper(x, training=True)
    g = 1 / np.sqrt(t.var(axis=0) + 1e-6)
    np.testing.assert_allclose(wrapper.g.numpy(), g, rtol=1e-4)
    np.testing.assert_allclose(wrapper.bias.numpy(), -t.mean(axis=0) * g, rtol=1e-4, atol=1e-5)


def test_data_init_with_fixed_g_sets_only_bias():
    rng = np.random.default_rng(4)
    wrapper = WeightNormalization(keras.layers.Dense(3), data_init=True, fixed_g=2.0)
    x = rng.normal(size=(20, 4)).astype("float32") + 3
    y = keras.ops.convert_to_numpy(wrapper(x, training=True))
    np.testing.assert_array_equal(wrapper.g.numpy(), 2.0)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)


def test_fixed_g_stays_fixed_during_training():
    rng = np.random.default_rng(5)
    wrapper = WeightNormalization(keras.layers.Conv2D(3, 3), fixed_g=1.5)
    model = keras.Sequential([keras.Input((6, 6, 2)), wrapper, keras.layers.Flatten(),
                              keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.5), "mse")
    assert not wrapper.g.trainable
    assert [w.name for w in wrapper.trainable_weights] == ["v", "bias"]
    v0 = wrapper.v.numpy().copy()
    model.fit(rng.normal(size=(8, 6, 6, 2)), rng.normal(size=(8, 1)), epochs=2, verbose=0)
    np.testing.assert_array_equal(wrapper.g.numpy(), 1.5)
    assert not np.allclose(wrapper.v.numpy(), v0)
    w = keras.ops.convert_to_numpy(wrapper.effective_kernel())
    np.testing.assert_allclose(np.linalg.norm(w.reshape(-1, 3), axis=0), 1.5, rtol=1e-5)


def test_mixed_precision():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 6, 6, 3)).astype("float32")
    ref = WeightNormalization(keras.layers.Conv2D(4, 3))
    mixed = WeightNormalization(keras.layers.Conv2D(4, 3), dtype="mixed_float16")
    ref.build(x.shape)
    mixed.build(x.shape)
    for a, b in zip(ref.weights, mixed.weights, strict=True):
        b.assign(a.numpy())
    y = mixed(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert mixed.v.dtype == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y).astype("float32"),
                               keras.ops.convert_to_numpy(ref(x)), atol=1e-2, rtol=1e-2)


@requires_float64
def test_inner_dtype_is_inherited():
    wrapper = WeightNormalization(keras.layers.Dense(2, dtype="float64"))
    assert wrapper.dtype_policy.name == "float64"
    y = wrapper(np.ones((1, 3)))
    assert keras.backend.standardize_dtype(y.dtype) == "float64"


@pytest.mark.parametrize("kwargs", [{}, {"data_init": True}, {"fixed_g": 0.7, "epsilon": 1e-8}])
def test_config_roundtrip_and_keras_save_load(kwargs, tmp_path):
    wrapper = WeightNormalization(keras.layers.Conv2D(3, 3, padding="same", activation="relu"),
                                  **kwargs)
    clone = assert_config_roundtrip(wrapper)
    assert isinstance(clone.layer, keras.layers.Conv2D) and clone.layer.filters == 3
    assert_serialize_roundtrip(wrapper)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4, 5, 5, 2)).astype("float32")
    model = keras.Sequential([keras.Input((5, 5, 2)), wrapper,
                              WeightNormalization(keras.layers.Dense(2))])
    model(x, training=True)  # runs the data init when enabled
    loaded = assert_saved_model_equal(model, x, tmp_path)
    assert loaded.layers[0].get_config() == model.layers[0].get_config()
    if kwargs.get("data_init"):
        assert bool(loaded.layers[0].initialized.numpy())
        np.testing.assert_array_equal(loaded.layers[0].g.numpy(), model.layers[0].g.numpy())


# ----------------------------------------------------------------------------- errors
class _CountingWeightNormalization(WeightNormalization):
    """Counts the Python executions of ``call`` (traces and eager runs)."""

    calls = 0

    def call(self, inputs, training=None):
        type(self).calls += 1
        return super().call(inputs, training=training)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_train_on_batch_does_not_rebuild_the_model(kind):
    """The inner layer is never built; Keras' trainers rebuild a model symbolically (running
    every layer's ``call`` once more) before each ``train_on_batch`` while a nested layer is
    unbuilt. After the first step (the trace), a compiled step runs no Python ``call``
    (TensorFlow, JAX) and an eager one exactly one per step (PyTorch)."""
    if kind == "dense":
        inner, shape = keras.layers.Dense(4), (6,)
    else:
        inner, shape = keras.layers.Conv2D(3, 3, padding="same"), (5, 5, 2)
    inputs = keras.Input(shape)
    wrapper = _CountingWeightNormalization(inner)
    model = keras.Model(inputs, wrapper(inputs))
    model.compile(keras.optimizers.SGD(0.01), "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, *shape)).astype("float32")
    y = rng.normal(size=(8, *model.output_shape[1:])).astype("float32")
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
    before = _CountingWeightNormalization.calls
    steps = 3
    for _ in range(steps):
        model.train_on_batch(x, y)
    per_step = 1 if keras.backend.backend() == "torch" else 0
    assert _CountingWeightNormalization.calls - before == per_step * steps
    assert wrapper.layer not in wrapper._flatten_layers(include_self=False)
    assert not wrapper.layer.built


def test_rejects_unsupported_layer():
    with pytest.raises(ValueError, match=r"Argument `layer` must be a Keras layer of type Dense.*"
                                         r"Received: layer=<LSTM"):
        WeightNormalization(keras.layers.LSTM(3))
    with pytest.raises(ValueError, match=r"`layer`.*Received: layer='dense'"):
        WeightNormalization("dense")
    with pytest.raises(ValueError, match=r"`layer`.*Received: layer=<Conv2DTranspose"):
        WeightNormalization(keras.layers.Conv2DTranspose(3, 3))


def test_rejects_built_layer():
    dense = keras.layers.Dense(3)
    dense.build((None, 2))
    with pytest.raises(ValueError, match=r"`layer` must not be built.*Received: layer="):
        WeightNormalization(dense)


@pytest.mark.parametrize("kwargs,match", [
    ({"fixed_g": 0.0}, r"`fixed_g` must be > 0.0. Received: fixed_g=0.0"),
    ({"fixed_g": "1"}, r"`fixed_g` must be a number. Received: fixed_g='1'"),
    ({"epsilon": -1.0}, r"`epsilon` must be > 0.0. Received: epsilon=-1.0"),
    ({"data_init": 1}, r"`data_init` must be a bool. Received: data_init=1"),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WeightNormalization(keras.layers.Dense(2), **kwargs)


def test_group_mismatch_error():
    wrapper = WeightNormalization(keras.layers.Conv2D(4, 3, groups=2))
    with pytest.raises(ValueError, match=r"divisible.*Received: groups=2"):
        wrapper.build((None, 6, 6, 3))


def test_exported_from_package():
    assert layers.WeightNormalization is WeightNormalization
    assert layers.WEIGHT_NORMS == ("weight", "weight_fixed")


@pytest.mark.parametrize("shape", [(3, 6), (9, 6)])  # output-scaling path, kernel path
def test_dense_gradients_match_numpy(shape):
    """d/dv and d/dg of sum(c * y) for y = x @ (g v / ||v||) + b, against the hand-derived
    dL/dg_j = <G_j, v_j> / ||v_j||, dL/dv_j = (g_j / ||v_j||) (G_j - <G_j, u_j> u_j) with
    G = x^T c, u_j = v_j / ||v_j||, on both paths of the Dense wrapper."""
    rng = np.random.default_rng(4)
    wrapper = WeightNormalization(keras.layers.Dense(4))
    wrapper.build((None, shape[1]))
    wrapper.v.assign(rng.normal(size=(shape[1], 4)))
    wrapper.g.assign(rng.uniform(0.5, 2.0, 4))
    x = rng.normal(size=shape).astype("float32")
    c = rng.normal(size=(shape[0], 4)).astype("float32")
    assert wrapper._scale_outputs(x) == (shape[0] <= shape[1])
    ct = keras.ops.convert_to_tensor(c)
    _, (_, dv, dg) = gradients(lambda xt: keras.ops.sum(wrapper(xt) * ct), [x],
                               [wrapper.v, wrapper.g])
    v, g = wrapper.v.numpy().astype(np.float64), wrapper.g.numpy().astype(np.float64)
    norm = np.linalg.norm(v, axis=0)
    u = v / norm
    G = x.T.astype(np.float64) @ c
    np.testing.assert_allclose(dg, (G * v).sum(0) / norm, rtol=1e-4, atol=1e-5)
    expected_dv = g / norm * (G - (G * u).sum(0) * u)
    np.testing.assert_allclose(dv, expected_dv, rtol=1e-4, atol=1e-5)


def test_compat_stateless_accessors():
    from keras_normreg._compat import in_stateless_scope, stored_value

    v = keras.Variable(1.0)
    assert not in_stateless_scope()
    with keras.StatelessScope(state_mapping=[(v, keras.ops.convert_to_tensor(2.0))]):
        assert in_stateless_scope()
        assert float(keras.ops.convert_to_numpy(v.value)) == 2.0
        assert float(keras.ops.convert_to_numpy(stored_value(v))) == 1.0


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's stateless trainer only")
def test_jax_stateless_training_call_before_init_raises():
    wrapper = WeightNormalization(keras.layers.Dense(3), data_init=True)
    wrapper.build((None, 4))
    x = np.ones((5, 4), "float32")
    with pytest.raises(ValueError, match=r"cannot initialize inside a JAX train step.*"
                                         r"model\(x_batch, training=True\).*Received: data_init=True"):
        wrapper.stateless_call([w.value for w in wrapper.trainable_variables],
                               [w.value for w in wrapper.non_trainable_variables], x,
                               training=True)
    wrapper(x, training=True)  # eager: initializes
    assert bool(wrapper.initialized.numpy())
    wrapper.stateless_call([w.value for w in wrapper.trainable_variables],
                           [w.value for w in wrapper.non_trainable_variables], x, training=True)


# ------------------------------------------------------------------ kernel form vs output form
U32 = 2.0**-24  # float32 unit roundoff
FORM_CASES = ["dense_3d", "dense_wide", "conv1d_causal", "conv2d", "conv2d_groups",
              "conv2d_channels_first", "depthwise1d", "depthwise2d"]


def _bound(n, magnitude):
    """Higham's bound for a float32 sum of n products, |fl(s) - s| <= n u sum|terms| (to first
    order), for each side compared (x2), plus 8 roundings of the scaling / norm / bias chain
    (x (n + 8)); `magnitude` is the same computation on absolute values."""
    return 2.0 * (n + 8) * U32 * magnitude + 1e-30


def _plain_grads(name, w, bias, x, c):
    """Value and gradients (w, bias, x) of sum(c * plain_layer(x)) with kernel w, from the
    plain Keras layer (an op independent of the wrapper) and without activation."""
    factory, shape, _ = LAYER_CASES[name]
    plain = factory()
    plain.activation = keras.activations.linear
    plain.build(shape)
    plain.weights[0].assign(w.astype("float32"))
    variables = [plain.weights[0]] + ([plain.bias] if bias is not None else [])
    if bias is not None:
        plain.bias.assign(bias.astype("float32"))
    ct = keras.ops.convert_to_tensor(c)
    out, (gx, *gvs) = gradients(lambda xt: keras.ops.sum(plain(xt) * ct), [x], variables)
    return float(out), gx, gvs


@pytest.mark.parametrize("name", FORM_CASES)
def test_kernel_and_output_forms_agree_with_plain_layer_and_chain_rule(name):
    """Forward and gradients (x, v, g, bias) of both forms against the plain Keras layer with
    w = g v/||v|| (float64 NumPy) and the NumPy chain rule dv = (g/n)(dw - <dw, u> u),
    dg = <dw, u> (u = v/n), to within the float32 rounding bound of the sums involved."""
    rng = np.random.default_rng(5)
    factory, shape, axes = LAYER_CASES[name]
    wrappers = {}
    for form in ("kernel", "output"):
        wrapper = WeightNormalization(factory(), form=form)
        wrapper.layer.activation = keras.activations.linear  # compare the linear part
        wrapper.build(shape)
        wrappers[form] = wrapper
    first = wrappers["kernel"]
    v = rng.normal(size=first.v.shape)
    g = rng.uniform(0.5, 2.0, size=first.g.shape)
    bias = None if first.bias is None else rng.normal(size=first.bias.shape)
    for wrapper in wrappers.values():
        wrapper.v.assign(v.astype("float32"))
        wrapper.g.assign(g.astype("float32"))
        if bias is not None:
            wrapper.bias.assign(bias.astype("float32"))
    v, g = first.v.numpy().astype(np.float64), first.g.numpy().astype(np.float64)
    n = np.sqrt(np.sum(v**2, axis=axes, keepdims=True))
    u = v / n
    w = g * u
    x = rng.normal(size=shape).astype("float32")
    y_plain = keras.ops.convert_to_numpy(wrappers["kernel"](x))
    c = rng.normal(size=y_plain.shape).astype("float32")
    _, gx_ref, (dw, *db_ref) = _plain_grads(name, w, bias, x, c)
    _, gx_abs, (dw_abs, *_) = _plain_grads(name, np.abs(w), None if bias is None else
                                           np.abs(bias), np.abs(x), np.abs(c))
    dw = dw.astype(np.float64)
    fan = int(np.prod([v.shape[a] for a in axes]))
    rows = int(np.prod(c.shape)) // int(np.prod(g.shape))
    n_sum = max(fan, rows, int(np.prod(v.shape)))  # longest float32 sum in any of the ops
    dv_ref = g / n * (dw - np.sum(dw * u, axis=axes, keepdims=True) * u)
    dg_ref = np.sum(dw * u, axis=axes)
    dv_mag = g / n * (np.abs(dw_abs) + np.sum(np.abs(dw_abs * u), axis=axes, keepdims=True)
                      * np.abs(u))
    dg_mag = np.sum(np.abs(dw_abs * u), axis=axes)
    plain_layer = factory()
    plain_layer.activation = keras.activations.linear
    plain_layer.build(shape)
    plain_layer.weights[0].assign(np.abs(w).astype("float32"))
    if bias is not None:
        plain_layer.bias.assign(np.abs(bias).astype("float32"))
    y_mag = keras.ops.convert_to_numpy(plain_layer(np.abs(x)))
    plain_layer.weights[0].assign(w.astype("float32"))
    if bias is not None:
        plain_layer.bias.assign(bias.astype("float32"))
    y_ref = keras.ops.convert_to_numpy(plain_layer(x))
    assert wrappers["kernel"]._scale_outputs(x) is False
    assert wrappers["output"]._scale_outputs(x) is True
    ct = keras.ops.convert_to_tensor(c)
    for form, wrapper in wrappers.items():
        variables = [wrapper.v, wrapper.g] + ([wrapper.bias] if bias is not None else [])
        y = keras.ops.convert_to_numpy(wrapper(x))
        _, (gx, dv, dg, *db) = gradients(lambda xt, wr=wrapper: keras.ops.sum(wr(xt) * ct),
                                         [x], variables)
        checks = [("y", y, y_ref, y_mag), ("dx", gx, gx_ref, gx_abs), ("dv", dv, dv_ref, dv_mag),
                  ("dg", dg, dg_ref, dg_mag)]
        if bias is not None:
            checks.append(("dbias", db[0], db_ref[0], np.abs(db_ref[0]) + rows))
        for what, got, ref, mag in checks:
            err = np.abs(np.asarray(got, np.float64) - ref)
            bound = _bound(n_sum, np.abs(mag))
            assert np.all(err <= bound), (form, what, float(np.max(err - bound)))


def test_form_auto_rule():
    """auto: output form iff output rows x units <= kernel size (class docstring)."""
    dense = WeightNormalization(keras.layers.Dense(4))
    dense.build((None, 6))
    assert dense._scale_outputs(np.zeros((6, 6), "float32"))  # 6 rows <= fan_in 6
    assert not dense._scale_outputs(np.zeros((7, 6), "float32"))
    conv = WeightNormalization(keras.layers.Conv2D(8, 3, padding="same"))
    conv.build((None, 4, 4, 2))  # kernel 3*3*2*8 = 144
    assert conv._scale_outputs(np.zeros((1, 3, 3, 2), "float32"))  # 9 * 8 = 72 <= 144
    assert not conv._scale_outputs(np.zeros((2, 4, 4, 2), "float32"))  # 32 * 8 = 256
    for form in ("kernel", "output"):
        forced = WeightNormalization(keras.layers.Dense(4), form=form)
        forced.build((None, 6))
        assert forced._scale_outputs(np.zeros((1, 6), "float32")) == (form == "output")


def test_form_config_and_old_configs_load(tmp_path):
    wrapper = WeightNormalization(keras.layers.Dense(3), form="output")
    assert wrapper.get_config()["form"] == "output"
    config = WeightNormalization(keras.layers.Dense(3)).get_config()
    del config["form"]  # a config saved before the option existed
    assert WeightNormalization.from_config(config).form == "auto"
    with pytest.raises(ValueError, match="Received: form='bad'"):
        WeightNormalization(keras.layers.Dense(3), form="bad")


def test_saved_weight_norm_entry_still_loads():
    from keras_normreg import zoo

    model = zoo.load("mnist1d_cnn1d_weight")
    wrappers = [la for la in model._flatten_layers() if isinstance(la, WeightNormalization)]
    assert wrappers and all(w.form == "auto" for w in wrappers)
    x = np.random.default_rng(0).normal(size=(4,) + tuple(model.input_shape[1:]))
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(model(x.astype("float32")))))
