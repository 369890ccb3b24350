"""keras_normreg.regularizers: L1/L2/ElasticNet and the rules of apply()."""

import math

import keras
import numpy as np
import pytest

from keras_normreg import regularizers
from keras_normreg.regularizers import L1, L2, ElasticNet
from tests.backend_marks import requires_float64, requires_tensorflow
from tests.helpers import (
    assert_config_roundtrip,
    assert_saved_model_equal,
    assert_serialize_roundtrip,
    numeric_grad,
)

pytestmark = pytest.mark.backends  # a block's tests: run on every backend (backend_marks.py)

L = keras.layers


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _w(shape=(4, 3, 5), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _conv_bn_relu_net(*, bias=True, name_prefix=""):
    """conv -> BN -> relu -> GAP -> dense: a small net with a scale-invariant kernel (conv) and
    one that is not (dense)."""
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, use_bias=bias, name="conv")(inp)
    x = L.BatchNormalization(epsilon=1e-8, name="bn")(x)
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(4, name="head")(x)
    return keras.Model(inp, out)


# ----------------------------------------------------------------------------- basics


@pytest.mark.parametrize("reg,expected", [
    (L1(0.3), lambda w: 0.3 * np.sum(np.abs(w))),
    (L2(0.05), lambda w: 0.05 * np.sum(w ** 2)),
    (ElasticNet(0.3, 0.05), lambda w: 0.3 * np.sum(np.abs(w)) + 0.05 * np.sum(w ** 2)),
    (ElasticNet(0.0, 0.0), lambda w: 0.0),
])
def test_penalty_equals_numpy(reg, expected):
    w = _w()
    assert float(_np(reg(keras.ops.convert_to_tensor(w)))) == pytest.approx(
        float(expected(w.astype(np.float64))), rel=1e-5)


@requires_tensorflow
def test_pytorch_weight_decay_convention():
    import tensorflow as tf

    """PyTorch weight decay λ adds λ*w to the gradient; that is L2(λ/2)."""
    lam = 5e-4
    w = _w((3, 4), seed=1)
    var = tf.Variable(w)
    with tf.GradientTape() as tape:
        penalty = L2(lam / 2)(var)
    np.testing.assert_allclose(_np(tape.gradient(penalty, var)), lam * w, rtol=1e-6)


@requires_float64
def test_pytorch_weight_decay_convention_finite_differences():
    """The same convention on every backend: finite differences in float64 (independent of
    autodiff) give λ*w for L2(λ/2)."""
    lam = 5e-4
    w = _w((3, 4), seed=1)
    g = numeric_grad(lambda x: float(_np(L2(lam / 2)(x))), w.astype(np.float64))
    np.testing.assert_allclose(g, lam * w, rtol=1e-4, atol=1e-9)


def test_repr():
    assert repr(L2(1e-4)) == "L2(l2=0.0001)"
    assert repr(ElasticNet(1e-5, 1e-4)) == "ElasticNet(l1=1e-05, l2=0.0001)"


def test_get_names_specs_classes_instances():
    assert isinstance(regularizers.get("l1"), L1)
    assert isinstance(regularizers.get("l2"), L2)
    assert isinstance(regularizers.get("elastic_net"), ElasticNet)
    assert isinstance(regularizers.get("l1_l2"), ElasticNet)
    r = regularizers.get({"l2": 1e-4})
    assert isinstance(r, L2) and r.l2 == 1e-4
    r = regularizers.get({"l1": 1e-5})
    assert isinstance(r, L1) and r.l1 == 1e-5
    r = regularizers.get({"l1": 1e-5, "l2": 1e-4})
    assert isinstance(r, ElasticNet) and (r.l1, r.l2) == (1e-5, 1e-4)
    assert isinstance(regularizers.get(L2), L2)
    inst = L1(0.2)
    assert regularizers.get(inst) is inst
    keras_l2 = keras.regularizers.L2(0.1)
    assert regularizers.get(keras_l2) is keras_l2
    assert regularizers.get(None) is None
    r = regularizers.get({"class_name": "l2", "config": {"l2": 0.5}})
    assert isinstance(r, L2) and r.l2 == 0.5
    r = regularizers.get(keras.saving.serialize_keras_object(ElasticNet(0.1, 0.2)))
    assert isinstance(r, ElasticNet) and (r.l1, r.l2) == (0.1, 0.2)


