"""keras_normreg._invariance: which kernels a model's function is invariant to rescaling.

Every verdict on a small graph is also checked numerically: scaling a weight the walk calls
invariant by 3 must leave the training-mode output unchanged, and scaling one it calls not
invariant must change it (the reference is the network itself, not the walk).
"""

import dataclasses

import keras
import numpy as np
import pytest

from keras_normreg import _invariance
from keras_normreg._invariance import (
    ScaleInvariance,
    explain_scale_invariance,
    find_scale_invariant,
)

pytestmark = pytest.mark.backends  # a block's tests: run on every backend (backend_marks.py)

L = keras.layers
EPS = 1e-7  # normalization epsilon small enough that invariance holds to float32 precision


def _explain(model):
    """``{path: (invariant, reason)}`` from the structured verdicts."""
    return {p: (v.invariant, v.reason) for p, v in explain_scale_invariance(model).items()}


def _find(model):
    """``{path: reason}`` of the invariant weights."""
    return {p: v.reason for p, v in find_scale_invariant(model).items()}


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _output_change(model, path, x, factor=3.0):
    """max |f(cW) - f(W)| / max |f(W)| in training mode, for the variable at ``path``."""
    var = next(v for v in model.weights if v.path == path)
    original = _np(var).copy()
    y0 = _np(model(x, training=True))
    var.assign(original * factor)
    y1 = _np(model(x, training=True))
    var.assign(original)
    return float(np.max(np.abs(y1 - y0)) / (np.max(np.abs(y0)) + 1e-12))


def _check_numerically(model, x, analysed=None):
    verdicts = _explain(model)
    for path, (invariant, reason) in verdicts.items():
        if analysed is not None and path not in analysed:
            continue
        change = _output_change(model, path, x)
        if invariant:
            assert change < 1e-4, (path, reason, change)
        else:
            assert change > 1e-3, (path, reason, change)
    return verdicts


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# ----------------------------------------------------------------------------- basics


@pytest.mark.parametrize("kw", [dict(qk_norm=True), dict(ngpt=True),
                                dict(norm="rms", qk_norm=True, placement="post")])
def test_transformer_declared_rules_checked_numerically(kw, monkeypatch):
    """The zoo's attention (degree 1 in the values, any function of q and k) and learned
    scales (degree 1) declare keras_normreg_scale_rule; every verdict on a tiny transformer
    is checked by rescaling (norm epsilon lowered so invariance holds to float32 precision)."""
    from keras_normreg.zoo import transformer

    monkeypatch.setattr(transformer, "EPSILON", EPS)
    model = transformer.build_transformer(5, (4,), vocab_size=7, width=8, depth=1, heads=2,
                                          mlp_ratio=2, causal=True, **kw)
    x = np.random.default_rng(0).integers(0, 7, size=(3, 4)).astype("int32")
    verdicts = _check_numerically(model, x)
    found = {p.split("/")[-2] for p, (inv, _) in verdicts.items() if inv}
    assert {"block1_query", "block1_key"} <= found
    assert ("block1_value" in found) == bool(kw.get("ngpt"))
    # the values pass the attention scaled: invariant through nGPT's normalization, else
    # stopped only by the residual add
    reason = verdicts["block1_value/kernel"][1]
    assert ("block1_attention" if kw.get("ngpt") else "block1_attn_add") in reason


def test_conv_bn():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv")(inp)  # with bias: removed by BN's mean subtraction
    x = L.BatchNormalization(epsilon=EPS, name="bn")(x)
    model = keras.Model(inp, x)
    found = _find(model)
    assert found == {"conv/kernel": "conv/kernel -> bn"}
    _check_numerically(model, _x((6, 8, 8, 3)), analysed={"conv/kernel"})


