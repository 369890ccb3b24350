"""L1BatchNormalization and TopKBatchNormalization against NumPy formulas."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from keras_normreg import layers
from keras_normreg.layers.topk_batch_norm import topk_scale
from tests.helpers import (
    BACKEND,
    assert_config_roundtrip,
    assert_saved_model_equal,
    assert_serialize_roundtrip,
    gradients,
    numeric_grad,
    requires_float64,
)

# ----------------------------------------------------------------------------- NumPy reference
SQRT_PI_2 = math.sqrt(math.pi / 2)


def ref_c(n):
    """C(n) = 0.5 (1 + sqrt(pi ln 4)) / sqrt(2 ln n), straight from the paper."""
    return 0.5 * (1 + np.sqrt(np.pi * np.log(4.0))) / np.sqrt(2 * np.log(n))


def ref_stats(x, axis, kind, k=10):
    """Per-channel (mu, sigma) of a float64 batch."""
    x = np.asarray(x, np.float64)
    ax = axis % x.ndim
    xc = np.moveaxis(x, ax, 0).reshape(x.shape[ax], -1)  # (C, n)
    mu = xc.mean(axis=1)
    dev = np.abs(xc - mu[:, None])
    n = xc.shape[1]
    if kind == "l1":
        sigma = SQRT_PI_2 * dev.mean(axis=1)
    else:
        kk = min(k, n)
        top = -np.sort(-dev, axis=1)[:, :kk]
        sigma = ref_c(n) * top.mean(axis=1)
    return mu, sigma


def ref_apply(x, mu, sigma, gamma, beta, eps, axis):
    shape = [1] * x.ndim
    shape[axis % x.ndim] = -1
    r = lambda a: np.reshape(a, shape)  # noqa: E731
    return r(gamma) * (x - r(mu)) / (r(sigma) + eps) + r(beta)


KINDS = {"l1": layers.L1BatchNormalization, "topk": layers.TopKBatchNormalization}
# (4, 3, 5, 3) with axis=1: width == channels, where keras.ops.add mis-broadcasts a bias.
CASES = [((16, 5), -1), ((16, 5), 1), ((4, 3, 5, 6), -1), ((4, 3, 5, 6), 1), ((4, 3, 5, 3), 1)]


def make(kind, **kw):
    if kind == "topk":
        kw.setdefault("k", 4)
    return KINDS[kind](**kw)


def randomize(layer, rng):
    """Random gamma/beta/moving stats so that the formulas are exercised, not the defaults."""
    c = layer.gamma.shape[0]
    layer.gamma.assign(rng.uniform(0.5, 2.0, c))
    layer.beta.assign(rng.normal(size=c))
    layer.moving_mean.assign(rng.normal(size=c))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, c))


# ----------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("kind", ["l1", "topk"])
@pytest.mark.parametrize("shape,axis", CASES)
def test_training_inference_and_moving_stats_match_numpy(kind, shape, axis):
    rng = np.random.default_rng(0)
    layer = make(kind, axis=axis, momentum=0.8, epsilon=1e-3)
    layer.build(shape)
    randomize(layer, rng)
    gamma, beta = layer.gamma.numpy(), layer.beta.numpy()
    mm, mv = layer.moving_mean.numpy().astype(np.float64), layer.moving_variance.numpy()
    mv = mv.astype(np.float64)
    for step in range(3):
        x = (rng.normal(size=shape) * (1 + step) + step).astype("float32")
        y = keras.ops.convert_to_numpy(layer(x, training=True))
        mu, sigma = ref_stats(x, axis, kind, k=4)
        np.testing.assert_allclose(y, ref_apply(x, mu, sigma, gamma, beta, 1e-3, axis),
                                   rtol=1e-4, atol=1e-4)
        mm = mm * 0.8 + mu * 0.2
        mv = mv * 0.8 + sigma**2 * 0.2
        np.testing.assert_allclose(layer.moving_mean.numpy(), mm, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), mv, rtol=1e-5, atol=1e-5)
    x = rng.normal(size=shape).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x, training=False))
    np.testing.assert_allclose(y, ref_apply(x, mm, np.sqrt(mv), gamma, beta, 1e-3, axis),
                               rtol=1e-4, atol=1e-4)
    # Inference does not touch the moving statistics.
    np.testing.assert_allclose(layer.moving_mean.numpy(), mm, rtol=1e-5, atol=1e-5)


def test_l1_dispersion_estimates_std_of_gaussian():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(20000, 3)) * [0.5, 2.0, 7.0] + [1.0, -3.0, 0.0]).astype("float32")
    layer = layers.L1BatchNormalization(epsilon=1e-6, momentum=0.0)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y.std(axis=0), 1.0, atol=0.02)
    np.testing.assert_allclose(np.sqrt(layer.moving_variance.numpy()), [0.5, 2.0, 7.0], rtol=0.02)


def test_topk_scale_hand_computed():
    # n=100: ln 100 = 4.605170, sqrt(2 ln n) = 3.034854; pi ln 4 = 4.355172, sqrt = 2.086905;
    # (1 + 2.086905) / 2 = 1.543453; 1.543453 / 3.034854 = 0.508575.
    assert topk_scale(100) == pytest.approx(0.508575, abs=1e-6)
    assert topk_scale(10) == pytest.approx(0.719234, abs=1e-6)   # sqrt(2 ln 10) = 2.145966
    assert topk_scale(2) == pytest.approx(1.310888, abs=1e-6)    # sqrt(2 ln 2) = 1.177410
    assert topk_scale(1) == topk_scale(2)  # n < 2 treated as 2
    t = keras.ops.convert_to_numpy(topk_scale(keras.ops.convert_to_tensor([100.0, 10.0])))
    np.testing.assert_allclose(t, [0.508575, 0.719234], atol=1e-6)


def test_topk_k_larger_than_n_uses_all_elements():
    x = np.array([[1.0, 0.0], [2.0, 4.0], [6.0, -1.0]], "float32")  # n = 3 per channel
    layer = layers.TopKBatchNormalization(k=10, epsilon=1e-6)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    # channel 0: mu = 3, |x - mu| = 2, 1, 3 -> mean 2; channel 1: mu = 1, |x-mu| = 1, 3, 2 -> 2.
    sigma = ref_c(3) * 2.0
    np.testing.assert_allclose(y, (x - [3.0, 1.0]) / (sigma + 1e-6), rtol=1e-5)
    # k = 1 takes the max deviation only.
    layer1 = layers.TopKBatchNormalization(k=1, epsilon=1e-6)
    y1 = keras.ops.convert_to_numpy(layer1(x, training=True))
    np.testing.assert_allclose(y1, (x - [3.0, 1.0]) / (ref_c(3) * 3.0 + 1e-6), rtol=1e-5)


@requires_float64
@pytest.mark.parametrize("kind", ["l1", "topk"])
@pytest.mark.parametrize("shape,axis", [((6, 3), -1), ((3, 2, 2, 2), 1)])
def test_gradients_match_finite_differences(kind, shape, axis):
    rng = np.random.default_rng(2)
    layer = make(kind, axis=axis, dtype="float64", k=3) if kind == "topk" else make(
        kind, axis=axis, dtype="float64")
    layer.build(shape)
    randomize(layer, rng)
    x0 = rng.normal(size=shape)
    weights = rng.normal(size=shape)

    def loss(x):
        return float(np.sum(keras.ops.convert_to_numpy(layer(x, training=True)) * weights))

    wt = keras.ops.convert_to_tensor(weights, "float64")
    _, (gx, ggamma) = gradients(
        lambda xt: keras.ops.sum(layer(xt, training=True) * wt), [x0], [layer.gamma])
    np.testing.assert_allclose(gx, numeric_grad(loss, x0, eps=1e-6), rtol=1e-4, atol=1e-6)

    gamma0 = layer.gamma.numpy().copy()

    def loss_gamma(g):
        layer.gamma.assign(g)
        return loss(x0)

    num = numeric_grad(loss_gamma, gamma0, eps=1e-6)
    layer.gamma.assign(gamma0)
    np.testing.assert_allclose(ggamma, num, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["l1", "topk"])
@pytest.mark.parametrize("policy,atol", [("mixed_float16", 1e-2), ("mixed_bfloat16", 5e-2)])
def test_mixed_precision(kind, policy, atol):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(8, 4, 4, 3)) * 30 + 100).astype("float32")  # large: squares overflow
    ref = make(kind)
    mixed = make(kind, dtype=policy)
    y_ref = keras.ops.convert_to_numpy(ref(x, training=True))
    xm = keras.ops.cast(x, mixed.compute_dtype)
    y = mixed(xm, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == mixed.compute_dtype
    assert mixed.moving_mean.dtype == "float32" and mixed.gamma.dtype == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(y, "float32")), y_ref,
                               atol=atol, rtol=atol)
    np.testing.assert_allclose(mixed.moving_variance.numpy(), ref.moving_variance.numpy(),
                               rtol=atol)
    y_inf = mixed(xm, training=False)
    assert keras.backend.standardize_dtype(y_inf.dtype) == mixed.compute_dtype


# ----------------------------------------------------------------------------- basics
@pytest.mark.parametrize("kind", ["l1", "topk"])
def test_weights_names_and_bn_compatible_layout(kind):
    layer = make(kind)
    layer.build((None, 4))
    bn = keras.layers.BatchNormalization()
    bn.build((None, 4))
    assert [w.name for w in layer.weights] == [w.name for w in bn.weights]
    assert [w.name for w in layer.trainable_weights] == ["gamma", "beta"]
    no_affine = make(kind, center=False, scale=False)
    no_affine.build((None, 4))
    assert [w.name for w in no_affine.weights] == ["moving_mean", "moving_variance"]
    x = np.random.randn(10, 4).astype("float32")
    mu, sigma = ref_stats(x, -1, kind, k=4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(no_affine(x, training=True)),
                               (x - mu) / (sigma + 1e-3), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["l1", "topk"])
def test_frozen_layer_runs_in_inference_mode(kind):
    layer = make(kind)
    x = np.random.randn(10, 4).astype("float32") * 3 + 2
    layer.build(x.shape)
    layer.trainable = False
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y, x / (1 + 1e-3), rtol=1e-5)  # moving stats: mean 0, var 1
    np.testing.assert_array_equal(layer.moving_mean.numpy(), 0.0)


@pytest.mark.skipif(BACKEND == "torch", reason="XLA: TensorFlow and JAX (torch compiles with "
                    "torch.compile, not XLA)")
@pytest.mark.parametrize("kind", ["l1", "topk"])
@pytest.mark.parametrize("images", [False, True])
def test_fit_xla_matches_eager(kind, images):
    """Dense features (direct top-k) and 4x4 feature maps (two-stage top-k: 16 chunks of 16
    rows per batch of 16, k=4; the last batch of 8 has 8 chunks), XLA vs eager (TensorFlow:
    XLA-compiled tf.function; JAX: jax.jit)."""
    rng = np.random.default_rng(4)
    shape = (4, 4, 3) if images else (6,)
    x = rng.normal(size=(40, *shape)).astype("float32")
    y = rng.normal(size=(40, 2)).astype("float32")
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(7)
        first = keras.layers.Conv2D(5, 3, padding="same") if images else keras.layers.Dense(5)
        head = [keras.layers.Flatten()] if images else []
        model = keras.Sequential([keras.Input(shape), first, make(kind), *head,
                                  keras.layers.Dense(2)])
        model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=jit, run_eagerly=not jit)
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        assert np.isfinite(history.history["loss"]).all()
        results.append([w.numpy() for w in model.layers[1].weights])
    assert not np.allclose(results[0][2], 0.0)  # moving_mean moved
    for eager, xla in zip(*results, strict=True):
        np.testing.assert_allclose(xla, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["l1", "topk"])
def test_config_roundtrip_and_keras_save_load(kind, tmp_path):
    layer = make(kind, axis=1, momentum=0.9, epsilon=1e-4, center=False,
                 gamma_regularizer="l2", beta_initializer="ones", synchronized=True)
    clone = assert_config_roundtrip(layer)
    assert clone.axis == 1 and clone.momentum == 0.9 and clone.synchronized is True
    assert isinstance(clone.gamma_regularizer, keras.regularizers.L2)
    if kind == "topk":
        assert clone.k == 4
    assert_serialize_roundtrip(layer)

    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 3, 4, 4)).astype("float32")
    model = keras.Sequential([keras.Input((3, 4, 4)), make(kind, axis=1)])
    model(x, training=True)  # non-trivial moving statistics
    model.layers[0].gamma.assign([0.5, 1.5, 2.0])
    loaded = assert_saved_model_equal(model, x, tmp_path)
    assert type(loaded.layers[0]) is KINDS[kind]
    np.testing.assert_allclose(loaded.layers[0].moving_variance.numpy(),
                               model.layers[0].moving_variance.numpy())


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kind", ["l1", "topk"])
@pytest.mark.parametrize("kwargs,match", [
    ({"momentum": 1.5}, r"`momentum` must be <= 1.0. Received: momentum=1.5"),
    ({"momentum": "high"}, r"`momentum` must be a number. Received: momentum='high'"),
    ({"epsilon": 0.0}, r"`epsilon` must be > 0.0. Received: epsilon=0.0"),
    ({"axis": 1.5}, r"`axis` must be an integer. Received: axis=1.5"),
    ({"center": 1}, r"`center` must be a bool. Received: center=1"),
    ({"synchronized": "yes"}, r"`synchronized` must be a bool. Received: synchronized='yes'"),
])
def test_argument_errors(kind, kwargs, match):
    with pytest.raises(ValueError, match=match):
        KINDS[kind](**kwargs)


@pytest.mark.parametrize("k,match", [(0, r"`k` must be >= 1. Received: k=0"),
                                     (2.5, r"`k` must be an integer. Received: k=2.5"),
                                     (True, r"`k` must be an integer. Received: k=True")])
def test_topk_k_errors(k, match):
    with pytest.raises(ValueError, match=match):
        layers.TopKBatchNormalization(k=k)


@pytest.mark.parametrize("kind", ["l1", "topk"])
def test_axis_out_of_range_at_build(kind):
    layer = make(kind, axis=3)
    with pytest.raises(ValueError, match=r"`axis` is out of bounds.*Received: axis=3"):
        layer.build((None, 4))


# ----------------------------------------------------------------------------- top-k selection
@pytest.mark.parametrize("shape,expected", [
    ((8, 32, 32, 16), 64),   # S = 1024: largest divisor <= 64
    ((8, 6, 5, 4), 30),      # S = 30
    ((8, 7, 11, 4), 11),     # S = 77 = 7 * 11
    ((8, 67, 4), None),      # S = 67 is prime and > 64: no divisor >= 4 -> direct
    ((8, 2, 4), None),       # S = 2 < 4 -> direct
    ((16, 5), None),         # rank 2 -> direct
])
def test_topk_chunk_size_rule(shape, expected):
    layer = layers.TopKBatchNormalization(k=3)
    layer.build(shape)
    assert layer._chunk_size(np.zeros(shape)) == expected


def test_topk_chunk_size_channels_first_uses_direct_selection():
    layer = layers.TopKBatchNormalization(k=3, axis=1)
    layer.build((8, 4, 32, 32))
    assert layer._chunk_size(np.zeros((8, 4, 32, 32))) is None


@pytest.mark.parametrize("shape,k", [((32, 8, 8, 3), 5), ((3, 4, 4, 2), 10), ((64, 3, 3, 2), 1)])
def test_topk_two_stage_selection_sigma_and_gradient_match_numpy(shape, k):
    """Batches where the two-stage selection prunes chunks (32 chunks, k=5; 64 chunks, k=1)
    and where it keeps them all (3 chunks < k): sigma equals the NumPy top-k, and the gradient
    of sum(sigma * w) equals the hand-derived
    d sigma_c / d x_jc = C(n)/k * (s_jc * [j in top_c] - (1/n) * sum_{i in top_c} s_ic),
    s = sign(x - mu)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape)  # continuous values: no ties
    layer = layers.TopKBatchNormalization(k=k)
    layer.build(shape)
    xt = keras.ops.convert_to_tensor(x, "float32")
    assert layer._chunk_size(xt) is not None
    weights = rng.uniform(0.5, 2.0, shape[-1])
    wt = keras.ops.convert_to_tensor(weights, "float32")
    _, sigma = layer.batch_statistics(xt)
    _, (grad,) = gradients(lambda xt: keras.ops.sum(layer.batch_statistics(xt)[1] * wt), [xt])
    grad = grad.reshape(-1, shape[-1])
    _, ref_sigma = ref_stats(x, -1, "topk", k=k)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(sigma), ref_sigma, rtol=1e-5)
    xc = x.reshape(-1, shape[-1])
    n = xc.shape[0]
    kk = min(k, n)
    dev = xc - xc.mean(0)
    expected = np.zeros_like(xc)
    for c in range(shape[-1]):
        top = np.argsort(-np.abs(dev[:, c]))[:kk]
        s = np.sign(dev[:, c])
        expected[top, c] += s[top]
        expected[:, c] -= s[top].sum() / n
        expected[:, c] *= ref_c(n) / kk * weights[c]
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