# ----------------------------------------------------------------------------- the key test


def test_conv_bn_relu_scale_invariance_and_auto_skip():
    model = _conv_bn_relu_net()
    x = np.random.default_rng(2).normal(size=(16, 8, 8, 3)).astype("float32")
    conv = model.get_layer("conv")
    k = _np(conv.kernel).copy()
    y0 = _np(model(x, training=True))
    conv.kernel.assign(3.0 * k)
    y3 = _np(model(x, training=True))
    # the function does not change (training-mode BN) ...
    np.testing.assert_allclose(y3, y0, atol=1e-4)
    # ... while the L2 term of the kernel is multiplied by 9
    l2 = L2(1e-3)
    assert float(_np(l2(conv.kernel))) == pytest.approx(9 * 1e-3 * np.sum(k.astype("float64") ** 2),
                                                        rel=1e-5)
    conv.kernel.assign(k)

    report = regularizers.apply(model, l2)
    by_path = {e.path: e for e in report}
    assert set(by_path) == {"conv/kernel", "head/kernel"}
    assert not by_path["conv/kernel"].applied
    assert "scale-invariant" in by_path["conv/kernel"].reason
    assert "conv/kernel -> bn" in by_path["conv/kernel"].reason
    assert by_path["head/kernel"].applied
    assert conv.kernel.regularizer is None and conv.kernel_regularizer is None
    head = model.get_layer("head")
    assert head.kernel.regularizer is l2 and head.kernel_regularizer is l2
    assert report.applied == ["head/kernel"] and report.skipped == ["conv/kernel"]
    # model.losses is exactly the head penalty
    expected = 1e-3 * np.sum(_np(head.kernel).astype("float64") ** 2)
    assert len(model.losses) == 1
    assert float(_np(model.losses[0])) == pytest.approx(expected, rel=1e-5)

    # skip_scale_invariant=False regularizes the conv kernel too
    report = regularizers.apply(model, l2, skip_scale_invariant=False)
    assert report.applied == ["conv/kernel", "head/kernel"]
    total = sum(float(_np(v)) for v in model.losses)
    expected += 1e-3 * np.sum(k.astype("float64") ** 2)
    assert total == pytest.approx(expected, rel=1e-5)


def test_report_table_text():
    report = regularizers.apply(_conv_bn_relu_net(), L2(1e-4))
    text = str(report)
    assert text.splitlines()[0].split() == ["variable", "applied", "reason"]
    assert "head/kernel" in text and "yes" in text and "no" in text


# ----------------------------------------------------------------------------- rules


def _mlp():
    inp = keras.Input((6,))
    x = L.Dense(8, name="block1_dense")(inp)
    x = L.Dense(8, name="block1_proj")(x)
    x = L.LayerNormalization(name="block1_ln")(x)  # biased input: kernels not invariant
    x = L.Dense(8, name="block2_dense")(x)
    x = L.BatchNormalization(name="block2_bn")(x)
    out = L.Dense(2, name="head")(x)
    return keras.Model(inp, out)


def _total_penalty(model, factor, paths):
    return sum(factor * np.sum(_np(v).astype("float64") ** 2)
               for v in model.weights if v.path in paths)


def test_apply_include_exclude_by_type_and_glob():
    model = _mlp()
    report = regularizers.apply(model, L2(0.01), include="block1_*/kernel")
    assert report.applied == ["block1_dense/kernel", "block1_proj/kernel"]

    model = _mlp()
    with pytest.raises(ValueError, match=r"matching include/exclude"):
        regularizers.apply(model, L2(0.01), exclude=[keras.layers.Dense])  # all kernels are Dense
    report = regularizers.apply(model, L2(0.01), include=keras.layers.LayerNormalization,
                                targets=("gamma", "beta"))
    # LN's gamma scales LN -> Dense -> BN, whose mean subtraction also removes beta: invariant
    assert report.skipped == ["block1_ln/gamma"] and report.applied == ["block1_ln/beta"]

    model = _mlp()
    report = regularizers.apply(model, L2(0.01), targets=("kernel", "gamma", "beta", "bias"),
                                include=["Dense", "block2_bn"], exclude=["head", "*/bias"])
    assert [e.path for e in report] == ["block1_dense/kernel", "block1_proj/kernel",
                                        "block2_dense/kernel", "block2_bn/gamma",
                                        "block2_bn/beta"]
    applied = set(report.applied)
    # block2_dense/kernel feeds BN directly: scale-invariant, skipped
    assert applied == {"block1_dense/kernel", "block1_proj/kernel", "block2_bn/gamma",
                       "block2_bn/beta"}
    total = sum(float(_np(v)) for v in model.losses)
    assert total == pytest.approx(_total_penalty(model, 0.01, applied), rel=1e-5)