def test_conv_relu_bn_names_the_path():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, use_bias=False, name="conv")(inp)
    x = L.ReLU(name="re_lu")(x)
    x = L.BatchNormalization(epsilon=EPS, name="bn")(x)
    model = keras.Model(inp, x)
    assert _find(model)["conv/kernel"] == "conv/kernel -> bn (via re_lu)"
    _check_numerically(model, _x((6, 8, 8, 3)), analysed={"conv/kernel"})


def test_conv_with_bias_relu_bn_is_not_invariant():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv", bias_initializer="ones")(inp)
    x = L.ReLU()(x)
    x = L.BatchNormalization(epsilon=EPS)(x)
    model = keras.Model(inp, x)
    invariant, reason = _explain(model)["conv/kernel"]
    assert not invariant and "bias" in reason
    _check_numerically(model, _x((6, 8, 8, 3)), analysed={"conv/kernel"})


def test_conv_layernorm_with_bias_is_not_invariant_without_bias_is():
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, name="biased", bias_initializer="random_normal")(inp)
    a = L.LayerNormalization(epsilon=EPS, name="ln_a")(a)
    b = L.Conv2D(4, 3, use_bias=False, name="unbiased")(inp)
    b = L.LayerNormalization(epsilon=EPS, name="ln_b")(b)
    model = keras.Model(inp, [a, b])
    verdicts = _check_numerically(model, _x((2, 8, 8, 3)), analysed={"biased/kernel",
                                                                     "unbiased/kernel"})
    assert not verdicts["biased/kernel"][0]
    assert "not removed" in verdicts["biased/kernel"][1]
    assert verdicts["unbiased/kernel"] == (True, "unbiased/kernel -> ln_b")


def test_group_norm_bias_rule():
    inp = keras.Input((6, 6, 4))
    a = L.Conv2D(4, 3, name="grouped", bias_initializer="random_normal")(inp)
    a = L.GroupNormalization(groups=2, epsilon=EPS)(a)  # 2 channels per group: bias not removed
    b = L.Conv2D(4, 3, name="instance", bias_initializer="random_normal")(inp)
    b = L.GroupNormalization(groups=4, epsilon=EPS)(b)  # one channel per group: removed
    model = keras.Model(inp, [a, b])
    verdicts = _check_numerically(model, _x((3, 6, 6, 4)),
                                  analysed={"grouped/kernel", "instance/kernel"})
    assert not verdicts["grouped/kernel"][0]
    assert verdicts["instance/kernel"][0]


def test_residual_add_is_not_invariant():
    inp = keras.Input((8, 8, 4))
    y = L.Conv2D(4, 3, padding="same", use_bias=False, name="branch")(inp)
    x = L.Add(name="add")([inp, y])
    x = L.BatchNormalization(epsilon=EPS)(x)
    model = keras.Model(inp, x)
    invariant, reason = _explain(model)["branch/kernel"]
    assert not invariant
    assert "add" in reason and "residual" in reason
    _check_numerically(model, _x((4, 8, 8, 4)), analysed={"branch/kernel"})


def test_add_of_two_branches_scaled_by_the_same_weight_is_invariant():
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inp)
    b = L.Conv2D(4, 1, use_bias=False, name="proj")(a)
    x = L.Add()([a, b])
    x = L.BatchNormalization(epsilon=EPS)(x)
    model = keras.Model(inp, x)
    verdicts = _check_numerically(model, _x((4, 8, 8, 3)), analysed={"conv/kernel",
                                                                     "proj/kernel"})
    assert verdicts["conv/kernel"][0]
    assert not verdicts["proj/kernel"][0]  # proj alone does not scale the `a` branch


def test_dense_to_output_is_not_invariant():
    model = keras.Sequential([keras.Input((5,)), L.Dense(3, name="dense")], name="seq")
    verdicts = _check_numerically(model, _x((8, 5)))
    assert not verdicts["seq/dense/kernel"][0]
    assert "reaches the model output without normalization" in verdicts["seq/dense/kernel"][1]
    assert _find(model) == {}


