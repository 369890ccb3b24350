"""SGDP / AdamP: golden tests against a NumPy transcription of the paper's algorithm, covering
the channel-projected, layer-projected and not-projected branches; serialization; errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from keras_normreg import optimizers
from keras_normreg.optimizers import SGDP, AdamP
from tests.backend_marks import requires_float64
from tests.helpers import (
    assert_config_roundtrip,
    assert_saved_model_equal,
    assert_serialize_roundtrip,
)

STEPS = 5
DELTA, WD_RATIO, EPS = 0.1, 0.1, 1e-8
LAM = 0.2


# ----------------------------------------------------------------------------- NumPy reference
def ref_projection(w, g, p, eps=EPS):
    """Heo et al. 2021: channel view (one column per output unit = last axis), then layer view."""
    units = w.shape[-1]
    W, G, P = (a.reshape(-1, units) for a in (w, g, p))
    fan = W.shape[0]
    cos_c = np.abs((W * G).sum(0)) / (np.linalg.norm(W, axis=0) * np.linalg.norm(G, axis=0) + eps)
    if cos_c.max() < DELTA / np.sqrt(fan):
        wh = W / (np.linalg.norm(W, axis=0) + eps)
        return (P - wh * (wh * P).sum(0)).reshape(w.shape), WD_RATIO, "channel"
    cos_l = abs((W * G).sum()) / (np.linalg.norm(W) * np.linalg.norm(G) + eps)
    if cos_l < DELTA / np.sqrt(W.size):
        wh = W / (np.linalg.norm(W) + eps)
        return (P - wh * (wh * P).sum()).reshape(w.shape), WD_RATIO, "layer"
    return p, 1.0, "none"


class RefSGDP:
    def __init__(self, lr, momentum=0.9, nesterov=False, dampening=0.0):
        self.lr, self.mu, self.nesterov, self.damp, self.buf = lr, momentum, nesterov, dampening, None

    def step(self, w, g):
        if self.buf is None:
            self.buf = np.zeros_like(w)
        self.buf = self.mu * self.buf + (1 - self.damp) * g
        p = g + self.mu * self.buf if self.nesterov else self.buf
        branch, r = "rank1", 1.0
        if w.ndim >= 2:
            p, r, branch = ref_projection(w, g, p)
        w = w - self.lr * LAM * r * w
        return w - self.lr * p, branch


class RefAdamP:
    def __init__(self, lr, b1=0.9, b2=0.999, nesterov=False, eps=EPS, placement="pytorch",
                 lam=LAM):
        self.lr, self.b1, self.b2, self.nesterov = lr, b1, b2, nesterov
        self.eps, self.placement, self.lam = eps, placement, lam
        self.m = self.v = None
        self.t = 0

    def step(self, w, g):
        if self.m is None:
            self.m, self.v = np.zeros_like(w), np.zeros_like(w)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        bc1, bc2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        if self.placement == "pytorch":  # m̂ / (√v̂ + ε)
            denom = np.sqrt(self.v) / np.sqrt(bc2) + self.eps
            step = self.lr / bc1
        else:  # Keras: lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ) · m / (√v + ε)
            denom = np.sqrt(self.v) + self.eps
            step = self.lr * np.sqrt(bc2) / bc1
        p = (self.b1 * self.m + (1 - self.b1) * g) / denom if self.nesterov else self.m / denom
        branch, r = "rank1", 1.0
        if w.ndim >= 2:
            p, r, branch = ref_projection(w, g, p, self.eps)
        w = w - self.lr * self.lam * r * w
        return w - step * p, branch


def make_grad(kind, w, rng):
    r = rng.normal(size=w.shape)
    if kind == "channel":  # orthogonal to every output unit of w
        W, R = w.reshape(-1, w.shape[-1]), r.reshape(-1, w.shape[-1])
        R = R - W * (W * R).sum(0) / (W * W).sum(0)
        return R.reshape(w.shape)
    if kind == "layer":  # orthogonal to w as a whole only
        return r - w * (w * r).sum() / (w * w).sum()
    return w + 0.1 * r  # strongly aligned with w: not scale-invariant


OPTS = {
    "sgdp": (lambda: SGDP(0.1, momentum=0.9, weight_decay=LAM, exclude=()),
             lambda: RefSGDP(0.1)),
    "sgdp_nesterov": (lambda: SGDP(0.1, momentum=0.9, nesterov=True, weight_decay=LAM,
                                   exclude=()),
                      lambda: RefSGDP(0.1, nesterov=True)),
    "sgdp_dampening": (lambda: SGDP(0.1, momentum=0.5, dampening=0.3, weight_decay=LAM,
                                    exclude=()),
                       lambda: RefSGDP(0.1, momentum=0.5, dampening=0.3)),
    "adamp": (lambda: AdamP(0.01, weight_decay=LAM, exclude=()), lambda: RefAdamP(0.01)),
    "adamp_nesterov": (lambda: AdamP(0.01, weight_decay=LAM, nesterov=True, exclude=()),
                       lambda: RefAdamP(0.01, nesterov=True)),
}


@pytest.mark.parametrize("branch", ["channel", "layer", "none"])
@pytest.mark.parametrize("name", sorted(OPTS))
def test_golden_against_numpy(name, branch):
    make_opt, make_ref = OPTS[name]
    rng = np.random.default_rng(0)
    w0 = {"kernel": rng.normal(size=(2, 3, 4)), "bias": rng.normal(size=(4,))}
    variables = {k: keras.Variable(v.astype("float32"), name=k) for k, v in w0.items()}
    opt = make_opt()
    refs = {k: make_ref() for k in w0}
    ref = {k: v.copy() for k, v in w0.items()}
    branches = []
    for _ in range(STEPS):
        g = {"kernel": make_grad(branch, ref["kernel"], rng),
             "bias": rng.normal(size=(4,))}
        opt.apply([ops.convert_to_tensor(g["kernel"].astype("float32")),
                   ops.convert_to_tensor(g["bias"].astype("float32"))],
                  [variables["kernel"], variables["bias"]])
        ref["kernel"], b = refs["kernel"].step(ref["kernel"], g["kernel"])
        ref["bias"], rank1 = refs["bias"].step(ref["bias"], g["bias"])
        branches.append(b)
        assert rank1 == "rank1"
    assert branches == [branch] * STEPS  # the test exercises the intended branch
    for k in ref:
        np.testing.assert_allclose(variables[k].numpy(), ref[k], rtol=2e-5, atol=2e-6,
                                   err_msg=k)


def test_projection_removes_radial_component_and_slows_norm_growth():
    """On a scale-invariant weight the projected update is orthogonal per unit, so ‖w‖ grows
    far less than with plain momentum SGD (the paper's point)."""
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(6, 3)).astype("float32")
    a = keras.Variable(w0, name="kernel")
    b = keras.Variable(w0, name="kernel")
    sgdp, sgd = SGDP(0.1, momentum=0.9), keras.optimizers.SGD(0.1, momentum=0.9)
    for _ in range(30):
        for var, opt in ((a, sgdp), (b, sgd)):
            W = var.numpy()
            R = rng.normal(size=W.shape)
            g = R - W * (W * R).sum(0) / (W * W).sum(0)
            opt.apply([ops.convert_to_tensor(g.astype("float32"))], [var])
    growth_p = np.linalg.norm(a.numpy(), axis=0) / np.linalg.norm(w0, axis=0)
    growth_s = np.linalg.norm(b.numpy(), axis=0) / np.linalg.norm(w0, axis=0)
    assert (growth_p < growth_s).all()
    assert ((growth_s - 1) > 3 * (growth_p - 1)).all()  # measured: 2.5-9.5 vs 0.55-0.8