def test_apply_all_targets_and_removal():
    model = _conv_bn_relu_net()
    report = regularizers.apply(model, L1(0.1), targets="all", skip_scale_invariant=False)
    assert sorted(report.applied) == ["bn/beta", "bn/gamma", "conv/bias", "conv/kernel",
                                      "head/bias", "head/kernel"]  # no moving statistics
    expected = sum(0.1 * np.sum(np.abs(_np(v).astype("float64"))) for v in model.trainable_weights)
    assert sum(float(_np(v)) for v in model.losses) == pytest.approx(expected, rel=1e-5)
    report = regularizers.apply(model, None, targets="all")
    assert report.applied == [] and all(e.reason == "regularizer removed" for e in report)
    assert model.losses == []
    assert model.get_layer("bn").gamma_regularizer is None


def test_apply_depthwise_and_embeddings_targets():
    inp = keras.Input((5,), dtype="int32")
    x = L.Embedding(10, 4, name="emb")(inp)
    x = L.Reshape((5, 4, 1))(x)
    x = L.DepthwiseConv2D(3, name="dw")(x)
    x = L.Flatten()(x)
    out = L.Dense(1, name="head")(x)
    model = keras.Model(inp, out)
    report = regularizers.apply(model, "l2", targets=("depthwise_kernel", "embeddings"))
    assert sorted(report.applied) == ["dw/kernel", "emb/embeddings"]
    assert isinstance(model.get_layer("dw").depthwise_regularizer, L2)
    assert isinstance(model.get_layer("emb").embeddings_regularizer, L2)
    report = regularizers.apply(model, "l2")  # "kernel" alone leaves the depthwise kernel out
    assert report.applied == ["head/kernel"]


def test_frozen_layer_is_left_alone():
    model = _conv_bn_relu_net()
    model.get_layer("head").trainable = False
    report = regularizers.apply(model, L2(0.1), skip_scale_invariant=False)
    assert report.applied == ["conv/kernel"]
    assert "frozen" in {e.path: e.reason for e in report}["head/kernel"]


def test_apply_after_fit_changes_the_training_loss():
    model = keras.Sequential([keras.Input((3,)), L.Dense(2, name="d")], name="s")
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((4, 3), "float32")
    y = np.zeros((4, 2), "float32")
    base = model.evaluate(x, y, verbose=0)
    regularizers.apply(model, L2(10.0))
    with_reg = model.evaluate(x, y, verbose=0)
    penalty = 10.0 * np.sum(_np(model.get_layer("d").kernel).astype("float64") ** 2)
    assert with_reg == pytest.approx(base + penalty, rel=1e-4)


# ----------------------------------------------------------------------------- serialization


@pytest.mark.parametrize("obj", [L1(0.2), L2(1e-4), ElasticNet(1e-5, 3e-4)])
def test_config_roundtrip(obj):
    clone = assert_config_roundtrip(obj)
    assert_serialize_roundtrip(obj)
    w = _w()
    assert float(_np(clone(w))) == pytest.approx(float(_np(obj(w))))


