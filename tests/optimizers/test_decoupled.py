"""DecoupledWeightDecay and its aliases: golden tests against NumPy, Keras equality, rules,
serialization, sphere mode, bind(model), mixed precision, errors."""

from __future__ import annotations

import os
import sys
import types

import keras
import numpy as np
import pytest
from keras import ops

from keras_normreg import optimizers
from keras_normreg._invariance import ScaleInvariance
from keras_normreg.optimizers import DecoupledWeightDecay
from keras_normreg.optimizers import decoupled as decoupled_module
from tests.backend_marks import requires_float64, requires_tensorflow
from tests.helpers import (
    assert_config_roundtrip,
    assert_saved_model_equal,
    assert_serialize_roundtrip,
)

STEPS = 5
LR0 = 0.05
LR_DECAY = 0.7  # lr_t = LR0 * 0.7**t
LAM = 0.3
LAM_HALF_LIFE = 2  # s(t) = 0.5**(t/2)


# ----------------------------------------------------------------------------- NumPy reference
def lr_at(t):
    return LR0 * LR_DECAY**t


def s_at(t):
    return 0.5 ** (t / LAM_HALF_LIFE)


class RefSGD:
    def __init__(self, momentum=0.9, nesterov=False):
        self.mu, self.nesterov, self.m = momentum, nesterov, None

    def step(self, w, g, lr, t):
        if self.m is None:
            self.m = np.zeros_like(w)
        self.m = self.mu * self.m - lr * g
        return w + (self.mu * self.m - lr * g if self.nesterov else self.m)


class RefAdam:
    def __init__(self, b1=0.9, b2=0.999, eps=1e-7):
        self.b1, self.b2, self.eps, self.m, self.v = b1, b2, eps, None, None

    def step(self, w, g, lr, t):
        if self.m is None:
            self.m, self.v = np.zeros_like(w), np.zeros_like(w)
        k = t + 1
        self.m = self.m + (g - self.m) * (1 - self.b1)
        self.v = self.v + (g * g - self.v) * (1 - self.b2)
        alpha = lr * np.sqrt(1 - self.b2**k) / (1 - self.b1**k)
        return w - alpha * self.m / (np.sqrt(self.v) + self.eps)


class RefRMSprop:
    def __init__(self, rho=0.9, momentum=0.5, eps=1e-7):
        self.rho, self.mu, self.eps, self.v, self.mom = rho, momentum, eps, None, None

    def step(self, w, g, lr, t):
        if self.v is None:
            self.v, self.mom = np.zeros_like(w), np.zeros_like(w)
        self.v = self.rho * self.v + (1 - self.rho) * g * g
        inc = lr * g / np.sqrt(self.v + self.eps)
        self.mom = self.mu * self.mom + inc
        return w - self.mom


class RefLion:
    def __init__(self, b1=0.9, b2=0.99):
        self.b1, self.b2, self.m = b1, b2, None

    def step(self, w, g, lr, t):
        if self.m is None:
            self.m = np.zeros_like(w)
        w = w - lr * np.sign(self.b1 * self.m + (1 - self.b1) * g)
        self.m = self.b2 * self.m + (1 - self.b2) * g
        return w


def decay_factor(semantics, t, lam, lr0=LR0, lr_max=LR0):
    """c_t with w <- w - c_t * w."""
    lr = lr_at(t)
    if semantics == "lr":
        return lam * lr
    if semantics == "schedule":
        return lam * lr / lr0
    return lam * lr * lr / lr_max


INNER = {
    "sgd": (lambda lr: keras.optimizers.SGD(lr, momentum=0.9), lambda: RefSGD(0.9)),
    "sgd_nesterov": (lambda lr: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
                     lambda: RefSGD(0.9, nesterov=True)),
    "adam": (lambda lr: keras.optimizers.Adam(lr), lambda: RefAdam()),
    "rmsprop": (lambda lr: keras.optimizers.RMSprop(lr, momentum=0.5), lambda: RefRMSprop()),
    "lion": (lambda lr: keras.optimizers.Lion(lr), lambda: RefLion()),
}


def lr_schedule():
    return keras.optimizers.schedules.ExponentialDecay(LR0, decay_steps=1, decay_rate=LR_DECAY)


def lam_schedule():
    return keras.optimizers.schedules.ExponentialDecay(1.0, decay_steps=LAM_HALF_LIFE,
                                                       decay_rate=0.5)