def test_decay_rules_and_plan():
    """Zero gradient: cosine 0 < δ/√fan -> channel branch, so the kernel's decay is scaled by
    wd_ratio (w ← w·(1 − lr·λ·r)); the bias is excluded by the default rules."""
    rng = np.random.default_rng(0)
    k0, b0 = rng.normal(size=(3, 2)), rng.normal(size=(2,))
    k = keras.Variable(k0.astype("float32"), name="kernel")
    b = keras.Variable(b0.astype("float32"), name="bias")
    opt = SGDP(0.1, momentum=0.0, weight_decay=0.5)
    opt.apply([ops.zeros((3, 2), "float32"), ops.zeros((2,), "float32")], [k, b])
    assert opt.decay_plan() == {"kernel": "decay", "bias": "skip"}
    np.testing.assert_allclose(k.numpy(), k0 * (1 - 0.1 * 0.5 * WD_RATIO), rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), b0, rtol=1e-7)
    opt = SGDP(0.1, momentum=0.0, weight_decay=0.5, exclude=())
    opt.apply([ops.zeros((2,), "float32")], [b])  # rank 1: never projected, r = 1
    np.testing.assert_allclose(b.numpy(), b0 * (1 - 0.1 * 0.5), rtol=1e-6)


def test_config_serialize_and_saved_model(tmp_path):
    for opt in (SGDP(0.05, momentum=0.8, nesterov=True, weight_decay=1e-4, delta=0.2,
                     wd_ratio=0.5, exclude=("1d",), include=("glob:*",)),
                AdamP(keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.5),
                      weight_decay=1e-2, beta_1=0.8, clipnorm=1.0)):
        clone = assert_config_roundtrip(opt)
        assert clone.exclude == opt.exclude and clone.wd_ratio == opt.wd_ratio
        assert_serialize_roundtrip(opt)
    inp = keras.Input((5,))
    x = keras.layers.Dense(4, name="d")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(x))
    model.compile(optimizer=AdamP(1e-2, weight_decay=1e-2), loss="mse")
    xs = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    model.fit(xs, np.zeros((8, 2), "float32"), verbose=0)
    loaded = assert_saved_model_equal(model, xs, tmp_path)
    assert isinstance(loaded.optimizer, AdamP)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_errors():
    with pytest.raises(ValueError, match=r"`delta` must be > 0.*Received: delta=0"):
        SGDP(0.1, delta=0)
    with pytest.raises(ValueError, match=r"`wd_ratio` must be >= 0"):
        AdamP(wd_ratio=-0.1)
    with pytest.raises(ValueError, match=r"`momentum` must be < 1"):
        SGDP(0.1, momentum=1.0)
    with pytest.raises(ValueError, match=r"`beta_2` must be < 1"):
        AdamP(beta_2=1.0)
    with pytest.raises(ValueError, match=r"`weight_decay` must be >= 0"):
        AdamP(weight_decay=-1.0)
    with pytest.raises(ValueError, match=r"`nesterov` must be a bool"):
        SGDP(0.1, nesterov="yes")
    with pytest.raises(ValueError, match=r"Unknown rule 'kernels'"):
        SGDP(0.1, exclude=("kernels",))
    with pytest.raises(ValueError, match="double decay"):
        optimizers.DecoupledWeightDecay(SGDP(0.1, weight_decay=1e-4), 1e-4)