def test_sequential_mlp_and_chains_of_linear_layers():
    model = keras.Sequential([
        keras.Input((6,)),
        L.Dense(8, activation="relu", use_bias=False, name="d1"),
        L.Dense(8, name="d2"),  # its bias is removed by the BN below
        L.BatchNormalization(center=False, epsilon=EPS, name="bn"),
        L.LeakyReLU(name="lrelu"),
        L.Dense(5, use_bias=False, name="d3"),
        L.LayerNormalization(epsilon=EPS, name="ln"),
        L.Dense(2, name="head"),
    ], name="mlp")
    verdicts = _check_numerically(model, _x((16, 6)))
    assert verdicts["mlp/d1/kernel"] == (True, "mlp/d1/kernel -> bn (via d2)")
    assert verdicts["mlp/d2/kernel"][0]
    assert verdicts["mlp/bn/gamma"] == (True, "mlp/bn/gamma -> ln (via lrelu, d3)")
    assert verdicts["mlp/d3/kernel"][0]
    assert not verdicts["mlp/ln/gamma"][0]
    assert not verdicts["mlp/head/kernel"][0]


def test_pooling_flatten_and_nested_sequential():
    block = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="inner_conv"),
         L.BatchNormalization(epsilon=EPS, beta_initializer="random_normal", name="inner_bn"),
         L.ReLU()],
        name="block",
    )
    inp = keras.Input((8, 8, 3))
    x = block(inp)
    x = L.Conv2D(4, 1, name="c2")(x)  # bias survives max pooling and flatten, BN removes it
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Flatten(name="flat")(x)
    x = L.BatchNormalization(epsilon=EPS, name="bn2")(x)
    out = L.Dense(2, name="head")(x)
    model = keras.Model(inp, out)
    verdicts = _check_numerically(model, _x((8, 8, 8, 3)))
    assert verdicts["block/inner_conv/kernel"] == (True, "block/inner_conv/kernel -> inner_bn")
    assert not verdicts["block/inner_bn/gamma"][0]  # beta is added before the ReLU
    assert verdicts["c2/kernel"] == (True, "c2/kernel -> bn2 (via pool, flat)")
    assert not verdicts["head/kernel"][0]


def test_dropout_between_is_invariant_without_bias():
    inp = keras.Input((6,))
    x = L.Dense(8, use_bias=False, name="a")(inp)
    x = L.Dropout(0.3)(x)
    x = L.BatchNormalization(epsilon=EPS)(x)
    y = L.Dense(8, name="b")(inp)
    y = L.Dropout(0.3)(y)  # a bias times a random mask is not removed by BN
    y = L.BatchNormalization(epsilon=EPS)(y)
    model = keras.Model(inp, [x, y])
    verdicts = _explain(model)
    assert verdicts["a/kernel"][0]
    assert not verdicts["b/kernel"][0] and "dropout" in verdicts["b/kernel"][1]


def test_unknown_op_is_conservative():
    inp = keras.Input((6,))
    x = L.Dense(8, use_bias=False, name="d")(inp)
    x = L.Activation("tanh")(x)
    x = L.BatchNormalization()(x)
    model = keras.Model(inp, x)
    invariant, reason = _explain(model)["d/kernel"]
    assert not invariant and "tanh" in reason


def test_subclassed_model_is_reported_not_analysable():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(3, name="dense")
            self.bn = L.BatchNormalization()

        def call(self, x):
            return self.bn(self.dense(x))

    model = Sub()
    model(np.zeros((2, 4), "float32"))
    verdicts = _explain(model)
    kernel = next(v for k, v in verdicts.items() if k.endswith("dense/kernel"))
    assert kernel[0] is False and "cannot be analysed" in kernel[1]
    assert _find(model) == {}


