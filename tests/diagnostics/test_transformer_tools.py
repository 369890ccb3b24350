"""The tools on the transformer family: auditor, regularizers.apply, the optimizers' decay plan
and sphere mode, NormMonitor: each sees the family's scale-invariant weights (QK-norm, nGPT).

Tiny presets (width 16, depth 1, heads 2): every test builds its models in well under a second.
References are hand lists of variable paths and NumPy formulas written here.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_normreg import _invariance, _targeting, regularizers, selectors, zoo
from keras_normreg.diagnostics import NormMonitor
from keras_normreg.diagnostics.auditor import scale_invariant_weights
from keras_normreg.optimizers import DecoupledWeightDecay

# Not yet run on JAX and PyTorch by `make test` (the tools' own tests in this folder are).
pytestmark = pytest.mark.tf_only

TINY = dict(width=16, depth=1, heads=2)
INPUTS = {"vit_digits": (8, 8, 1), "vit_cifar": (32, 32, 3), "seq_mnist1d": (40, 1)}

# (preset, knobs, the weights find_scale_invariant must report: written out by hand)
QK = {"block1_query/kernel", "block1_key/kernel"}
NGPT = QK | {"block1_value/kernel", "block1_attn_out/kernel", "block1_mlp_up/kernel",
             "block1_mlp_down/kernel"}
CASES = [
    ("vit_digits", {}, set()),
    ("vit_cifar", {}, set()),
    ("seq_mnist1d", {}, set()),
    ("gpt_modular", {}, set()),
    ("gpt_modular", dict(norm="rms"), set()),
    ("gpt_modular", dict(qk_norm=True), QK),
    ("gpt_modular", dict(norm="rms", qk_norm=True), QK),
    ("vit_digits", dict(qk_norm=True), QK),
    ("seq_mnist1d", dict(ngpt=True), NGPT),
    ("vit_digits", dict(ngpt=True, pool="cls"), NGPT),
    ("gpt_modular", dict(ngpt=True), NGPT),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}"
       for name, kw, _ in CASES]


def build(name, **kw):
    keras.utils.set_random_seed(0)
    return zoo.create(name, **TINY, **kw)


def batch(name, n=8, seed=0):
    rng = np.random.RandomState(seed)
    if name == "gpt_modular":
        return rng.randint(0, 99, (n, 4)).astype("int32")
    return rng.normal(size=(n, *INPUTS[name])).astype("float32")


def modular_data(n=128, seed=0):
    """``[a, op, b, =] -> (a + b) mod 97`` (op, = are the tokens 97, 98)."""
    rng = np.random.RandomState(seed)
    a, b = rng.randint(0, 97, n), rng.randint(0, 97, n)
    x = np.stack([a, np.full(n, 97), b, np.full(n, 98)], 1).astype("int32")
    return x, ((a + b) % 97).astype("int32")


def variables(model):
    return {v.path: v for v in model.trainable_variables}


# ----------------------------------------------------------------------------- auditor


@pytest.mark.parametrize(("name", "kw", "expected"), CASES, ids=IDS)
def test_auditor_agrees_with_the_analysis(name, kw, expected):
    model = build(name, **kw)
    found = _invariance.find_scale_invariant(model)
    assert set(found) == expected
    report = scale_invariant_weights(model, batch(name))
    assert {row.path for row in report if row.invariant} == expected
    for row in report:  # the graph walk's verdict is the analysis', weight by weight
        assert row.graph == (row.path in expected), row.reason


# ----------------------------------------------------------------------------- roles


def test_roles_of_the_transformer_layers():
    model = build("vit_digits", ngpt=True, pool="cls")
    roles = {v.path: _targeting.variable_role(la, v) for la, v in
             _targeting.layer_variables(model)}
    assert roles["cls_token/token"] == "embeddings"
    assert roles["position_embedding/embeddings"] == "embeddings"
    # LearnedScale gains: role "other" (not an analysis candidate), but "normalization" picks
    # them with and without the layer (so the default decay exclusions leave them alone)
    gains = {"block1_attn_alpha/scale", "block1_qk_scale/scale", "block1_mlp_alpha/scale",
             "block1_mlp_up_scale/scale", "block1_mlp_gate_scale/scale", "logit_scale/scale"}
    assert {roles[p] for p in gains} == {"other"}
    normalization = set(selectors.matching_paths(model, "normalization"))
    assert normalization == gains
    assert set(selectors.matching_paths(model, "normalization", layers=False)) == gains
    assert roles["block1_query/kernel"] == "kernel"
    gpt = build("gpt_modular", tie_embeddings=True)
    assert {_targeting.variable_role(la, v) for la, v in _targeting.layer_variables(gpt)
            if v.path == "token_embedding/embeddings"} == {"embeddings"}


def test_vector_axes_follow_the_constraint_and_the_einsum():
    model = build("gpt_modular")
    pairs = {v.path: (la, v) for la, v in _targeting.layer_variables(model)}
    # EinsumDense: the kernel axes contracted with the input
    assert _targeting.vector_axes(*pairs["block1_query/kernel"]) == (0,)
    assert _targeting.vector_axes(*pairs["block1_attn_out/kernel"]) == (0, 1)
    assert _targeting.vector_axes(*pairs["token_embedding/embeddings"]) == (1,)
    assert _targeting.vector_axes(*pairs["block1_mlp_up/kernel"]) == (0,)
    assert _targeting.vector_axes(*pairs["classifier/bias"]) is None
    ngpt = build("gpt_modular", ngpt=True)
    pairs = {v.path: (la, v) for la, v in _targeting.layer_variables(ngpt)}
    # nGPT: the UnitNorm constraint's explicit axes win (attention output: axis 2)
    assert _targeting.vector_axes(*pairs["block1_attn_out/kernel"]) == (2,)
    assert _targeting.vector_axes(*pairs["block1_mlp_down/kernel"]) == (1,)
    assert _targeting.vector_axes(*pairs["position_embedding/embeddings"]) == (1,)


# ----------------------------------------------------------------------------- regularizers


@pytest.mark.parametrize(("name", "kw", "expected"),
                         [c for c in CASES if c[2]], ids=[i for i, c in zip(IDS, CASES, strict=True)
                                                          if c[2]])
def test_l2_skips_exactly_the_invariant_kernels(name, kw, expected):
    model = build(name, **kw)
    l2 = 1e-3
    report = regularizers.apply(model, regularizers.L2(l2), skip_scale_invariant="auto")
    kernels = {v.path: v for la, v in _targeting.layer_variables(model)
               if _targeting.variable_role(la, v) == "kernel"}
    applied = {e.path for e in report if e.applied}
    assert applied == set(kernels) - expected
    assert {e.path for e in report if not e.applied} == expected
    want = sum(l2 * np.sum(np.square(kernels[p].numpy().astype(np.float64))) for p in applied)
    got = float(sum(float(keras.ops.convert_to_numpy(x)) for x in model.losses))
    # float32 sums of squares of < 2000 terms each: relative error < 2000 * 2**-24 ~ 1.2e-4
    np.testing.assert_allclose(got, want, rtol=2e-4)


# ----------------------------------------------------------------------------- decay plan


def _plan(model, weight_decay=1e-2, **kw):
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), weight_decay, **kw).bind(model)
    return opt.decay_plan(model.trainable_variables)


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_default_exclusions_on_a_qk_norm_gpt(norm):
    model = build("gpt_modular", norm=norm, qk_norm=True)
    gain = "gamma" if norm == "layer" else "scale"
    norms = ["block1_attn_norm", "block1_query_norm", "block1_key_norm", "block1_mlp_norm",
             "final_norm"]
    skipped = {f"{n}/{gain}" for n in norms} | {"classifier/bias"}
    if norm == "layer":
        skipped |= {f"{n}/beta" for n in norms}
    decayed = {"token_embedding/embeddings", "position_embedding/embeddings",
               "block1_value/kernel", "block1_attn_out/kernel", "block1_mlp_up/kernel",
               "block1_mlp_down/kernel", "classifier/kernel"}
    plan = _plan(model, scale_invariant="exclude")
    assert plan == {**{p: "skip" for p in skipped | QK}, **{p: "decay" for p in decayed}}
    plan = _plan(model)  # no scale-invariance handling: Q and K decayed too
    assert {p for p, t in plan.items() if t == "decay"} == decayed | QK


def test_default_exclusions_leave_ngpt_scales_alone():
    model = build("gpt_modular", ngpt=True)
    scales = {"block1_qk_scale/scale", "block1_attn_alpha/scale", "block1_mlp_up_scale/scale",
              "block1_mlp_gate_scale/scale", "block1_mlp_alpha/scale", "logit_scale/scale"}
    constrained = {"token_embedding/embeddings", "position_embedding/embeddings",
                   "block1_mlp_gate/kernel", "classifier/kernel"}
    plan = _plan(model, weight_decay=0.0, scale_invariant="sphere")
    assert plan == {**{p: "skip" for p in scales}, **{p: "sphere" for p in NGPT},
                    **{p: "decay" for p in constrained}}


def test_decay_on_unit_norm_weights_is_refused_naming_the_value():
    model = build("gpt_modular", ngpt=True)
    with pytest.raises(ValueError, match=r"token_embedding/embeddings.*Received: "
                                         r"weight_decay=0\.01$"):
        _plan(model, weight_decay=0.01, scale_invariant="sphere")
    # refused at build too (model.fit without bind)
    opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1), 0.01)
    with pytest.raises(ValueError, match=r"UnitNorm constraint.*weight_decay=0\.01"):
        opt.build(model.trainable_variables)
    # excluding the constrained weights makes it valid; λ then reaches nothing nGPT constrains
    exclude = ("bias", "normalization", "embeddings", "kernel")
    plan = _plan(model, weight_decay=0.01, exclude=exclude, scale_invariant="sphere")
    assert "decay" not in plan.values()


# ----------------------------------------------------------------------------- sphere mode


def _unit_norm_error(model):
    """max | ||w_j|| - 1 | over every constrained vector of ``model`` (float64 NumPy)."""
    worst = 0.0
    for v in model.trainable_variables:
        if v.constraint is None:
            continue
        axes = _targeting.constraint_axes(v)
        w = np.asarray(v.numpy(), np.float64)
        norms = np.sqrt(np.sum(w * w, axis=axes or None))
        worst = max(worst, float(np.max(np.abs(norms - 1.0))))
    return worst


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_ngpt_sphere_mode_keeps_every_vector_on_the_unit_sphere(inner):
    model = build("gpt_modular", ngpt=True)
    x, y = modular_data()
    base = (keras.optimizers.SGD(1.0, momentum=0.9) if inner == "sgd"
            else keras.optimizers.Adam(1e-2))
    opt = DecoupledWeightDecay(base, 0.0, scale_invariant="sphere").bind(model)
    for path in NGPT:  # retracted to the constraint's sphere: radius 1, its axes
        v = variables(model)[path]
        assert opt.sphere_radius_of(v) == 1.0
        assert opt.treatment(v, reason=True).granularity == _targeting.constraint_axes(v)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    history = model.fit(x, y, batch_size=64, epochs=6, verbose=0, shuffle=False)
    # a float32 normalization of a d-vector (d <= 64 here) is off by at most ~(d + 2) ulp
    assert _unit_norm_error(model) < 1e-5
    loss = history.history["loss"]
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0]


def test_qk_norm_kernels_retracted_at_the_analysis_granularity():
    model = build("gpt_modular", qk_norm=True)
    found = _invariance.find_scale_invariant(model)
    assert {found[p].granularity for p in QK} == {"tensor"}
    x, y = modular_data()
    opt = DecoupledWeightDecay(keras.optimizers.Adam(1e-2), 0.0,
                               scale_invariant="sphere").bind(model)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    head_dim = 8  # width 16 / 2 heads: rule "units" gives the tensor radius sqrt(head_dim)
    for path in QK:
        w = np.asarray(variables(model)[path].numpy(), np.float64)
        # one float32 normalization of 128 entries: relative error ~ 130 * 2**-24 < 1e-5
        np.testing.assert_allclose(np.sqrt(np.sum(w * w)), np.sqrt(head_dim), rtol=1e-5)


def test_sphere_retraction_stays_float32_under_mixed_precision():
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build("gpt_modular", ngpt=True)
        x, y = modular_data(64)
        opt = DecoupledWeightDecay(keras.optimizers.Adam(1e-2), 0.0,
                                   scale_invariant="sphere").bind(model)
        model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        assert {v.dtype for v in model.trainable_variables} == {"float32"}
        # float32 arithmetic as above; in float16 the error would be ~1e-3
        assert _unit_norm_error(model) < 1e-5
    finally:
        keras.config.set_dtype_policy(policy)


# ----------------------------------------------------------------------------- monitor


def _angles(w0, w1, axes):
    """Mean angle between the vectors of ``w0`` and ``w1`` over ``axes`` (float64 NumPy)."""
    w0, w1 = np.asarray(w0, np.float64), np.asarray(w1, np.float64)
    dot = np.sum(w0 * w1, axis=axes)
    n0, n1 = np.sqrt(np.sum(w0 * w0, axis=axes)), np.sqrt(np.sum(w1 * w1, axis=axes))
    cross = np.sqrt(np.maximum(n0 ** 2 * n1 ** 2 - dot ** 2, 0.0))
    return float(np.mean(np.arctan2(cross, dot)))


@pytest.mark.parametrize(("kw", "path", "axes"), [
    (dict(qk_norm=True), "block1_query/kernel", (0,)),
    (dict(qk_norm=True), "block1_attn_out/kernel", (0, 1)),
    (dict(ngpt=True), "block1_attn_out/kernel", (2,)),
])
def test_monitor_per_vector_angular_update_of_an_einsum_kernel(kw, path, axes):
    model = build("gpt_modular", **kw)
    x, y = modular_data(32)
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    w0 = variables(model)[path].numpy().copy()
    monitor = NormMonitor(every_n_steps=1, layers="all", per_unit=True)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[monitor])
    w1 = variables(model)[path].numpy()
    h = monitor.history[path]
    want = _angles(w0, w1, axes)
    assert want > 1e-4  # the step moved the vectors (else the comparison is empty)
    # float32 sums of <= 16 products per vector, then atan2: relative error ~1e-6 of the
    # angle plus ~1e-7 absolute from the cancellation in ||Δ⊥||; 1e-4 leaves margin
    np.testing.assert_allclose(h["unit_angular_update"][0], want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(h["angular_update"][0], _angles(w0, w1, None), rtol=1e-4,
                               atol=1e-6)


def test_monitor_records_the_attention_kernels_over_a_few_steps():
    model = build("gpt_modular", ngpt=True)
    x, y = modular_data(96)
    opt = DecoupledWeightDecay(keras.optimizers.Adam(1e-2), 0.0,
                               scale_invariant="sphere").bind(model)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    monitor = NormMonitor(every_n_steps=1, per_unit=True)  # default: the invariant weights
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[monitor])
    assert set(monitor.tracked) == NGPT
    for path in NGPT:
        h = monitor.history[path]
        assert len(h["step"]) == 3
        for metric in ("norm", "angular_update", "effective_lr", "unit_norm",
                       "unit_angular_update"):
            assert np.all(np.isfinite(h[metric])), (path, metric)
        # every vector has norm 1 (the constraint's sphere): the rms of the vector norms is 1
        np.testing.assert_allclose(h["unit_norm"], 1.0, rtol=1e-5)
        assert np.all(h["unit_angular_update"] > 0)