@pytest.mark.parametrize("branch", ["channel", "layer", "none"])
def test_project_radial_matches_reference(branch):
    """The fused form (four column sums, one per-unit coefficient) equals the two-view
    projection of the paper, on each branch, for a conv-shaped kernel."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 3, 4, 5))
    g = make_grad(branch, w, rng)
    p = rng.normal(size=w.shape)
    expected, ratio, got_branch = ref_projection(w, g, p)
    assert got_branch == branch
    out, r = optimizers.project_radial(w.astype("float32"), g.astype("float32"),
                                       p.astype("float32"), DELTA, WD_RATIO, EPS)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-5)
    assert float(r) == pytest.approx(ratio)
    if branch != "none":  # the projected direction has no radial part left
        W, Q = w.reshape(-1, 5), np.asarray(out).reshape(-1, 5)
        radial = (W * Q).sum(0) if branch == "channel" else (W * Q).sum()
        np.testing.assert_allclose(radial, 0.0, atol=1e-4)


# ----------------------------------------------------------------------------- ε placement
@requires_float64
@pytest.mark.parametrize("branch", ["channel", "none"])
@pytest.mark.parametrize("placement", ["pytorch", "keras"])
def test_adamp_epsilon_placement_against_numpy(placement, branch):
    """Two AdamP steps (float64) against the NumPy reference of each ε placement; ε = 1e-3
    against gradients of size ~1e-3 makes the placements differ by far more than the
    tolerance, so each is told apart from the other."""
    rng = np.random.default_rng(4)
    w0 = {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))}
    variables = {k: keras.Variable(v, dtype="float64", name=k) for k, v in w0.items()}
    opt = AdamP(0.125, weight_decay=LAM, epsilon=1e-3, epsilon_placement=placement, exclude=())
    refs = {k: RefAdamP(0.125, eps=1e-3, placement=placement) for k in w0}
    other = {k: RefAdamP(0.125, eps=1e-3,
                         placement="keras" if placement == "pytorch" else "pytorch")
             for k in w0}
    ref = {k: v.copy() for k, v in w0.items()}
    alt = {k: v.copy() for k, v in w0.items()}
    for _ in range(2):
        g = {"kernel": 1e-3 * make_grad(branch, ref["kernel"], rng),
             "bias": 1e-3 * rng.normal(size=(4,))}
        opt.apply([ops.convert_to_tensor(g["kernel"]), ops.convert_to_tensor(g["bias"])],
                  [variables["kernel"], variables["bias"]])
        branches = {}
        for k in ref:
            ref[k], branches[k] = refs[k].step(ref[k], g[k])
            alt[k], _ = other[k].step(alt[k], g[k])
        assert branches == {"kernel": branch, "bias": "rank1"}
    for k in ref:
        np.testing.assert_allclose(variables[k].numpy(), ref[k], rtol=1e-13, atol=0,
                                   err_msg=k)
        assert np.abs(alt[k] - ref[k]).max() > 1e-6 * np.abs(ref[k]).max()


def test_adamp_keras_placement_equals_keras_adam_on_rank1_weights():
    """Rank-1 weights are never projected: without decay, AdamP(epsilon_placement="keras")
    is Keras' Adam (independent reference), the default is not."""
    rng = np.random.default_rng(2)
    w0 = rng.normal(size=(5,)).astype("float32")
    grads = [1e-3 * rng.normal(size=(5,)).astype("float32") for _ in range(3)]
    results = {}
    for name, opt in (("adam", keras.optimizers.Adam(0.01, epsilon=1e-3)),
                      ("keras", AdamP(0.01, epsilon=1e-3, epsilon_placement="keras")),
                      ("pytorch", AdamP(0.01, epsilon=1e-3))):
        var = keras.Variable(w0, name="bias")
        for g in grads:
            opt.apply([ops.convert_to_tensor(g)], [var])
        results[name] = var.numpy()
    np.testing.assert_allclose(results["keras"], results["adam"], rtol=1e-6, atol=1e-7)
    assert np.abs(results["pytorch"] - results["adam"]).max() > 1e-4


