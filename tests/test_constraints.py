"""keras_normreg.constraints: per-output-unit norms with axes inferred from the layer kind."""

import keras
import numpy as np
import pytest

from keras_normreg import constraints
from tests.backend_marks import requires_float64
from tests.helpers import (
    assert_config_roundtrip,
    assert_saved_model_equal,
    assert_serialize_roundtrip,
)

pytestmark = pytest.mark.backends  # a block's tests: run on every backend (backend_marks.py)

L = keras.layers


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _unit_norms(w, axes):
    """Independent NumPy reference: L2 norm over ``axes`` (one value per output unit)."""
    return np.sqrt(np.sum(np.square(w), axis=axes))


def _built(layer, input_shape):
    layer.build(input_shape)
    return layer


# (layer, input shape, attach-free constraint kind, NumPy axes of one output unit)
CASES = [
    ("dense", lambda: _built(L.Dense(5), (None, 7)), (0,)),
    ("conv", lambda: _built(L.Conv1D(5, 3), (None, 10, 4)), (0, 1)),
    ("conv", lambda: _built(L.Conv2D(5, 3), (None, 8, 8, 4)), (0, 1, 2)),
    ("conv", lambda: _built(L.Conv3D(5, 2), (None, 4, 4, 4, 3)), (0, 1, 2, 3)),
    ("depthwise", lambda: _built(L.DepthwiseConv2D(3, depth_multiplier=2), (None, 8, 8, 4)),
     (0, 1)),
    ("conv_transpose", lambda: _built(L.Conv2DTranspose(5, 3), (None, 8, 8, 4)), (0, 1, 3)),
    ("embedding", lambda: _built(L.Embedding(11, 6), (None, 3)), (1,)),
]


# ----------------------------------------------------------------------------- basics


@pytest.mark.parametrize("kind,make,axes", CASES, ids=[c[0] + str(i) for i, c in enumerate(CASES)])
def test_unit_norm_per_output_unit(kind, make, axes):
    layer = make()
    w = _np(layer.weights[0]) * 3.7  # make the norms clearly not 1
    out = _np(constraints.UnitNorm(layer_kind=kind)(w))
    np.testing.assert_allclose(_unit_norms(out, axes), 1.0, atol=1e-5)
    # the direction of every unit is unchanged: out = w / ||w|| per unit
    np.testing.assert_allclose(out, w / _unit_norms(w, axes).reshape(
        [1 if a in axes else s for a, s in enumerate(w.shape)]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,make,axes", CASES, ids=[c[0] + str(i) for i, c in enumerate(CASES)])
def test_fixed_norm_exact(kind, make, axes):
    w = _np(make().weights[0]) * 0.3
    out = _np(constraints.FixedNorm(2.5, layer_kind=kind)(w))
    np.testing.assert_allclose(_unit_norms(out, axes), 2.5, rtol=1e-6)
    # idempotent: projecting twice changes nothing
    again = _np(constraints.FixedNorm(2.5, layer_kind=kind)(out))
    np.testing.assert_allclose(again, out, rtol=1e-6, atol=1e-7)


def test_rank_inference_dense_and_conv_without_layer_kind():
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(6, 4)).astype("float32")
    conv = rng.normal(size=(3, 3, 2, 5)).astype("float32")
    np.testing.assert_allclose(_unit_norms(_np(constraints.UnitNorm()(dense)), (0,)), 1, atol=1e-5)
    np.testing.assert_allclose(_unit_norms(_np(constraints.UnitNorm()(conv)), (0, 1, 2)), 1,
                               atol=1e-5)
    # rank 1 (bias, gamma): the whole vector
    vec = rng.normal(size=(7,)).astype("float32")
    assert np.linalg.norm(_np(constraints.UnitNorm()(vec))) == pytest.approx(1, abs=1e-5)


def test_explicit_axis_overrides_layer_kind():
    w = np.random.default_rng(1).normal(size=(4, 6)).astype("float32")
    out = _np(constraints.UnitNorm(axis=1, layer_kind="dense")(w))
    np.testing.assert_allclose(_unit_norms(out, (1,)), 1, atol=1e-5)
    out = _np(constraints.UnitNorm(axis=[0, 1])(w))
    assert np.linalg.norm(out) == pytest.approx(1, abs=1e-5)


def test_zero_unit_stays_zero():
    w = np.zeros((3, 2), "float32")
    w[:, 1] = [3, 4, 0]
    out = _np(constraints.UnitNorm()(w))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:, 0], 0)
    np.testing.assert_allclose(out[:, 1], [0.6, 0.8, 0.0], rtol=1e-6)


