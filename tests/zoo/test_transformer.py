"""The transformer family (keras_normreg.zoo.transformer): maths against NumPy, the causal
mask, nGPT's unit-norm invariants under model.fit, shapes and parameter counts, save/load and
errors. Runs on every backend (tiny widths, few tokens)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from keras_normreg import constraints, zoo
from keras_normreg._invariance import find_scale_invariant
from keras_normreg.zoo import build_transformer
from keras_normreg.zoo._attention import ScaledDotProductAttention
from tests.helpers import assert_saved_model_equal, gradients

EPS = 1e-6  # the family's LayerNormalization / RMSNormalization epsilon


def np_(x):
    return keras.ops.convert_to_numpy(x)


def tokens(shape, vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype("int32")


def randomize(model, seed=0, scale=0.5):
    """Every weight set to random values (gammas around 1), so no term of the maths is 0/1."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        value = rng.normal(size=v.shape) * scale
        if v.path.endswith(("gamma", "/scale")):
            value = 1.0 + 0.3 * value
        v.assign(value.astype("float32"))


def weights(model):
    """{layer name/variable name: float64 array}."""
    return {"/".join(v.path.split("/")[-2:]): np_(v).astype("float64") for v in model.weights}


# ----------------------------------------------------------------------- NumPy references

def np_layer_norm(x, g, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * g + b


def np_rms_norm(x, g):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + EPS) * g


def np_unit(x):
    return x / np.sqrt((x ** 2).sum(-1, keepdims=True))


def np_attention(q, k, v, scale, causal):
    s = np.einsum("bihk,bjhk->bhij", q, k) * scale
    if causal:
        t = q.shape[1]
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p = p / p.sum(-1, keepdims=True)
    return np.einsum("bhij,bjhk->bihk", p, v)


_erf = np.vectorize(math.erf)


def np_gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_gpt(w, toks, *, norm, placement, qk_norm, heads):
    """The token transformer of build_transformer (causal, output="sequence"), by hand."""
    def nrm(x, name):
        if norm == "layer":
            return np_layer_norm(x, w[f"{name}/gamma"], w[f"{name}/beta"])
        return np_rms_norm(x, w[f"{name}/scale"])

    x = w["token_embedding/embeddings"][toks] + w["position_embedding/embeddings"]
    d = x.shape[-1]
    dk = d // heads

    def attn(h):
        q, k, v = (np.einsum("btd,dhk->bthk", h, w[f"block1_{n}/kernel"])
                   for n in ("query", "key", "value"))
        if qk_norm:
            q, k = nrm(q, "block1_query_norm"), nrm(k, "block1_key_norm")
        o = np_attention(q, k, v, 1 / math.sqrt(dk), causal=True)
        return np.einsum("bthk,hkd->btd", o, w["block1_attn_out/kernel"])

    def mlp(h):
        return np_gelu(h @ w["block1_mlp_up/kernel"]) @ w["block1_mlp_down/kernel"]

    for part, f in (("attn", attn), ("mlp", mlp)):
        if placement == "pre":
            x = x + f(nrm(x, f"block1_{part}_norm"))
        else:
            x = nrm(x + f(x), f"block1_{part}_norm")
    if placement == "pre":
        x = nrm(x, "final_norm")
    return x @ w["classifier/kernel"] + w["classifier/bias"]