def test_epsilon_placement_config_and_error():
    opt = AdamP(1e-3, epsilon_placement="keras")
    assert opt.get_config()["epsilon_placement"] == "keras"
    clone = assert_config_roundtrip(opt)
    assert clone.epsilon_placement == "keras"
    assert AdamP().get_config()["epsilon_placement"] == "pytorch"
    with pytest.raises(ValueError, match=r"`epsilon_placement` must be one of \['pytorch', "
                                         r"'keras'\]\. Received: epsilon_placement='tf'"):
        AdamP(epsilon_placement="tf")


# ----------------------------------------------------------------------------- float64
@requires_float64
@pytest.mark.parametrize("name", ["sgdp_dampening", "sgdp_nesterov", "adamp", "adamp_nesterov"])
def test_float64_step_matches_numpy_to_machine_precision(name):
    """Python-float constants (β₁ = 0.9, μ, τ, λ, ε, δ, wd_ratio) reach float64 variables
    without a float32 detour: one step equals the float64 NumPy reference to ~1e-15 relative.
    lr = 0.125 is exact in float32 (Keras keeps the learning rate as a float32 variable)."""
    make = {
        "sgdp_dampening": (lambda: SGDP(0.125, momentum=0.9, dampening=0.3, weight_decay=LAM,
                                        exclude=()),
                           lambda: RefSGDP(0.125, dampening=0.3)),
        "sgdp_nesterov": (lambda: SGDP(0.125, momentum=0.9, nesterov=True, weight_decay=LAM,
                                       exclude=()),
                          lambda: RefSGDP(0.125, nesterov=True)),
        "adamp": (lambda: AdamP(0.125, weight_decay=LAM, exclude=()), lambda: RefAdamP(0.125)),
        "adamp_nesterov": (lambda: AdamP(0.125, weight_decay=LAM, nesterov=True, exclude=()),
                           lambda: RefAdamP(0.125, nesterov=True)),
    }
    make_opt, make_ref = make[name]
    rng = np.random.default_rng(7)
    w0 = {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))}
    g = {"kernel": make_grad("channel", w0["kernel"], rng), "bias": rng.normal(size=(4,))}
    variables = {k: keras.Variable(v, dtype="float64", name=k) for k, v in w0.items()}
    make_opt().apply([ops.convert_to_tensor(g["kernel"]), ops.convert_to_tensor(g["bias"])],
                     [variables["kernel"], variables["bias"]])
    for k in w0:
        expected, _ = make_ref().step(w0[k].copy(), g[k])
        np.testing.assert_allclose(variables[k].numpy(), expected, rtol=2e-15, atol=0,
                                   err_msg=k)


