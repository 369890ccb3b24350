"""Sphere radius of DecoupledWeightDecay (``sphere_radius``): the rule "units" (√units for a
group normalized over the whole tensor, 1 per unit), "one" and a float, checked against NumPy
references computed here; the effective-learning-rate claim; function preservation; config and
.keras round trips; the error messages. Runs on every backend (tests/optimizers is in
BACKEND_TESTS)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_normreg import optimizers
from keras_normreg.optimizers import DecoupledWeightDecay, _sphere
from tests.backend_marks import requires_float64
from tests.helpers import assert_config_roundtrip, assert_saved_model_equal

LR = 0.3


# ----------------------------------------------------------------------------- models
def dense_ln(units=16, epsilon=1e-3):
    """Dense kernel (6, units) -> LayerNormalization: invariant only as a whole tensor."""
    inp = keras.Input((6,))
    x = keras.layers.Dense(units, use_bias=False, name="d")(inp)
    x = keras.layers.LayerNormalization(epsilon=epsilon, name="ln")(x)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(x)), "d/kernel"


def conv_gn(units=9, epsilon=1e-3):
    """Conv1D kernel (3, 2, units) -> GroupNormalization(3 groups): whole tensor."""
    inp = keras.Input((10, 2))
    x = keras.layers.Conv1D(units, 3, use_bias=False, name="c")(inp)
    x = keras.layers.GroupNormalization(groups=3, epsilon=epsilon, name="gn")(x)
    x = keras.layers.GlobalAveragePooling1D(name="gap")(x)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(x)), "c/kernel"


def dense_bn(units=8):
    """Dense kernel (6, units) -> BatchNormalization -> ReLU: invariant per unit."""
    inp = keras.Input((6,))
    x = keras.layers.Dense(units, use_bias=False, name="d")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(x)), "d/kernel"


def variable(model, path):
    return {v.path: v for v in model.trainable_variables}[path]


def one_sgd_step(model, opt, seed=0):
    """Apply one plain-SGD step with fixed random gradients; return (w_before, grads) as
    float64 NumPy arrays by path."""
    rng = np.random.default_rng(seed)
    before = {v.path: np.asarray(v.numpy(), np.float64) for v in model.trainable_variables}
    grads = {p: rng.normal(size=w.shape) for p, w in before.items()}
    opt.apply([ops.convert_to_tensor(grads[v.path].astype(v.dtype))
               for v in model.trainable_variables], model.trainable_variables)
    return before, grads


# ----------------------------------------------------------------------------- basics
def test_default_rule_is_units_in_sphere_mode_only():
    sgd = keras.optimizers.SGD
    assert DecoupledWeightDecay(sgd(0.1), 0.0, scale_invariant="sphere").sphere_radius == "units"
    assert DecoupledWeightDecay(sgd(0.1), 0.0, sphere=("glob:*",)).sphere_radius == "units"
    assert DecoupledWeightDecay(sgd(0.1), 0.0).sphere_radius is None
    assert DecoupledWeightDecay(sgd(0.1), 0.0, scale_invariant="exclude").sphere_radius is None
    for given, stored in (("one", "one"), ("units", "units"), (3, 3.0), (np.float32(2.5), 2.5)):
        opt = DecoupledWeightDecay(sgd(0.1), 0.0, scale_invariant="sphere",
                                   sphere_radius=given)
        assert opt.sphere_radius == stored and type(opt.sphere_radius) is type(stored)
    # the aliases pass it to the wrapper
    assert optimizers.SGDW(scale_invariant="sphere", sphere_radius="one").sphere_radius == "one"
    assert optimizers.AdamW(sphere=("glob:*",), sphere_radius=2.0).sphere_radius == 2.0


@pytest.mark.parametrize("rule, granularity, shape, expected", [
    ("units", "tensor", (6, 16), 4.0),             # Dense (in, out): √16
    ("units", "tensor", (3, 2, 9), 3.0),           # Conv1D (k, in, out): √9
    ("units", "tensor", (3, 3, 2, 5), math.sqrt(5)),
    ("units", "unit", (6, 16), 1.0),               # per unit: each unit at 1
    ("units", (0, 1), (3, 3, 2, 4), 1.0),          # explicit axes: 1
    ("units", "tensor", (7,), 1.0),                # rank 1: no unit axis
    ("units", "unit", (7,), 1.0),
    ("one", "tensor", (6, 16), 1.0),
    ("one", "unit", (6, 16), 1.0),
    (2.5, "tensor", (6, 16), 2.5),
    (2.5, "unit", (6, 16), 2.5),
    (2.5, (0, 1), (3, 3, 2, 4), 2.5),
])
def test_radius_table(rule, granularity, shape, expected):
    assert _sphere.radius(rule, granularity, shape) == pytest.approx(expected, rel=1e-15)


def test_sphere_radius_of_and_treatment_unchanged():
    model, path = dense_ln(16)
    opt = DecoupledWeightDecay(keras.optimizers.SGD(LR), 0.0, scale_invariant="sphere",
                               exclude=()).bind(model)
    kernel = variable(model, path)
    assert opt.sphere_radius_of(kernel) == 4.0
    assert opt.sphere_radius_of(variable(model, "head/kernel")) is None  # decayed, not sphere
    assert opt.treatment(kernel, reason=True).granularity == "tensor"
    # (kind, reason, granularity, radius): radius None, no fixed-norm constraint
    assert len(opt.treatment(kernel, reason=True)) == 4
    assert opt.treatment(kernel, reason=True).radius is None


# ----------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("make, units", [(dense_ln, 16), (conv_gn, 9)])
def test_whole_tensor_kernel_is_retracted_to_sqrt_units(make, units):
    """After one SGD step: W ← (W − ηg) / ‖W − ηg‖_F · √units (NumPy, float64)."""
    model, path = make(units)
    opt = DecoupledWeightDecay(keras.optimizers.SGD(LR), 0.0, scale_invariant="sphere",
                               exclude=()).bind(model)
    assert opt.scale_invariant_paths == {path: "tensor"}
    before, grads = one_sgd_step(model, opt)
    stepped = before[path] - LR * grads[path]
    ref = stepped / np.linalg.norm(stepped) * np.sqrt(units)
    got = variable(model, path).numpy()
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-7)
    assert np.linalg.norm(got) == pytest.approx(np.sqrt(units), rel=1e-6)
    # only the whole tensor is pinned: the units' norms differ
    unit_norms = np.linalg.norm(got.reshape(-1, units), axis=0)
    assert unit_norms.std() > 1e-2


def test_per_unit_kernel_keeps_unit_norms():
    """BatchNorm per channel: each unit ‖w_j‖ = 1 under the default rule (NumPy reference)."""
    model, path = dense_bn(8)
    opt = DecoupledWeightDecay(keras.optimizers.SGD(LR), 0.0, scale_invariant="sphere",
                               exclude=()).bind(model)
    assert opt.scale_invariant_paths == {path: "unit"} and opt.sphere_radius == "units"
    before, grads = one_sgd_step(model, opt)
    stepped = before[path] - LR * grads[path]
    ref = stepped / np.linalg.norm(stepped, axis=0, keepdims=True)
    got = variable(model, path).numpy()
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(got, axis=0), 1.0, rtol=1e-6)


@pytest.mark.parametrize("rule, make, per_unit, expected", [
    ("one", dense_ln, False, 1.0),      # the old behaviour: ‖W‖_F = 1
    ("one", dense_bn, True, 1.0),
    (2.5, dense_ln, False, 2.5),        # a float: every group at that norm
    (2.5, dense_bn, True, 2.5),
])
def test_one_and_float_radius(rule, make, per_unit, expected):
    model, path = make()
    opt = DecoupledWeightDecay(keras.optimizers.SGD(LR), 0.0, scale_invariant="sphere",
                               sphere_radius=rule, exclude=()).bind(model)
    before, grads = one_sgd_step(model, opt)
    stepped = before[path] - LR * grads[path]
    axis = 0 if per_unit else None
    ref = stepped / np.linalg.norm(stepped, axis=axis, keepdims=per_unit) * expected
    got = variable(model, path).numpy()
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-7)
    norms = np.linalg.norm(got, axis=axis)
    np.testing.assert_allclose(norms, expected, rtol=1e-6)


def test_sphere_rules_take_the_float_radius():
    """A ``sphere`` rule (per unit) with sphere_radius=0.5: each unit at 0.5."""
    w0 = np.random.default_rng(1).normal(size=(5, 3))
    kernel = keras.Variable(w0.astype("float32"), name="kernel")
    opt = DecoupledWeightDecay(keras.optimizers.SGD(LR), 0.0, sphere=("glob:kernel",),
                               sphere_radius=0.5)
    opt.apply([ops.zeros((5, 3))], [kernel])
    ref = w0 / np.linalg.norm(w0, axis=0, keepdims=True) * 0.5
    np.testing.assert_allclose(kernel.numpy(), ref, rtol=2e-6, atol=1e-7)


def test_effective_learning_rate_matches_the_per_unit_case_on_average():
    """Hand-derived: with r = √units, mean_j ‖w_j‖² = r²/units = 1, so the effective learning
    rate at the mean unit norm, η / mean_j ‖w_j‖², is exactly η (the per-unit case's
    η/‖w_j‖² = η), whatever the units' individual norms. The mean of the units' own rates,
    mean_j η/‖w_j‖², is ≥ η (Jensen). With radius 1 the same quantity is η·units."""
    units = 16
    for rule, expected in (("units", LR), ("one", LR * units)):
        model, path = dense_ln(units)
        opt = DecoupledWeightDecay(keras.optimizers.SGD(LR), 0.0, scale_invariant="sphere",
                                   sphere_radius=rule, exclude=()).bind(model)
        for seed in range(3):
            one_sgd_step(model, opt, seed)
        w = np.asarray(variable(model, path).numpy(), np.float64)
        sq = np.sum(w * w, axis=0)  # ‖w_j‖²
        assert LR / sq.mean() == pytest.approx(expected, rel=1e-5)
        assert np.mean(LR / sq) >= LR / sq.mean()
    # per unit (BatchNorm): every unit exactly at η
    model, path = dense_bn(8)
    opt = DecoupledWeightDecay(keras.optimizers.SGD(LR), 0.0, scale_invariant="sphere",
                               exclude=()).bind(model)
    one_sgd_step(model, opt)
    w = np.asarray(variable(model, path).numpy(), np.float64)
    np.testing.assert_allclose(LR / np.sum(w * w, axis=0), LR, rtol=1e-5)


@pytest.mark.parametrize("make", [dense_ln, conv_gn])
def test_retraction_preserves_the_function(make):
    """Zero gradient: the step only retracts the kernel (its norm moves to √units), and the
    model's output does not change (the normalization removes the scale; a tiny epsilon so the
    check is tight)."""
    model, path = make(epsilon=1e-10)
    kernel = variable(model, path)
    kernel.assign(kernel.numpy() * 7.0)  # far from the sphere
    shape = (4, *model.input_shape[1:])
    x = np.random.default_rng(2).normal(size=shape).astype("float32")
    y0 = ops.convert_to_numpy(model(x))
    opt = DecoupledWeightDecay(keras.optimizers.SGD(LR), 0.0, scale_invariant="sphere",
                               exclude=()).bind(model)
    norm0 = np.linalg.norm(kernel.numpy())
    opt.apply([ops.zeros(v.shape) for v in model.trainable_variables], model.trainable_variables)
    norm1 = np.linalg.norm(kernel.numpy())
    assert norm1 == pytest.approx(math.sqrt(kernel.shape[-1]), rel=1e-6)
    assert abs(norm0 - norm1) > 1.0
    np.testing.assert_allclose(ops.convert_to_numpy(model(x)), y0, rtol=1e-5, atol=1e-5)


def test_radius_holds_over_many_adam_steps():
    """100 Adam steps with random gradients: ‖W‖_F stays √units (float32 rounding)."""
    units = 16
    rng = np.random.default_rng(5)
    kernel = keras.Variable(rng.normal(size=(6, units)).astype("float32") * 3, name="kernel")
    opt = DecoupledWeightDecay(keras.optimizers.Adam(0.05), 0.0, scale_invariant="sphere",
                               scale_invariant_paths={"kernel": "tensor"})
    worst = 0.0
    for _ in range(100):
        opt.apply([ops.convert_to_tensor(rng.normal(size=(6, units)).astype("float32"))],
                  [kernel])
        worst = max(worst, abs(np.linalg.norm(kernel.numpy()) - 4.0))
    assert worst < 4e-6


@requires_float64
def test_float64_tensor_retraction_to_machine_precision():
    """float64: one SGD step and the retraction to √units equal a float64 NumPy reference to a
    few ulps (the radius reaches the float64 variable without a float32 detour)."""
    rng = np.random.default_rng(3)
    w0, g = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    kernel = keras.Variable(w0, dtype="float64", name="kernel")
    lr = 0.125  # exact in float32 (Keras keeps the learning rate as a float32 variable)
    opt = DecoupledWeightDecay(keras.optimizers.SGD(lr), 0.0, scale_invariant="sphere",
                               scale_invariant_paths={"kernel": "tensor"})
    opt.apply([ops.convert_to_tensor(g)], [kernel])
    k = w0 - lr * g
    ref = k / np.linalg.norm(k) * np.sqrt(7.0)
    assert kernel.dtype == "float64"
    np.testing.assert_allclose(kernel.numpy(), ref, rtol=4e-15, atol=0)


# ----------------------------------------------------------------------------- saving
@pytest.mark.parametrize("rule", ["units", "one", 2.5])
def test_config_roundtrip(rule):
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.0, scale_invariant="sphere",
                               scale_invariant_paths={"a/kernel": "tensor"}, sphere_radius=rule)
    assert opt.get_config()["sphere_radius"] == rule
    clone = assert_config_roundtrip(opt)
    assert clone.sphere_radius == rule
    plain = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.1)
    assert plain.get_config()["sphere_radius"] is None
    assert assert_config_roundtrip(plain).sphere_radius is None


def test_config_without_the_key_loads_with_radius_one():
    """A config saved before the option existed was trained at radius 1: it keeps it."""
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.0, scale_invariant="sphere",
                               scale_invariant_paths={"a/kernel": "tensor"})
    legacy = opt.get_config()
    del legacy["sphere_radius"]
    assert DecoupledWeightDecay.from_config(legacy).sphere_radius == "one"
    plain = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.1).get_config()
    del plain["sphere_radius"]
    assert DecoupledWeightDecay.from_config(plain).sphere_radius is None


@pytest.mark.parametrize("rule, radius", [("units", 4.0), (2.5, 2.5)])
def test_keras_file_roundtrip_keeps_the_radius(tmp_path, rule, radius):
    model, path = dense_ln(16)
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.05), 0.0, scale_invariant="sphere",
                               sphere_radius=rule, exclude=()).bind(model)
    model.compile(optimizer=opt, loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 6)).astype("float32"), rng.normal(size=(8, 3)).astype("float32")
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    loaded = assert_saved_model_equal(model, x, tmp_path)
    lopt = loaded.optimizer
    assert isinstance(lopt, DecoupledWeightDecay)
    assert lopt.sphere_radius == rule and lopt.get_config() == opt.get_config()
    loaded.fit(x, y, epochs=1, batch_size=4, verbose=0)
    norm = np.linalg.norm(variable(loaded, path).numpy())
    assert norm == pytest.approx(radius, rel=1e-5)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("bad", ["two", "Units", 0, -1.0, float("nan"), float("inf"), True,
                                 [1.0]])
def test_bad_radius_values(bad):
    with pytest.raises(ValueError, match=r"Argument `sphere_radius` must be 'units'.*"
                                         r"Received: sphere_radius="):
        DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.0, scale_invariant="sphere",
                             sphere_radius=bad)


@pytest.mark.parametrize("kwargs", [{}, {"scale_invariant": "exclude"},
                                    {"scale_invariant": "none"}])
@pytest.mark.parametrize("rule", ["units", "one", 2.0])
def test_radius_without_sphere_mode_is_an_error(kwargs, rule):
    """Inconsistent options: a radius with no weight in sphere mode names both options."""
    with pytest.raises(ValueError, match=r"`sphere_radius`.*`scale_invariant='sphere'`.*"
                                         r"`sphere` rules.*Received: sphere_radius="):
        DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.0, sphere_radius=rule, **kwargs)


def test_radius_without_sphere_mode_in_a_config_is_an_error():
    config = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.1).get_config()
    config["sphere_radius"] = 2.0
    with pytest.raises(ValueError, match=r"no weight is in sphere mode.*"
                                         r"Received: sphere_radius=2.0"):
        DecoupledWeightDecay.from_config(config)


def test_radius_rule_units_needs_a_known_unit_axis():
    with pytest.raises(ValueError, match=r"needs the number of output units.*Received: shape="):
        _sphere.radius("units", "tensor", (3, None))