def np_ngpt(w, toks, *, heads):
    """nGPT (one block, causal, last position) by hand, with the paper's init/scale constants:
    alpha: init 0.05, scale 1/sqrt(d); s_qk: 1, 1/sqrt(d); s_u: 1, 1; s_v: 1, 1 (times
    sqrt(d)); s_z: 1, 1/sqrt(d). Effective value = stored * init / scale."""
    h = np_unit(w["token_embedding/embeddings"][toks] + w["position_embedding/embeddings"])
    d = h.shape[-1]
    dk = d // heads
    base = 1 / math.sqrt(d)
    q, k, v = (np.einsum("btd,dhk->bthk", h, w[f"block1_{n}/kernel"])
               for n in ("query", "key", "value"))
    sqk = w["block1_qk_scale/scale"] * (1.0 / base)
    q, k = np_unit(q) * sqk, np_unit(k) * sqk
    o = np.einsum("bthk,hkd->btd", np_attention(q, k, v, math.sqrt(dk), causal=True),
                  w["block1_attn_out/kernel"])
    alpha_a = w["block1_attn_alpha/scale"] * (0.05 / base)
    h = np_unit(h + alpha_a * (np_unit(o) - h))
    u = (h @ w["block1_mlp_up/kernel"]) * w["block1_mlp_up_scale/scale"]
    g = (h @ w["block1_mlp_gate/kernel"]) * w["block1_mlp_gate_scale/scale"] * math.sqrt(d)
    m = (u * g / (1 + np.exp(-g))) @ w["block1_mlp_down/kernel"]
    alpha_m = w["block1_mlp_alpha/scale"] * (0.05 / base)
    h = np_unit(h + alpha_m * (np_unit(m) - h))
    z = h[:, -1] @ w["classifier/kernel"]
    return z * w["logit_scale/scale"] * (1.0 / base)


# Tolerance of the float32 model against the float64 references: each output is the end of
# ~12 sequential ops, each a reduction of <= 16 terms (width 8, mlp 16, 4 tokens), whose
# float32 rounding is bounded by n * u (u = 6e-8) relative to the magnitudes summed: about
# 12 * 16 * 6e-8 = 1.2e-5 of the largest intermediate; normalizations divide by a std that
# is >= ~0.1 of those magnitudes here, so 1e-4 of the largest output is a bound, not a fit.
RTOL_MAX = 1e-4

SMALL_GPT = dict(vocab_size=7, width=8, depth=1, heads=2, mlp_ratio=2, causal=True)


@pytest.mark.parametrize("norm,placement,qk_norm", [("layer", "pre", False),
                                                    ("rms", "post", True),
                                                    ("layer", "pre", True)])
def test_block_forward_matches_numpy(norm, placement, qk_norm):
    model = build_transformer(5, (4,), norm=norm, placement=placement, qk_norm=qk_norm,
                              output="sequence", **SMALL_GPT)
    randomize(model)
    x = tokens((3, 4), 7)
    expected = np_gpt(weights(model), x, norm=norm, placement=placement, qk_norm=qk_norm,
                      heads=2)
    got = np_(model(x, training=False))
    assert got.shape == (3, 4, 5)
    np.testing.assert_allclose(got, expected, rtol=0, atol=RTOL_MAX * np.abs(expected).max())


def test_ngpt_forward_matches_numpy():
    model = build_transformer(5, (4,), ngpt=True, pool="last", **SMALL_GPT)
    randomize(model, seed=1)
    x = tokens((3, 4), 7, seed=1)
    expected = np_ngpt(weights(model), x, heads=2)
    got = np_(model(x, training=False))
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, expected, rtol=0, atol=RTOL_MAX * np.abs(expected).max())


def test_query_kernel_gradient_matches_finite_differences():
    """d/dWq of sum(logits * R), autodiff on the backend vs central differences of the float64
    NumPy model. The differences (h = 1e-6 in float64) are exact to ~1e-9 (truncation h^2,
    rounding 1e-16/h); the float32 backward pass carries the same n * u bound as the forward
    (see RTOL_MAX), relative to the largest gradient entry."""
    model = build_transformer(5, (4,), norm="layer", output="sequence", **SMALL_GPT)
    randomize(model, seed=2)
    x = tokens((2, 4), 7, seed=2)
    r = np.random.default_rng(3).normal(size=(2, 4, 5))
    wq = model.get_layer("block1_query").kernel
    w = weights(model)

    def loss_np(kernel):
        return float((np_gpt({**w, "block1_query/kernel": kernel}, x, norm="layer",
                              placement="pre", qk_norm=False, heads=2) * r).sum())

    h = 1e-6
    k0 = w["block1_query/kernel"]
    fd = np.zeros_like(k0)
    for idx in np.ndindex(*k0.shape):
        kp, km = k0.copy(), k0.copy()
        kp[idx] += h
        km[idx] -= h
        fd[idx] = (loss_np(kp) - loss_np(km)) / (2 * h)
    rr = keras.ops.convert_to_tensor(r.astype("float32"))
    _, (grad,) = gradients(lambda: keras.ops.sum(model(x, training=False) * rr), variables=[wq])
    assert np.abs(fd).max() > 1e-3  # the gradient is not trivially 0
    np.testing.assert_allclose(grad, fd, rtol=0, atol=RTOL_MAX * np.abs(fd).max())