def test_saved_model_keeps_regularizers(tmp_path):
    model = _conv_bn_relu_net()
    regularizers.apply(model, ElasticNet(1e-3, 1e-2), targets=("kernel", "gamma"))
    x = np.random.default_rng(3).normal(size=(4, 8, 8, 3)).astype("float32")
    loaded = assert_saved_model_equal(model, x, tmp_path)
    head = loaded.get_layer("head")
    assert isinstance(head.kernel_regularizer, ElasticNet)
    assert head.kernel_regularizer.get_config() == {"l1": 1e-3, "l2": 1e-2}
    assert loaded.get_layer("conv").kernel_regularizer is None  # skipped: scale-invariant
    assert isinstance(loaded.get_layer("bn").gamma_regularizer, ElasticNet)  # BN->relu: not inv.
    np.testing.assert_allclose(sorted(float(_np(v)) for v in loaded.losses),
                               sorted(float(_np(v)) for v in model.losses), rtol=1e-6)
    assert len(loaded.losses) == 2


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("make,match", [
    (lambda: L1(-0.1), r"Argument `l1` must be >= 0.*Received: l1=-0.1"),
    (lambda: L2("0.1"), r"Argument `l2` must be a number.*Received: l2='0.1'"),
    (lambda: L2(None), r"Argument `l2` must be a number.*Received: l2=None"),
    (lambda: L2(math.nan), r"Argument `l2` must be a finite number.*Received: l2=nan"),
    (lambda: L2(math.inf), r"Argument `l2` must be a finite number.*Received: l2=inf"),
    (lambda: ElasticNet(0.1, -1), r"Argument `l2` must be >= 0.*Received: l2=-1"),
    (lambda: ElasticNet(True, 0.1), r"Argument `l1` must be a number.*Received: l1=True"),
])
def test_bad_factors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_get_errors():
    with pytest.raises(ValueError, match=r"Unknown regularizer 'l3'.*'elastic_net'.*"
                                         r"Received: identifier='l3'"):
        regularizers.get("l3")
    with pytest.raises(ValueError, match=r"keys 'l1' and/or 'l2'.*Received: identifier="):
        regularizers.get({"l2": 1e-4, "l3": 1.0})
    with pytest.raises(ValueError, match=r"keys 'l1' and/or 'l2'"):
        regularizers.get({})
    with pytest.raises(ValueError, match=r"Argument `l2` must be >= 0"):
        regularizers.get({"l2": -1.0})
    with pytest.raises(ValueError, match=r"Could not interpret a regularizer"):
        regularizers.get(0.01)
    with pytest.raises(ValueError, match=r"must subclass keras.regularizers.Regularizer"):
        regularizers.get(dict)


def test_apply_errors():
    model = _conv_bn_relu_net()
    with pytest.raises(ValueError, match=r"unknown target 'weights'.*'depthwise_kernel'"):
        regularizers.apply(model, "l2", targets=("kernel", "weights"))
    with pytest.raises(ValueError, match=r"regularizer targets 'embeddings' but the model has no "
                                         r"weight of that kind"):
        regularizers.apply(model, "l2", targets="embeddings")
    with pytest.raises(ValueError, match=r"`skip_scale_invariant`.*Received: "
                                         r"skip_scale_invariant='yes'"):
        regularizers.apply(model, "l2", skip_scale_invariant="yes")
    with pytest.raises(ValueError, match=r"Argument `exclude`.*Received: exclude=\[1\]"):
        regularizers.apply(model, "l2", exclude=[1])
    with pytest.raises(ValueError, match=r"needs a built model"):
        regularizers.apply(keras.Sequential([L.Dense(1)]), "l2")
    with pytest.warns(UserWarning, match=r"`include` entry 'Conv3D' matched no"):
        regularizers.apply(model, "l2", include=["Conv2D", "Conv3D"], skip_scale_invariant=False)


def test_weight_normalization_v_regularizer_is_saved_through_the_inner_layer(tmp_path):
    layers = pytest.importorskip("keras_normreg.layers")
    model = keras.Sequential([
        keras.Input((5,)),
        layers.WeightNormalization(L.Dense(4), name="wn"),
        L.Dense(1, name="head"),
    ], name="s")
    report = regularizers.apply(model, L2(0.1))
    assert report.skipped == ["s/wn/v"]  # invariant by construction
    report = regularizers.apply(model, L2(0.1), include="wn", skip_scale_invariant=False)
    assert report.applied == ["s/wn/v"]
    assert isinstance(model.get_layer("wn").layer.kernel_regularizer, L2)
    x = np.random.default_rng(9).normal(size=(3, 5)).astype("float32")
    loaded = assert_saved_model_equal(model, x, tmp_path)
    np.testing.assert_allclose(sorted(float(_np(v)) for v in loaded.losses),
                               sorted(float(_np(v)) for v in model.losses), rtol=1e-6)
    assert len(loaded.losses) == 2


def test_auto_on_a_subclassed_model_warns():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(3)
            self.bn = L.BatchNormalization()

        def call(self, x):
            return self.bn(self.dense(x))

    model = Sub()
    model(np.zeros((2, 4), "float32"))
    with pytest.warns(UserWarning, match=r"cannot read the graph of Sub"):
        report = regularizers.apply(model, L2(0.1))
    assert len(report.applied) == 1  # the kernel, since nothing could be proven invariant