def test_weight_normalization_v_is_invariant_by_construction():
    class WeightNormalization(L.Layer):  # stand-in with the same class name and variables
        def build(self, input_shape):
            self.v = self.add_weight(shape=(input_shape[-1], 3), name="v")
            self.g = self.add_weight(shape=(3,), name="g", initializer="ones")

        def call(self, x):
            w = self.v / keras.ops.sqrt(keras.ops.sum(keras.ops.square(self.v), axis=0))
            return keras.ops.matmul(x, w * self.g)

    inp = keras.Input((4,))
    model = keras.Model(inp, WeightNormalization(name="wn")(inp))
    assert _find(model) == {
        "wn/v": "wn/v: weight normalization: output depends on v/||v||"
    }
    _check_numerically(model, _x((5, 4)), analysed={"wn/v"})


def test_needs_built_model():
    with pytest.raises(ValueError, match=r"needs a built model.*Received: model="):
        _find(keras.Sequential([L.Dense(2)]))


def test_project_normalization_layers_and_weight_normalization():
    layers = pytest.importorskip("keras_normreg.layers")
    inp = keras.Input((8, 8, 3))
    x = layers.WeightNormalization(L.Conv2D(4, 3, name="c"), name="wn")(inp)
    x = layers.L1BatchNormalization(epsilon=EPS, beta_initializer="random_normal",
                                    name="l1bn")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(4, 3, name="c2")(x)  # its bias is removed by the top-k BN's mean subtraction
    x = layers.TopKBatchNormalization(k=4, epsilon=EPS, name="topk")(x)
    x = L.Flatten()(x)
    out = layers.WeightNormalization(L.Dense(3), name="wn2")(x)
    model = keras.Model(inp, out)
    verdicts = _check_numerically(model, _x((6, 8, 8, 3)))
    assert verdicts["wn/v"] == (True, "wn/v: weight normalization: output depends on v/||v||")
    assert verdicts["wn2/v"][0]
    assert verdicts["wn/g"] == (True, "wn/g -> l1bn")  # conv(+bias) -> L1 BN
    assert verdicts["c2/kernel"] == (True, "c2/kernel -> topk")
    assert not verdicts["l1bn/gamma"][0]
    assert not verdicts["wn2/g"][0]


def test_concatenate_then_batch_norm_is_invariant_but_not_through_a_conv():
    inp = keras.Input((6, 6, 3))
    a = L.Conv2D(4, 3, padding="same", name="grow")(inp)  # DenseNet-style: concat -> BN
    x = L.Concatenate(name="cat")([inp, a])
    x = L.BatchNormalization(epsilon=EPS, name="bn")(x)
    x = L.ReLU()(x)
    b = L.Conv2D(4, 3, padding="same", name="grow2")(x)
    y = L.Concatenate(name="cat2")([x, b])
    y = L.Conv2D(4, 1, use_bias=False, name="mix")(y)  # mixes scaled and unscaled channels
    y = L.BatchNormalization(epsilon=EPS, name="bn2")(y)
    model = keras.Model(inp, y)
    verdicts = _check_numerically(model, _x((4, 6, 6, 3)), analysed={"grow/kernel",
                                                                     "grow2/kernel"})
    assert verdicts["grow/kernel"] == (True, "grow/kernel -> bn (via cat)")
    assert not verdicts["grow2/kernel"][0] and "mix" in verdicts["grow2/kernel"][1]


# ----------------------------------------------------------------------------- structured
def _unit_change(model, path, x):
    """Relative training-mode output change when each output unit (last axis) of the weight is
    scaled by its own positive factor."""
    var = next(v for v in model.weights if v.path == path)
    original = _np(var).copy()
    factors = np.linspace(0.5, 3.0, original.shape[-1]).astype("float32")
    y0 = _np(model(x, training=True))
    var.assign(original * factors)
    y1 = _np(model(x, training=True))
    var.assign(original)
    return float(np.max(np.abs(y1 - y0)) / (np.max(np.abs(y0)) + 1e-12))