# ---------------------------------------------------------------------------- causal mask

@pytest.mark.parametrize("ngpt", [False, True])
def test_causal_mask_hides_the_future(ngpt):
    model = build_transformer(5, (6,), ngpt=ngpt, output="sequence",
                              **{**SMALL_GPT, "depth": 2})
    x = tokens((2, 6), 7, seed=4)
    base = np_(model(x, training=False))
    for t in range(6):
        changed = x.copy()
        changed[:, t] = (changed[:, t] + 1) % 7
        out = np_(model(changed, training=False))
        # positions before t never see token t: masked scores are exactly exp(-1e9) = 0
        np.testing.assert_allclose(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert np.abs(out[:, t:] - base[:, t:]).max(axis=-1).min() > 1e-6
    # without the mask, earlier positions do change
    full = build_transformer(5, (6,), ngpt=ngpt, output="sequence",
                             **{**SMALL_GPT, "depth": 2, "causal": False})
    changed = x.copy()
    changed[:, 5] = (changed[:, 5] + 1) % 7
    assert np.abs(np_(full(changed)) - np_(full(x)))[:, 0].max() > 1e-6


def test_attention_layer_mask_and_scale():
    q, k, v = (np.random.default_rng(i).normal(size=(2, 3, 2, 4)).astype("float32")
               for i in range(3))
    layer = ScaledDotProductAttention(causal=True, scale=0.7)
    np.testing.assert_allclose(np_(layer(q, k, v)), np_attention(q, k, v, 0.7, True),
                               atol=1e-5)
    # first position attends only to itself
    np.testing.assert_allclose(np_(layer(q, k, v))[:, 0], v[:, 0], atol=1e-6)


# ---------------------------------------------------------------------- nGPT invariants

#: layer -> axes along the embedding dimension (one unit vector per remaining index)
NGPT_AXES = {"token_embedding": 1, "position_embedding": 1, "patch_embedding": -1,
             "query": 0, "key": 0, "value": 0, "attn_out": 2, "mlp_up": 0, "mlp_gate": 0,
             "mlp_down": 1, "classifier": 0, "cls_token": 0}


def constrained_norms(model):
    """{path: unit norms} of every weight nGPT keeps on the sphere, with the axes of
    NGPT_AXES (written here, not read from the model's constraints)."""
    out = {}
    for v in model.trainable_weights:
        layer = v.path.split("/")[-2]
        key = next((k for k in NGPT_AXES if layer == k or layer.endswith("_" + k)), None)
        if key is None or v.path.endswith("/scale"):
            continue
        arr = np_(v).astype("float64")
        out[v.path] = np.sqrt((arr ** 2).sum(axis=NGPT_AXES[key] % arr.ndim))
    return out


def hidden_states(model):
    names = [la.name for la in model.layers
             if la.name == "embed_norm" or la.name.endswith(("_attn_norm", "_mlp_norm"))]
    return keras.Model(model.input, [model.get_layer(n).output for n in names]), names


@pytest.mark.parametrize("kind,optimizer,policy", [
    ("gpt", "adam", "float32"),
    ("vit", "sgd", "mixed_float16"),
    pytest.param("vit", "sgd", "float32", marks=pytest.mark.slow),
    pytest.param("gpt", "adam", "mixed_float16", marks=pytest.mark.slow),
])
def test_ngpt_stays_on_the_sphere_under_fit(kind, optimizer, policy):
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        if kind == "gpt":
            model = build_transformer(7, (4,), ngpt=True, pool="last", tie_embeddings=True,
                                      **SMALL_GPT)
            x = tokens((12, 4), 7, seed=5)
        else:
            model = build_transformer(3, (4, 4, 1), ngpt=True, pool="cls", width=8, depth=1,
                                      heads=2, mlp_ratio=2, patch_size=2)
            x = np.random.default_rng(5).normal(size=(12, 4, 4, 1)).astype("float32")
        y = np.arange(12) % 3
        opt = (keras.optimizers.Adam(0.05) if optimizer == "adam"
               else keras.optimizers.SGD(0.5))
        model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=False)
        probe, names = hidden_states(model)
        assert names == ["embed_norm", "block1_attn_norm", "block1_mlp_norm"]
        expected_paths = {p for p in constrained_norms(model)}
        # gpt (tied): token + position rows; vit: patch, position, cls, classifier; 7 per block
        assert len(expected_paths) == (2 if kind == "gpt" else 4) + 7
        before = {v.path: np_(v).copy() for v in model.trainable_weights}
        steps = []

        class Check(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                steps.append(batch)  # self.model syncs the variables on JAX
                for path, norms in constrained_norms(self.model).items():
                    np.testing.assert_allclose(norms, 1.0, rtol=0, atol=1e-5, err_msg=path)
                for name, h in zip(names, probe(x, training=True), strict=True):
                    h = np_(h).astype("float64")
                    np.testing.assert_allclose(np.sqrt((h ** 2).sum(-1)), 1.0, rtol=0,
                                               atol=1e-5, err_msg=name)

        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[Check()])
        assert steps == [0, 1, 2]
        moved = [p for p in expected_paths
                 if np.abs(np_(next(v for v in model.trainable_weights if v.path == p))
                           - before[p]).max() > 1e-4]
        assert len(moved) == len(expected_paths)  # the steps really moved every sphere weight
    finally:
        keras.config.set_dtype_policy(old)