@pytest.mark.parametrize("branch", ["channel", "layer", "none"])
@pytest.mark.parametrize("name", ["sgdp", "adamp"])
def test_compiled_step_matches_numpy(name, branch):
    """The update compiled as a train step compiles it (TensorFlow: tf.function with
    jit_compile=True, XLA; JAX: jax.jit of stateless_apply; torch: eager) equals the NumPy
    transcription of the paper over a few steps (same tolerance as the eager golden test)."""
    make_opt, make_ref = OPTS[name]
    rng = np.random.default_rng(3)
    w0 = rng.normal(size=(3, 4, 5))
    var = keras.Variable(w0.astype("float32"), name="kernel")
    opt, ref_opt, ref = make_opt(), make_ref(), w0.copy()
    opt.build([var])
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        step = tf.function(lambda grad: opt.apply([grad], [var]), jit_compile=True)
    elif backend == "jax":
        import jax

        apply = jax.jit(lambda ov, tv, grad: opt.stateless_apply(ov, [grad], tv))

        def step(grad):
            tv, ov = apply([v.value for v in opt.variables], [var.value], grad)
            var.assign(tv[0])
            for v, new in zip(opt.variables, ov, strict=True):
                v.assign(new)
    else:
        def step(grad):
            opt.apply([grad], [var])
    for _ in range(3):
        g = make_grad(branch, ref, rng)
        step(ops.convert_to_tensor(g.astype("float32")))
        ref, got_branch = ref_opt.step(ref, g)
        assert got_branch == branch
    np.testing.assert_allclose(ops.convert_to_numpy(var), ref, rtol=2e-5, atol=2e-6)