def test_structured_fields_of_an_invariant_kernel():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, use_bias=False, name="conv")(inp)
    x = L.ReLU(name="re_lu")(x)
    x = L.BatchNormalization(epsilon=EPS, name="bn")(x)
    y = L.Conv2D(4, 3, use_bias=False, name="side")(inp)
    y = L.BatchNormalization(epsilon=EPS, name="bn2")(y)
    model = keras.Model(inp, L.Add(name="sum")([x, y]))
    found = find_scale_invariant(model)
    v = found["conv/kernel"]
    assert isinstance(v, ScaleInvariance)
    assert (v.path, v.invariant, v.normalizers, v.via, v.granularity) == (
        "conv/kernel", True, ("bn",), (("re_lu",),), "unit")
    assert v.reason == "conv/kernel -> bn (via re_lu)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.invariant = False
    # the "unit" claim checked on the network: per-unit rescaling leaves the output unchanged
    assert _unit_change(model, "conv/kernel", _x((6, 8, 8, 3))) < 1e-4
    head = explain_scale_invariance(model)["bn/gamma"]
    assert not head.invariant
    assert (head.normalizers, head.via, head.granularity) == ((), (), None)


def test_granularity_is_tensor_when_per_unit_rescaling_is_not_harmless():
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, use_bias=False, name="first")(inp)
    a = L.Conv2D(4, 1, use_bias=False, name="second")(a)  # mixes first's units
    a = L.BatchNormalization(epsilon=EPS, name="bn")(a)
    b = L.Conv2D(4, 3, use_bias=False, name="ln_conv")(inp)
    b = L.LayerNormalization(epsilon=EPS, name="ln")(b)  # normalizes over the channels jointly
    model = keras.Model(inp, [a, b])
    found = find_scale_invariant(model)
    assert {p: v.granularity for p, v in found.items()} == {
        "first/kernel": "tensor", "second/kernel": "unit", "ln_conv/kernel": "tensor"}
    assert found["first/kernel"].via == (("second",),)
    assert found["ln_conv/kernel"].normalizers == ("ln",)
    x = _x((6, 8, 8, 3))
    assert _unit_change(model, "second/kernel", x) < 1e-4
    assert _unit_change(model, "first/kernel", x) > 1e-3
    assert _unit_change(model, "ln_conv/kernel", x) > 1e-3
    assert _output_change(model, "ln_conv/kernel", x) < 1e-4


def test_structured_fields_with_two_normalizers_and_odd_layer_names():
    """The fields name the layers exactly, even with separators the human text also uses."""
    inp = keras.Input((6,))
    x = L.Dense(5, use_bias=False, name="d")(inp)
    x = L.ReLU(name="act (a, b)")(x)
    a = L.BatchNormalization(epsilon=EPS, name="bn, one")(x)
    b = L.BatchNormalization(epsilon=EPS, name="bn (two)")(x)
    model = keras.Model(inp, [a, b])
    v = find_scale_invariant(model)["d/kernel"]
    assert v.normalizers == ("bn, one", "bn (two)")
    assert v.via == (("act (a, b)",), ("act (a, b)",))
    assert v.granularity == "unit"
    assert v.reason == "d/kernel -> bn, one (via act (a, b)), bn (two) (via act (a, b))"


def test_weight_normalization_direction_fields():
    from keras_normreg.layers import WeightNormalization

    inp = keras.Input((6, 6, 3))
    x = WeightNormalization(L.Conv2D(4, 3), name="wn")(inp)
    model = keras.Model(inp, x)
    v = find_scale_invariant(model)["wn/v"]
    assert v.normalizers == ("wn",) and v.via == ((),)
    assert v.granularity == (0, 1, 2)  # the conv kernel's norm axes: one norm per filter


def test_verdicts_of_selected_variables():
    inp = keras.Input((6,))
    x = L.Dense(4, use_bias=False, name="d")(inp)
    model = keras.Model(inp, L.BatchNormalization(name="bn")(x))
    structured = _invariance.verdicts(model)
    kernel = model.get_layer("d").kernel
    assert _invariance.verdicts(model, variables=[kernel]) == {id(kernel): structured[id(kernel)]}