def fixed_problem(seed=0):
    rng = np.random.default_rng(seed)
    w = {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))}
    grads = [{k: rng.normal(size=v.shape) for k, v in w.items()} for _ in range(STEPS)]
    return w, grads


def make_vars(w):
    return {k: keras.Variable(v.astype("float32"), name=k) for k, v in w.items()}


def run_keras(opt, w, grads, order=("kernel", "bias")):
    variables = make_vars(w)
    var_list = [variables[k] for k in order]
    for g in grads:
        opt.apply([ops.convert_to_tensor(g[k].astype("float32")) for k in order], var_list)
    return {k: v.numpy() for k, v in variables.items()}


# ----------------------------------------------------------------------------- golden tests
@pytest.mark.parametrize("semantics", ["lr", "schedule", "corrected"])
@pytest.mark.parametrize("inner", sorted(INNER))
def test_golden_against_numpy(inner, semantics):
    """5 steps with a decaying lr schedule and a decay schedule: kernel decayed, bias excluded."""
    make_inner, make_ref = INNER[inner]
    kwargs = {"max_learning_rate": LR0} if semantics == "corrected" else {}
    opt = DecoupledWeightDecay(make_inner(lr_schedule()), LAM, semantics=semantics,
                               decay_schedule=lam_schedule(), exclude=("bias",), **kwargs)
    w, grads = fixed_problem()
    got = run_keras(opt, w, grads)

    refs = {k: make_ref() for k in w}
    ref = {k: v.copy() for k, v in w.items()}
    for t, g in enumerate(grads):
        for k in ref:
            if k == "kernel":  # decayed before the step, from the pre-step value
                ref[k] = ref[k] - decay_factor(semantics, t, LAM * s_at(t)) * ref[k]
            ref[k] = refs[k].step(ref[k], g[k], lr_at(t), t)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=2e-5, atol=2e-6, err_msg=k)
    # the decay really matters for this problem (guards against a vacuous comparison)
    no_decay = run_keras(DecoupledWeightDecay(make_inner(lr_schedule()), 0.0), w, grads)
    assert np.abs(no_decay["kernel"] - got["kernel"]).max() > 1e-4


@requires_tensorflow
def test_golden_constant_lr_in_tf_function():
    """Graph mode (tf.function) gives the same numbers; schedule semantics with a float lr is
    λ·(lr/lr0) = λ per step, not multiplied by lr."""
    import tensorflow as tf

    w, grads = fixed_problem(1)
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.2, semantics="schedule", exclude=())
    variables = make_vars(w)
    var_list = [variables["kernel"], variables["bias"]]
    opt.build(var_list)
    step = tf.function(lambda gs: opt.apply(gs, var_list))
    for g in grads:
        step([tf.constant(g["kernel"], tf.float32), tf.constant(g["bias"], tf.float32)])
    ref = {k: v.copy() for k, v in w.items()}
    for g in grads:
        for k in ref:
            ref[k] = ref[k] - 0.2 * ref[k] - 0.1 * g[k]
    for k in ref:
        np.testing.assert_allclose(variables[k].numpy(), ref[k], rtol=1e-5, atol=1e-6)


def test_schedule_semantics_infers_base_lr_from_schedule():
    opt = DecoupledWeightDecay(keras.optimizers.SGD(lr_schedule()), LAM, semantics="schedule")
    assert opt.base_learning_rate == pytest.approx(LR0)
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.3), LAM, semantics="corrected")
    assert opt.max_learning_rate == pytest.approx(0.3)


# ----------------------------------------------------------------------------- Keras equality
def _random_run(opt, seed=3, steps=STEPS):
    rng = np.random.default_rng(seed)
    k = keras.Variable(rng.normal(size=(4, 5)).astype("float32"), name="kernel")
    b = keras.Variable(rng.normal(size=(5,)).astype("float32"), name="bias")
    for _ in range(steps):
        opt.apply([ops.convert_to_tensor(rng.normal(size=(4, 5)).astype("float32")),
                   ops.convert_to_tensor(rng.normal(size=(5,)).astype("float32"))], [k, b])
    return k.numpy(), b.numpy()


@pytest.mark.parametrize("schedule", [False, True])
def test_lr_semantics_equals_keras_adamw(schedule):
    lr = lr_schedule() if schedule else 0.01
    ours = _random_run(DecoupledWeightDecay(keras.optimizers.Adam(lr), 0.05, exclude=()))
    lr = lr_schedule() if schedule else 0.01
    theirs = _random_run(keras.optimizers.AdamW(lr, weight_decay=0.05))
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7, rtol=0)