# ----------------------------------------------------------------------------- correctness


def test_max_norm_clips_only_units_above_max():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(3, 3, 4, 6)).astype("float32")
    scales = np.array([0.1, 0.5, 1.0, 3.0, 5.0, 0.2], "float32")
    w = w / _unit_norms(w, (0, 1, 2)) * scales  # unit j has norm scales[j]
    out = _np(constraints.MaxNorm(max_value=2.0, layer_kind="conv")(w))
    # NumPy reference: w_j * min(1, c / ||w_j||)
    norms = _unit_norms(w, (0, 1, 2))
    expected = w * np.minimum(1.0, 2.0 / norms)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
    small = scales <= 2.0
    np.testing.assert_array_equal(out[..., small], w[..., small])  # untouched exactly
    np.testing.assert_allclose(_unit_norms(out, (0, 1, 2))[~small], 2.0, rtol=1e-5)


@requires_float64
def test_float64_constraints_match_numpy_to_machine_precision():
    """float64 weights stay float64 (also on torch, where Keras' ops.maximum/minimum would give
    float32): FixedNorm / MaxNorm equal the float64 NumPy formulas to ~1e-15."""
    w = np.random.default_rng(5).normal(size=(3, 4))
    w[:, 3] *= 0.1  # one unit under the MaxNorm cap: left exactly as is
    n = np.linalg.norm(w, axis=0, keepdims=True)
    for c, ref in ((constraints.FixedNorm(0.7), w * (0.7 / n)),
                   (constraints.MaxNorm(0.5), w * np.minimum(1.0, 0.5 / n))):
        out = keras.ops.convert_to_numpy(c(keras.ops.convert_to_tensor(w)))
        assert out.dtype == np.float64, type(c).__name__
        np.testing.assert_allclose(out, ref, rtol=1e-14, atol=0, err_msg=type(c).__name__)
    assert (keras.ops.convert_to_numpy(constraints.MaxNorm(0.5)(w))[:, 3] == w[:, 3]).all()


def test_keras_unit_norm_is_wrong_on_conv_kernels_ours_is_right():
    layer = _built(L.Conv2D(8, 3), (None, 10, 10, 3))
    w = _np(layer.kernel) * 2.0
    ours = _np(constraints.UnitNorm()(w))
    theirs = _np(keras.constraints.UnitNorm()(w))  # axis=0 by default
    per_filter_ours = _unit_norms(ours, (0, 1, 2))
    per_filter_theirs = _unit_norms(theirs, (0, 1, 2))
    np.testing.assert_allclose(per_filter_ours, 1.0, atol=1e-5)
    assert np.max(np.abs(per_filter_theirs - 1.0)) > 0.3  # keras' filters are not unit norm
    # what keras' default does normalize: the kernel rows (axis 0), 3*3*8 vectors of length 3
    np.testing.assert_allclose(_unit_norms(theirs, (0,)), 1.0, atol=1e-5)


def test_attach_then_one_sgd_step_keeps_unit_norms():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="conv")(inp)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(4, name="head")(x)
    model = keras.Model(inp, out)
    touched = constraints.attach(model, constraints.UnitNorm(),
                                 targets=("kernel", "depthwise_kernel"))
    assert sorted(touched) == ["conv/kernel", "dw/kernel", "head/kernel"]
    conv, dw, dense = model.layers[1], model.layers[2], model.layers[4]
    # the layer attributes carry the right layer_kind, the variables the same constraint
    assert conv.kernel_constraint.layer_kind == "conv"
    assert dw.depthwise_constraint.layer_kind == "depthwise"
    assert dense.kernel_constraint.layer_kind == "dense"
    assert dense.kernel.constraint is dense.kernel_constraint
    axes = {"conv": (0, 1, 2), "dw": (0, 1), "dense": (0,)}

    def check():
        np.testing.assert_allclose(_unit_norms(_np(conv.kernel), axes["conv"]), 1, atol=1e-5)
        np.testing.assert_allclose(_unit_norms(_np(dw.kernel), axes["dw"]), 1, atol=1e-5)
        np.testing.assert_allclose(_unit_norms(_np(dense.kernel), axes["dense"]), 1, atol=1e-5)

    check()  # projected at attach time
    before = _np(dense.kernel).copy()
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    x = np.random.default_rng(3).normal(size=(16, 8, 8, 3)).astype("float32")
    y = np.random.default_rng(4).normal(size=(16, 4)).astype("float32")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert not np.allclose(_np(dense.kernel), before)  # the step did move the weights
    check()