def test_ngpt_constraints_are_unit_norms_with_explicit_axes():
    model = build_transformer(5, (4,), ngpt=True, **SMALL_GPT)
    got = {}
    for v in model.trainable_weights:
        if v.constraint is not None:
            assert type(v.constraint) is constraints.UnitNorm, v.path
            got[v.path.split("/")[-2]] = v.constraint.axis
    assert got == {"token_embedding": 1, "position_embedding": 1, "block1_query": 0,
                   "block1_key": 0, "block1_value": 0, "block1_attn_out": 2,
                   "block1_mlp_up": 0, "block1_mlp_gate": 0, "block1_mlp_down": 1,
                   "classifier": 0}
    assert not any(isinstance(la, (keras.layers.LayerNormalization,
                                   keras.layers.RMSNormalization)) for la in model.layers)
    assert not any(getattr(la, "use_bias", False) or getattr(la, "bias", None) is not None
                   for la in model.layers)


# -------------------------------------------------------------------- shapes and counts

def expected_count(*, d, depth, f, tokens, embed, classes, norm="layer", qk_norm=False,
                   heads=4):
    """Hand count of the standard (non-nGPT) model: embedding/patch rows x d, positions,
    per block 2 norms + Q,K,V,O (4 d^2) + MLP (2 d f), final norm, classifier d*C + C."""
    per_norm = 2 * d if norm == "layer" else d
    qk = 2 * (2 * (d // heads) if norm == "layer" else d // heads) if qk_norm else 0
    block = 2 * per_norm + 4 * d * d + 2 * d * f + qk
    return embed * d + tokens * d + depth * block + per_norm + d * classes + classes


@pytest.mark.parametrize("name,tokens,embed,d,depth,heads,classes", [
    ("vit_digits", 16, 2 * 2 * 1, 64, 2, 4, 10),
    ("vit_cifar", 64, 4 * 4 * 3, 192, 6, 3, 10),
    ("seq_mnist1d", 10, 4, 64, 2, 4, 10),
    ("gpt_modular", 4, 99, 128, 1, 4, 97),
])
def test_preset_shapes_and_counts(name, tokens, embed, d, depth, heads, classes):
    model = zoo.create(name)
    assert model.output.shape == (None, classes)
    assert model.count_params() == expected_count(d=d, depth=depth, f=4 * d, tokens=tokens,
                                                  embed=embed, classes=classes, heads=heads)
    assert model.get_layer("block1_query").kernel.shape == (d, heads, d // heads)
    assert isinstance(model.get_layer("final_norm"), keras.layers.LayerNormalization)


def test_small_counts_per_variant():
    kw = dict(width=8, depth=1, heads=2, mlp_ratio=2, patch_size=2)
    assert build_transformer(3, (4, 4, 1), **kw).count_params() == 651  # worked by hand:
    # patch 4*8 + positions 4*8 + 2 LN (16 each) + QKV 192 + O 64 + MLP 128 + 128
    # + final LN 16 + classifier 8*3 + 3
    assert build_transformer(3, (4, 4, 1), norm="rms", qk_norm=True, **kw).count_params() == \
        651 - 3 * 8 + 2 * 4
    assert build_transformer(3, (4, 4, 1), norm="none", **kw).count_params() == 651 - 3 * 16
    # post-LN: no final norm
    assert build_transformer(3, (4, 4, 1), placement="post", **kw).count_params() == 651 - 16
    # nGPT, tied: emb 7*8 + pos 4*8 + QKVO 256 + s_qk 8 + 2 alphas 16 + up/gate 2*8*16
    # + s_u, s_v 32 + down 128 + s_z 5
    tied = build_transformer(5, (4,), ngpt=True, tie_embeddings=True, **SMALL_GPT)
    assert tied.count_params() == 56 + 32 + 256 + 8 + 16 + 256 + 32 + 128 + 5
    assert tied.output.shape == (None, 5)
    seq = build_transformer(5, (4,), output="sequence", tie_embeddings=True, **SMALL_GPT)
    assert seq.output.shape == (None, 4, 5)


def test_default_norm_of_the_family():
    model = zoo.create("seq_mnist1d", depth=1, width=8, heads=2)
    assert {type(la) for la in model.layers} >= {keras.layers.LayerNormalization}
    assert model.get_layer("block1_attn_norm").input is model.get_layer("position_embedding").output
    ngpt = zoo.create("seq_mnist1d", depth=1, width=8, heads=2, ngpt=True)
    assert not any(isinstance(la, keras.layers.LayerNormalization) for la in ngpt.layers)
    assert zoo.get_spec("vit_digits").norms == ("layer", "rms", "none")
    assert zoo.get_spec("resnet20").default_norm == "batch"


def test_invariance_analysis_reads_the_family():
    """What the scale-invariance walk finds (each verdict is checked numerically in
    tests/test_invariance.py): pre-LN without QK-norm nothing; QK-norm the Q/K kernels; nGPT
    every kernel between two normalizations (Q, K, V, attention output, MLP up and down)."""
    def found(**kw):
        model = build_transformer(5, (4,), **{**SMALL_GPT, **kw})
        return {p.split("/")[-2] for p in find_scale_invariant(model)}

    assert found() == set()
    assert found(qk_norm=True) == {"block1_query", "block1_key"}
    assert found(norm="rms", qk_norm=True, placement="post") == {"block1_query", "block1_key"}
    assert found(ngpt=True) == {f"block1_{n}" for n in ("query", "key", "value", "attn_out",
                                                       "mlp_up", "mlp_down")}


# ----------------------------------------------------------------------------- save/load

@pytest.mark.parametrize("kw", [
    dict(norm="layer"),
    dict(norm="rms", placement="post"),
    dict(norm="rms", qk_norm=True, pool="cls", dropout=0.1),
    dict(ngpt=True, pool="mean"),
])
def test_save_load_encoder(kw, tmp_path):
    model = build_transformer(3, (8, 1), width=8, depth=1, heads=2, mlp_ratio=2, patch_size=2,
                              **kw)
    randomize(model, seed=6, scale=0.3)
    x = np.random.default_rng(6).normal(size=(2, 8, 1)).astype("float32")
    loaded = assert_saved_model_equal(model, x, tmp_path, atol=1e-5)
    assert [la.name for la in loaded.layers] == [la.name for la in model.layers]


@pytest.mark.parametrize("kw", [dict(ngpt=True, tie_embeddings=True),
                                dict(qk_norm=True, tie_embeddings=True, output="sequence"),
                                dict(pool="last", placement="post")])
def test_save_load_gpt(kw, tmp_path):
    model = build_transformer(5, (4,), **{**SMALL_GPT, **kw})
    x = tokens((2, 4), 7, seed=7)
    loaded = assert_saved_model_equal(model, x, tmp_path, atol=1e-5)
    for a, b in zip(model.trainable_weights, loaded.trainable_weights, strict=True):
        assert type(a.constraint) is type(b.constraint)
        if a.constraint is not None:
            assert a.constraint.get_config() == b.constraint.get_config()


# -------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("name,kw,match", [
    ("vit_digits", {"placement": "middle"}, r"`placement`.*Received: placement='middle'"),
    ("vit_digits", {"heads": 3}, r"`heads` must divide width=64\. Received: heads=3"),
    ("vit_digits", {"ngpt": True, "placement": "post"},
     r"`placement`.*ngpt=True.*Received: placement='post'"),
    ("vit_digits", {"norm": "batch"}, r"not available for zoo model 'vit_digits'.*"
                                      r"\['layer', 'rms', 'none'\]\. Received: norm='batch'"),
    ("vit_digits", {"norm": "bogus"}, r"Valid names: .*Received: norm='bogus'"),
    ("vit_digits", {"ngpt": True, "norm": "layer"}, r"`norm` must be 'none'.*ngpt=True.*"
                                                    r"Received: norm='layer'"),
    ("vit_digits", {"pool": "max"}, r"`pool`.*\['mean', 'cls', 'last'\].*Received: pool='max'"),
    ("vit_digits", {"output": "all"}, r"`output`.*Received: output='all'"),
    ("vit_digits", {"pool": "cls", "output": "sequence"}, r"`pool`.*Received: pool='cls'"),
    ("vit_digits", {"qk_norm": True, "norm": "none"}, r"`qk_norm`.*Received: qk_norm=True"),
    ("vit_digits", {"ngpt": True, "qk_norm": True}, r"`qk_norm`.*Received: qk_norm=True"),
    ("vit_digits", {"ngpt": True, "use_bias": True}, r"`use_bias`.*Received: use_bias=True"),
    ("vit_digits", {"patch_size": 3}, r"`patch_size` must divide.*Received: patch_size=3"),
    ("vit_digits", {"tie_embeddings": True}, r"`tie_embeddings`.*Received: tie_embeddings=True"),
    ("vit_digits", {"width": 0}, r"`width`.*Received: width=0"),
    ("vit_digits", {"mlp_ratio": 0}, r"`mlp_ratio`.*Received: mlp_ratio=0"),
    ("vit_digits", {"ngpt": "yes"}, r"`ngpt`.*bool.*Received: ngpt='yes'"),
    ("gpt_modular", {"tie_embeddings": True, "num_classes": 100},
     r"`num_classes` must be <= vocab_size=99.*Received: num_classes=100"),
    ("gpt_modular", {"input_shape": (4, 1)}, r"`input_shape`.*Received: input_shape=\(4, 1\)"),
])
def test_bad_arguments(name, kw, match):
    with pytest.raises(ValueError, match=match) as err:
        zoo.create(name, **kw)
    assert "\n" not in str(err.value)


def test_builder_refuses_other_norms_directly():
    with pytest.raises(ValueError, match=r"`norm` of a transformer must be one of "
                                         r"\['layer', 'rms', 'none'\].*Received: norm='batch'"):
        build_transformer(3, (8, 1), norm="batch")
    with pytest.raises(ValueError, match=r"Received: norm=<class"):
        build_transformer(3, (8, 1), norm=keras.layers.LayerNormalization)