def test_adamw_alias_equals_keras_adamw_defaults():
    ours = _random_run(optimizers.AdamW(0.01, exclude=()))
    theirs = _random_run(keras.optimizers.AdamW(0.01))
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7, rtol=0)


@pytest.mark.parametrize("nesterov", [False, True])
def test_lr_semantics_equals_keras_sgd_weight_decay(nesterov):
    ours = _random_run(DecoupledWeightDecay(
        keras.optimizers.SGD(0.1, momentum=0.9, nesterov=nesterov), 5e-3, exclude=()))
    theirs = _random_run(keras.optimizers.SGD(0.1, momentum=0.9, nesterov=nesterov,
                                              weight_decay=5e-3))
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7, rtol=0)
    sgdw = _random_run(optimizers.SGDW(0.1, momentum=0.9, nesterov=nesterov,
                                       weight_decay=5e-3, exclude=()))
    for a, b in zip(sgdw, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7, rtol=0)


def test_aliases_route_kwargs_and_lion_rmsprop_formulas():
    opt = optimizers.LionW(1e-3, weight_decay=0.1, clipnorm=1.0, exclude=("1d",))
    assert isinstance(opt.inner_optimizer, keras.optimizers.Lion)
    assert opt.inner_optimizer.clipnorm == 1.0 and opt.exclude == ("1d",)
    assert isinstance(DecoupledWeightDecay("adam", 0.1).inner_optimizer, keras.optimizers.Adam)
    assert DecoupledWeightDecay("sgd", 0.1, scale_invariant="none").scale_invariant is None
    opt = optimizers.RMSpropW(1e-3, weight_decay=0.1, semantics="corrected")
    assert isinstance(opt.inner_optimizer, keras.optimizers.RMSprop)
    assert opt.semantics == "corrected" and opt.max_learning_rate == pytest.approx(1e-3)
    # one step of LionW with zero gradient and zero momentum: only the decay acts
    w = keras.Variable(np.full((2, 2), 2.0, "float32"), name="kernel")
    optimizers.LionW(0.1, weight_decay=0.5, exclude=()).apply([ops.zeros((2, 2), "float32")], [w])
    np.testing.assert_allclose(w.numpy(), 2.0 * (1 - 0.1 * 0.5), rtol=1e-6)


def test_gradient_accumulation_decays_only_on_update_steps():
    w = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2), 0.5,
                               exclude=())
    zero = [ops.zeros((2, 2), "float32")]
    opt.apply(zero, [w])
    np.testing.assert_allclose(w.numpy(), 1.0)
    opt.apply(zero, [w])
    np.testing.assert_allclose(w.numpy(), 1.0 - 0.1 * 0.5, rtol=1e-6)


# ----------------------------------------------------------------------------- rules
def small_model():
    inp = keras.Input((6,))
    x = keras.layers.Dense(8, name="hidden")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dense(4, name="mid")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    out = keras.layers.Dense(3, name="head")(x)
    return randomized(keras.Model(inp, out))