def test_attach_after_compile_and_fit_retraces():
    model = keras.Sequential([keras.Input((5,)), L.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    x = np.random.default_rng(5).normal(size=(8, 5)).astype("float32")
    y = np.random.default_rng(6).normal(size=(8, 3)).astype("float32") * 10
    model.fit(x, y, verbose=0)  # traces the train function without a constraint
    constraints.attach(model, "max_norm")
    model.fit(x, y, verbose=0)
    assert np.all(_unit_norms(_np(model.layers[0].kernel), (0,)) <= 2.0 + 1e-5)


def test_attach_embedding_and_transpose_and_include_exclude():
    inp = keras.Input((4,), dtype="int32")
    e = L.Embedding(20, 6, name="emb")(inp)
    x = L.Reshape((4, 6, 1))(e)
    x = L.Conv2DTranspose(3, 3, name="up")(x)
    x = L.Flatten()(x)
    out = L.Dense(2, name="head")(x)
    model = keras.Model(inp, out)
    touched = constraints.attach(model, "unit_norm", targets="all", exclude=["Dense", "*/bias"])
    assert sorted(touched) == ["emb/embeddings", "up/kernel"]
    np.testing.assert_allclose(_unit_norms(_np(model.get_layer("emb").embeddings), (1,)), 1,
                               atol=1e-5)
    np.testing.assert_allclose(_unit_norms(_np(model.get_layer("up").kernel), (0, 1, 3)), 1,
                               atol=1e-5)
    assert model.get_layer("head").kernel.constraint is None
    touched = constraints.attach(model, constraints.MaxNorm(1.0), include=keras.layers.Dense)
    assert touched == ["head/kernel"]


# ----------------------------------------------------------------------------- serialization


@pytest.mark.parametrize("obj", [
    constraints.UnitNorm(),
    constraints.UnitNorm(axis=[0, 1], layer_kind="depthwise"),
    constraints.MaxNorm(3.0, layer_kind="conv"),
    constraints.FixedNorm(0.5, axis=1),
])
def test_config_roundtrip(obj):
    clone = assert_config_roundtrip(obj)
    assert_serialize_roundtrip(obj)
    w = np.random.default_rng(7).normal(size=(3, 3, 2, 4)).astype("float32")
    np.testing.assert_allclose(_np(clone(w)), _np(obj(w)))


def test_get_table_class_instance_dict():
    assert isinstance(constraints.get("unit_norm"), constraints.UnitNorm)
    assert isinstance(constraints.get("fixed_norm"), constraints.FixedNorm)
    assert isinstance(constraints.get("non_neg"), keras.constraints.NonNeg)
    assert isinstance(constraints.get(constraints.MaxNorm), constraints.MaxNorm)
    inst = constraints.MaxNorm(4.0)
    assert constraints.get(inst) is inst
    assert constraints.get(None) is None
    c = constraints.get({"class_name": "max_norm", "config": {"max_value": 3.0}})
    assert isinstance(c, constraints.MaxNorm) and c.max_value == 3.0
    c = constraints.get(keras.saving.serialize_keras_object(constraints.FixedNorm(2.0, axis=0)))
    assert isinstance(c, constraints.FixedNorm) and c.value == 2.0 and c.axis == 0


def test_saved_model_keeps_constraint(tmp_path):
    model = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(3, 3), L.Flatten(), L.Dense(2)])
    constraints.attach(model, constraints.FixedNorm(1.5))
    x = np.random.default_rng(8).normal(size=(4, 6, 6, 2)).astype("float32")
    loaded = assert_saved_model_equal(model, x, tmp_path)
    conv = loaded.layers[0]
    assert isinstance(conv.kernel_constraint, constraints.FixedNorm)
    assert conv.kernel_constraint.get_config() == {"value": 1.5, "axis": None, "layer_kind": "conv"}
    assert isinstance(conv.kernel.constraint, constraints.FixedNorm)  # rebuilt variable has it
    np.testing.assert_allclose(_unit_norms(_np(conv.kernel), (0, 1, 2)), 1.5, rtol=1e-5)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs,match", [
    ({"axis": "0"}, r"Argument `axis`.*Received: axis='0'"),
    ({"axis": 1.5}, r"Argument `axis`.*Received: axis=1.5"),
    ({"axis": [0, 0]}, r"must not repeat.*Received: axis=\[0, 0\]"),
    ({"axis": True}, r"Argument `axis`.*Received: axis=True"),
    ({"layer_kind": "lstm"}, r"Argument `layer_kind` must be one of.*Received: layer_kind='lstm'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        constraints.UnitNorm(**kwargs)


@pytest.mark.parametrize("cls,kwargs,match", [
    (constraints.MaxNorm, {"max_value": 0}, r"`max_value` must be > 0.*Received: max_value=0"),
    (constraints.MaxNorm, {"max_value": "2"}, r"`max_value` must be a number"),
    (constraints.FixedNorm, {"value": -1.0}, r"`value` must be > 0.*Received: value=-1.0"),
])
def test_bad_values(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_axis_out_of_range_and_kind_rank_mismatch():
    w = np.ones((3, 4), "float32")
    with pytest.raises(ValueError, match=r"out of range.*Received: axis=2"):
        constraints.UnitNorm(axis=2)(w)
    with pytest.raises(ValueError, match=r"rank >= 3.*Received: layer_kind='conv'"):
        constraints.UnitNorm(layer_kind="conv")(w)
    with pytest.raises(ValueError, match=r"rank-2.*Received: layer_kind='embedding'"):
        constraints.UnitNorm(layer_kind="embedding")(np.ones((2, 2, 2), "float32"))


def test_get_errors():
    with pytest.raises(ValueError, match=r"Unknown constraint 'unitnorm'.*'fixed_norm'.*"
                                         r"Received: identifier='unitnorm'"):
        constraints.get("unitnorm")
    with pytest.raises(ValueError, match=r"Could not interpret a constraint"):
        constraints.get(3)
    with pytest.raises(ValueError, match=r"needs a 'class_name'"):
        constraints.get({"max_value": 2})
    with pytest.raises(ValueError, match=r"must subclass keras.constraints.Constraint"):
        constraints.get(int)


def test_attach_errors():
    model = keras.Sequential([keras.Input((4,)), L.BatchNormalization()])
    with pytest.raises(ValueError, match=r"constraint targets 'kernel' but the model has no layer "
                                         r"with a kernel"):
        constraints.attach(model, "unit_norm")
    with pytest.raises(ValueError, match=r"unknown target 'kernels'.*Received: targets="):
        constraints.attach(model, "unit_norm", targets=("kernels",))
    with pytest.raises(ValueError, match=r"Argument `include`.*Received: include=3"):
        constraints.attach(model, "unit_norm", targets="gamma", include=3)
    with pytest.raises(ValueError, match=r"needs a built model"):
        constraints.attach(keras.Sequential([L.Dense(2)]), "unit_norm")
    with pytest.warns(UserWarning, match=r"`exclude` entry 'Conv2D' matched no"):
        constraints.attach(model, "max_norm", targets="gamma", exclude="Conv2D")


def test_attach_to_weight_normalization_direction():
    layers = pytest.importorskip("keras_normreg.layers")
    model = keras.Sequential([keras.Input((6, 6, 2)),
                              layers.WeightNormalization(L.Conv2D(3, 3), name="wn")])
    assert constraints.attach(model, "unit_norm") == [model.get_layer("wn").v.path]
    wn = model.get_layer("wn")
    assert wn.layer.kernel_constraint.layer_kind == "conv"  # stored in the inner layer's config
    np.testing.assert_allclose(_unit_norms(_np(wn.v), (0, 1, 2)), 1, atol=1e-5)