def randomized(model, seed=0):
    """Non-zero values everywhere (zero-initialized biases would hide a decay)."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    return model


def decayed_by_zero_step(opt, model, lr=0.1, lam=0.5):
    """Apply one zero-gradient step (inner SGD without momentum): exactly the decayed variables
    shrink by (1 - lr*lam); return their paths (checked, not trusted)."""
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    opt.apply([ops.zeros(v.shape) for v in model.trainable_variables],
              model.trainable_variables)
    decayed = set()
    for v in model.trainable_variables:
        after = v.numpy()
        if np.allclose(after, before[v.path], rtol=1e-5, atol=1e-7):
            continue  # untouched (a sphere weight already at unit norm may move by rounding)
        np.testing.assert_allclose(after, before[v.path] * (1 - lr * lam), rtol=1e-6,
                                   err_msg=v.path)
        decayed.add(v.path)
    return decayed


ALL = {"hidden/kernel", "hidden/bias", "bn/gamma", "bn/beta", "mid/kernel", "mid/bias",
       "ln/gamma", "ln/beta", "head/kernel", "head/bias"}


@pytest.mark.parametrize(
    "exclude, expected",
    [
        ((), ALL),
        (("bias",), ALL - {"hidden/bias", "mid/bias", "head/bias"}),
        (("normalization",), ALL - {"bn/gamma", "bn/beta", "ln/gamma", "ln/beta"}),
        (("bias", "norm"), {"hidden/kernel", "mid/kernel", "head/kernel"}),
        (("1d", "glob:head/*"), {"hidden/kernel", "mid/kernel"}),
        (("bias", "normalization", "regex:^mid/"), {"hidden/kernel", "head/kernel"}),
    ],
)
def test_exclusion_rules_add_up(exclude, expected):
    model = small_model()
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.5, exclude=exclude)
    assert decayed_by_zero_step(opt, model) == expected
    plan = opt.decay_plan()
    assert {p for p, t in plan.items() if t == "decay"} == expected


def test_include_and_keras_style_exclusion_are_additive():
    model = small_model()
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.5, exclude=("bias",),
                               include=("glob:*kernel", "glob:bn/*"))
    opt.exclude_from_weight_decay(var_names=["head"])
    opt.exclude_from_weight_decay(var_list=[model.get_layer("bn").gamma])  # adds, not replaces
    assert "regex:head" in opt.exclude and "glob:bn/gamma" in opt.exclude
    assert decayed_by_zero_step(opt, model) == {"hidden/kernel", "mid/kernel", "bn/beta"}


# ----------------------------------------------------------------------------- sphere
def test_sphere_golden_against_numpy():
    w, grads = fixed_problem(2)
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1, momentum=0.9), 0.2,
                               sphere=("glob:kernel",), exclude=())
    got = run_keras(opt, w, grads)
    refs = {k: RefSGD(0.9) for k in w}
    ref = {k: v.copy() for k, v in w.items()}
    for t, g in enumerate(grads):
        ref["bias"] = ref["bias"] - 0.1 * 0.2 * ref["bias"]
        for k in ref:
            ref[k] = refs[k].step(ref[k], g[k], 0.1, t)
        ref["kernel"] = ref["kernel"] / np.linalg.norm(ref["kernel"], axis=0, keepdims=True)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert opt.decay_plan() == {"kernel": "sphere", "bias": "decay"}


def test_sphere_keeps_unit_norms_over_100_steps():
    rng = np.random.default_rng(5)
    conv = keras.Variable(rng.normal(size=(3, 3, 2, 4)).astype("float32") * 3, name="kernel")
    dense = keras.Variable(rng.normal(size=(5, 3)).astype("float32") * 0.1, name="kernel")
    opt = DecoupledWeightDecay(keras.optimizers.Adam(0.05), 0.1, sphere=("glob:*kernel",))
    worst = 0.0
    for _ in range(100):
        opt.apply([ops.convert_to_tensor(rng.normal(size=conv.shape).astype("float32")),
                   ops.convert_to_tensor(rng.normal(size=dense.shape).astype("float32"))],
                  [conv, dense])
        for v in (conv, dense):
            norms = np.linalg.norm(v.numpy().reshape(-1, v.shape[-1]), axis=0)
            worst = max(worst, np.abs(norms - 1).max())
    assert worst < 1e-6


# ----------------------------------------------------------------------------- bind / auto
def conv_bn_model():
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(3, name="head")(x)
    return randomized(keras.Model(inp, out))


def fake_analysis(monkeypatch, *verdicts):
    """Stub the invariance analysis bind() calls with fixed structured verdicts."""
    fake = types.ModuleType("keras_normreg._invariance")
    fake.find_scale_invariant = lambda model: {v.path: v for v in verdicts}
    monkeypatch.setattr(decoupled_module, "_invariance", fake)


def test_bind_with_fake_invariance_module(monkeypatch):
    """Wiring of bind(): independent of the real analysis (stubbed module). bind reads the
    structured fields (granularity), not the reason text."""
    fake_analysis(monkeypatch, ScaleInvariance(
        "conv/kernel", True, "conv/kernel -> bn (via relu)", ("bn",), (("relu",),),
        granularity=(0, 1)))
    model = conv_bn_model()
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.5, scale_invariant="exclude",
                               exclude=())
    assert opt.bind(model) is opt
    assert opt.scale_invariant_paths == {"conv/kernel": (0, 1)}
    assert opt.scale_invariant_reasons == {"conv/kernel": "conv/kernel -> bn (via relu)"}
    assert decayed_by_zero_step(opt, model) == ALL_CONV - {"conv/kernel"}
    assert opt.treatment(model.get_layer("conv").kernel) == "skip"


ALL_CONV = {"conv/kernel", "bn/gamma", "bn/beta", "head/kernel", "head/bias"}


def test_bind_auto_with_real_analysis():
    """Verified by hand: in conv(no bias) -> BN -> ReLU -> GAP -> Dense the conv kernel is the
    only scale-invariant weight (BN removes its scale per channel)."""
    pytest.importorskip("keras_normreg._invariance")
    model = conv_bn_model()
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.5, scale_invariant="sphere",
                               exclude=()).bind(model)
    assert set(opt.scale_invariant_paths) == {"conv/kernel"}
    assert opt.scale_invariant_paths["conv/kernel"] == "unit"  # BN over channels via ReLU
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    opt.apply([ops.zeros(v.shape) for v in model.trainable_variables], model.trainable_variables)
    for v in model.trainable_variables:
        if v.path == "conv/kernel":  # retracted, not decayed
            ref = before[v.path] / np.linalg.norm(before[v.path].reshape(-1, 4), axis=0)
        else:
            ref = before[v.path] * (1 - 0.1 * 0.5)
        np.testing.assert_allclose(v.numpy(), ref, rtol=1e-5, atol=1e-7, err_msg=v.path)
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.5, scale_invariant="exclude",
                               exclude=()).bind(model)
    assert decayed_by_zero_step(opt, model) == ALL_CONV - {"conv/kernel"}


def test_sphere_granularity_is_tensor_before_layer_norm():
    """A kernel before LayerNormalization is invariant only as a whole: retract the tensor
    (the real analysis decides the granularity), to √units = 2 under the default
    sphere_radius="units" (tests/optimizers/test_sphere_radius.py checks the rule)."""
    inp = keras.Input((5,))
    x = keras.layers.Dense(4, use_bias=False, name="d")(inp)
    x = keras.layers.LayerNormalization(name="ln")(x)
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(x))
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.5), 0.0, scale_invariant="sphere")
    opt.bind(model)
    assert opt.scale_invariant_paths == {"d/kernel": "tensor"}
    x = np.random.default_rng(0).normal(size=(7, 5)).astype("float32")
    opt.apply([ops.ones(v.shape) for v in model.trainable_variables], model.trainable_variables)
    kernel = model.get_layer("d").kernel.numpy()
    assert np.linalg.norm(kernel) == pytest.approx(2.0, abs=1e-6)  # √4 units
    assert np.abs(np.linalg.norm(kernel, axis=0) - 1).max() > 1e-3  # units not forced to 1
    assert model(x).shape == (7, 2)


# ----------------------------------------------------------------------------- serialization
def make_full_opt():
    return DecoupledWeightDecay(
        keras.optimizers.Adam(lr_schedule()), 0.1, semantics="corrected",
        decay_schedule=lam_schedule(), max_learning_rate=LR0,
        exclude=("bias", "norm", "glob:head/*"), include=("glob:*",), sphere=("regex:conv",),
        scale_invariant="exclude", scale_invariant_paths={"a/kernel": "unit", "b/v": [0, 1]},
        name="dwd",
    )


def test_config_and_serialize_roundtrip():
    opt = make_full_opt()
    clone = assert_config_roundtrip(opt)
    assert clone.exclude == ("bias", "normalization", "glob:head/*")
    assert clone.scale_invariant_paths == {"a/kernel": "unit", "b/v": (0, 1)}
    assert isinstance(clone.decay_schedule, keras.optimizers.schedules.ExponentialDecay)
    assert_serialize_roundtrip(opt)
    for alias in (optimizers.SGDW(), optimizers.AdamW(), optimizers.LionW(),
                  optimizers.RMSpropW()):
        assert_config_roundtrip(alias)


def test_saved_model_reloads_same_rules_and_decays_same_variables(tmp_path):
    pytest.importorskip("keras_normreg._invariance")
    model = small_model()
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.5, scale_invariant="exclude",
                               exclude=("bias", "normalization"),
                               sphere=("glob:mid/kernel",)).bind(model)
    model.compile(optimizer=opt, loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    y = np.random.default_rng(1).normal(size=(8, 3)).astype("float32")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    loaded = assert_saved_model_equal(model, x, tmp_path)
    lopt = loaded.optimizer
    assert isinstance(lopt, DecoupledWeightDecay)
    assert lopt.get_config() == opt.get_config()
    assert lopt.decay_plan() == opt.decay_plan()
    assert int(lopt.iterations.numpy()) == int(opt.iterations.numpy()) == 1
    # hand-derived: hidden/kernel feeds BN (scale-invariant -> not decayed), mid/kernel is a
    # sphere weight, biases and BN/LN parameters are excluded: only head/kernel is decayed
    plan = opt.decay_plan()
    assert plan["hidden/kernel"] == "skip" and plan["mid/kernel"] == "sphere"
    # one identical zero-gradient step on both: exactly the same variables decay
    d0 = decayed_by_zero_step(model.optimizer, model)
    d1 = decayed_by_zero_step(lopt, loaded)
    assert d0 == d1 == {"head/kernel"}
    for a, b in zip(model.trainable_variables, loaded.trainable_variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_mixed_precision_loss_scale_optimizer_fit_decays(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = small_model()
        opt = keras.optimizers.LossScaleOptimizer(
            DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.5, exclude=("bias", "norm")))
        model.compile(optimizer=opt, loss=lambda y, p: 0.0 * ops.mean(p))
        x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
        y = np.zeros((8, 3), "float32")
        before = {v.path: v.numpy().copy() for v in model.trainable_variables}
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        for v in model.trainable_variables:
            factor = (1 - 0.1 * 0.5) if v.path.endswith("kernel") else 1.0
            np.testing.assert_allclose(v.numpy(), before[v.path] * factor, rtol=1e-6,
                                       err_msg=v.path)
        model.compile(optimizer=opt, loss="mse")
        hist = model.fit(x, np.ones((8, 3), "float32"), batch_size=4, epochs=1, verbose=0)
        assert np.isfinite(hist.history["loss"][-1])
        loaded = assert_saved_model_equal(model, x, tmp_path, atol=1e-2)
        assert isinstance(loaded.optimizer.inner_optimizer, DecoupledWeightDecay)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_learning_rate_callbacks_reach_inner_optimizer():
    """LearningRateScheduler sets optimizer.learning_rate: it must drive the inner optimizer
    and therefore the decay (lr semantics)."""
    model = small_model()
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.5, exclude=("bias", "norm"))
    model.compile(optimizer=opt, loss=lambda y, p: 0.0 * ops.mean(p))
    kernel = model.get_layer("head").kernel
    before = kernel.numpy().copy()
    cb = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.02)
    model.fit(np.zeros((4, 6), "float32"), np.zeros((4, 3), "float32"), batch_size=4,
              callbacks=[cb], verbose=0)
    assert float(opt.inner_optimizer.learning_rate.numpy()) == pytest.approx(0.02)
    np.testing.assert_allclose(kernel.numpy(), before * (1 - 0.02 * 0.5), rtol=1e-6)


# ----------------------------------------------------------------------------- helpers
def test_normalized_weight_decay():
    # hand value: 0.05 * sqrt(128 / (50000 * 200)) = 0.05 * sqrt(1.28e-5) = 1.78885e-4
    assert optimizers.normalized_weight_decay(0.05, 128, 50000, 200) == pytest.approx(
        1.7888544e-4, rel=1e-6)
    assert optimizers.normalized_weight_decay(0.0, 1, 1, 1) == 0.0
    with pytest.raises(ValueError, match="batch_size"):
        optimizers.normalized_weight_decay(0.05, 0, 100, 1)
    with pytest.raises(ValueError, match="num_train_samples"):
        optimizers.normalized_weight_decay(0.05, 8, 10.5, 1)
    with pytest.raises(ValueError, match="epochs"):
        optimizers.normalized_weight_decay(0.05, 8, 100, 0)
    with pytest.raises(ValueError, match="lambda_norm"):
        optimizers.normalized_weight_decay(-1.0, 8, 100, 1)


def test_get_table():
    assert isinstance(optimizers.get("sgdw"), DecoupledWeightDecay)
    assert isinstance(optimizers.get("adamp", learning_rate=0.01), optimizers.AdamP)
    assert isinstance(optimizers.get("adam"), keras.optimizers.Adam)
    opt = optimizers.SGDP(0.1)
    assert optimizers.get(opt) is opt
    assert isinstance(optimizers.get(keras.saving.serialize_keras_object(optimizers.SGDW())),
                      DecoupledWeightDecay)
    with pytest.raises(ValueError, match="identifier"):
        optimizers.get("adamx")


# ----------------------------------------------------------------------------- errors
def test_errors():
    sgd = keras.optimizers.SGD
    with pytest.raises(ValueError, match=r"`semantics`.*Received: semantics='bogus'"):
        DecoupledWeightDecay(sgd(0.1), 0.1, semantics="bogus")
    with pytest.raises(ValueError, match=r"`weight_decay` must be >= 0.*Received"):
        DecoupledWeightDecay(sgd(0.1), -0.1)
    with pytest.raises(ValueError, match="double decay"):
        DecoupledWeightDecay(keras.optimizers.AdamW(0.1), 0.1)
    with pytest.raises(ValueError, match="double decay"):
        DecoupledWeightDecay(sgd(0.1, weight_decay=1e-4), 0.1)
    with pytest.raises(ValueError, match="double decay"):
        DecoupledWeightDecay(DecoupledWeightDecay(sgd(0.1), 0.1), 0.1)
    with pytest.raises(ValueError, match=r"Unknown rule 'biases' in argument `exclude`"):
        DecoupledWeightDecay(sgd(0.1), 0.1, exclude=("bias", "biases"))
    with pytest.raises(ValueError, match=r"Invalid regular expression"):
        DecoupledWeightDecay(sgd(0.1), 0.1, sphere="regex:(")
    with pytest.raises(ValueError, match=r"`scale_invariant` must be one of"):
        DecoupledWeightDecay(sgd(0.1), 0.1, scale_invariant="auto")
    with pytest.raises(ValueError, match=r"max_learning_rate"):
        DecoupledWeightDecay(sgd(lr_schedule()), 0.1, semantics="corrected")
    warmup = keras.optimizers.schedules.CosineDecay(0.0, 10, warmup_target=0.1,
                                                    warmup_steps=5)
    with pytest.raises(ValueError, match=r"base_learning_rate"):
        DecoupledWeightDecay(sgd(warmup), 0.1, semantics="schedule")
    DecoupledWeightDecay(sgd(warmup), 0.1, semantics="schedule", base_learning_rate=0.1)
    with pytest.raises(ValueError, match=r"clipnorm"):
        DecoupledWeightDecay(sgd(0.1), 0.1, clipnorm=1.0)
    with pytest.raises(ValueError, match=r"LossScaleOptimizer\(DecoupledWeightDecay"):
        DecoupledWeightDecay(keras.optimizers.LossScaleOptimizer(sgd(0.1)), 0.1)
    with pytest.raises(ValueError, match=r"decay_schedule"):
        DecoupledWeightDecay(sgd(0.1), 0.1, decay_schedule=3.0)
    with pytest.raises(ValueError, match=r"scale_invariant_paths"):
        DecoupledWeightDecay(sgd(0.1), 0.1, scale_invariant_paths="conv/kernel")
    with pytest.raises(ValueError, match=r"scale_invariant_paths"):
        DecoupledWeightDecay(sgd(0.1), 0.1, scale_invariant_paths={"a": "channel"})


def test_scale_invariant_without_bind_fails_clearly():
    model = conv_bn_model()
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.1, scale_invariant="sphere")
    model.compile(optimizer=opt, loss="mse")
    with pytest.raises(ValueError, match=r"call `optimizer.bind\(model\)`"):
        model.fit(np.zeros((2, 6, 6, 2)), np.zeros((2, 3)), verbose=0)


def test_bind_errors():
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.1, scale_invariant="exclude")
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="built model"):
        opt.bind(unbuilt)
    with pytest.raises(ValueError, match="Keras model"):
        opt.bind("model")
    model = conv_bn_model()
    opt2 = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.1)
    opt2.build(model.trainable_variables)
    with pytest.raises(ValueError, match="before the optimizer is built"):
        opt2.bind(model)


# ----------------------------------------------------------------------------- public contract
def test_treatment_and_decay_plan_agree():
    kernel = keras.Variable(np.ones((3, 4), "float32"), name="kernel")
    bias = keras.Variable(np.ones((4,), "float32"), name="bias")
    gamma = keras.Variable(np.ones((4,), "float32"), name="gamma")
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.1, sphere=("glob:kernel",),
                               exclude=("bias",))
    assert [opt.treatment(v) for v in (kernel, bias, gamma)] == ["sphere", "skip", "decay"]
    assert opt.treatment(kernel, reason=True) == ("sphere", "sphere rule 'glob:kernel'", "unit",
                                                  None)  # radius: no fixed-norm constraint
    assert opt.treatment(bias, reason=True).reason == "exclude rule 'bias'"
    assert opt.decay_plan([kernel, bias, gamma]) == {
        "kernel": "sphere", "bias": "skip", "gamma": "decay"}
    assert set(optimizers.decoupled.TREATMENTS) == {"decay", "skip", "sphere"}


def test_treatment_needs_bind_when_scale_invariant_is_set():
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.1, scale_invariant="exclude")
    kernel = keras.Variable(np.ones((3, 4), "float32"), name="kernel")
    with pytest.raises(ValueError, match=r"bind\(model\).*Received: scale_invariant_paths=None"):
        opt.treatment(kernel)


@pytest.mark.parametrize("semantics", ["lr", "schedule", "corrected"])
def test_effective_decay_is_the_per_step_shrink(semantics):
    """effective_decay() before step t is c_t of the NumPy reference (decay_factor), and a
    zero-gradient SGD step shrinks a decayed weight by exactly that."""
    opt = DecoupledWeightDecay(keras.optimizers.SGD(lr_schedule()), LAM, semantics=semantics,
                               decay_schedule=lam_schedule(), max_learning_rate=LR0,
                               exclude=())
    w = keras.Variable(np.full((2, 3), 2.0, "float32"), name="kernel")
    for t in range(3):
        expected = decay_factor(semantics, t, LAM * s_at(t))
        got = float(ops.convert_to_numpy(opt.effective_decay()))
        assert got == pytest.approx(expected, rel=1e-5)
        before = w.numpy().copy()
        opt.apply([ops.zeros((2, 3), "float32")], [w])
        np.testing.assert_allclose(w.numpy(), before * (1 - expected), rtol=1e-6)


def test_effective_decay_is_zero_on_accumulation_steps():
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.5, gradient_accumulation_steps=2), 0.1)
    w = keras.Variable(np.ones((2,), "float32"), name="w")
    values = []
    for _ in range(4):
        values.append(float(ops.convert_to_numpy(opt.effective_decay())))
        opt.apply([ops.zeros((2,), "float32")], [w])
    assert values == pytest.approx([0.0, 0.05, 0.0, 0.05])


@requires_float64
def test_constant_goes_straight_to_the_dtype():
    from keras_normreg.optimizers.decoupled import constant

    assert float(ops.convert_to_numpy(constant(0.9, "float64"))) == 0.9
    if keras.backend.backend() == "tensorflow":  # TF's cast of a Python float goes via float32
        assert float(ops.convert_to_numpy(ops.cast(0.9, "float64"))) != 0.9  # detour avoided
    t32 = ops.convert_to_tensor(0.5, dtype="float32")
    assert constant(t32, "float64").dtype == ops.convert_to_tensor(0.0, "float64").dtype


@requires_float64
@pytest.mark.parametrize("semantics", ["lr", "schedule", "corrected"])
def test_float64_update_matches_numpy_to_machine_precision(semantics):
    """Python-float constants (λ = 0.1, lr_0, lr_max, the sphere epsilon) reach a float64
    variable without a float32 detour: one step equals a float64 NumPy reference to ~1e-15.
    lr = 0.125 is exact in float32 (Keras keeps the learning rate as a float32 variable)."""
    lr, lam = 0.125, 0.1
    base = {"lr": None, "schedule": 0.3, "corrected": 0.7}[semantics]
    rng = np.random.default_rng(3)
    w0 = {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))}
    g = {k: rng.normal(size=v.shape) for k, v in w0.items()}
    kwargs = ({"base_learning_rate": base} if semantics == "schedule"
              else {"max_learning_rate": base} if semantics == "corrected" else {})
    opt = DecoupledWeightDecay(keras.optimizers.SGD(lr), lam, semantics=semantics,
                               sphere=("glob:kernel",), exclude=(), **kwargs)
    variables = {k: keras.Variable(v, dtype="float64", name=k) for k, v in w0.items()}
    opt.apply([ops.convert_to_tensor(g["kernel"]), ops.convert_to_tensor(g["bias"])],
              [variables["kernel"], variables["bias"]])
    factor = {"lr": lr, "schedule": lr / 0.3, "corrected": lr * lr / 0.7}[semantics]
    ref_bias = w0["bias"] - w0["bias"] * (lam * factor) - lr * g["bias"]
    k = w0["kernel"] - lr * g["kernel"]
    ref_kernel = k / np.maximum(np.linalg.norm(k, axis=0, keepdims=True), 1e-12)
    np.testing.assert_allclose(variables["bias"].numpy(), ref_bias, rtol=1e-15, atol=0)
    np.testing.assert_allclose(variables["kernel"].numpy(), ref_kernel, rtol=4e-16 * 4, atol=0)
    assert variables["bias"].dtype == "float64"


@requires_float64
def test_sphere_epsilon_reaches_float64_exactly():
    from keras_normreg.optimizers import _sphere

    zero = ops.zeros((3, 2), dtype="float64")
    floor = ops.convert_to_numpy(_sphere.norms(zero, "unit", 1e-12))
    assert floor.dtype == np.float64 and (floor == 1e-12).all()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([os.path.abspath(__file__), "-q"]))
