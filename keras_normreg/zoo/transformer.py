"""Transformers: ViT-style encoders over patches, sequence encoders and decoder-only GPTs, with
pre-/post-LN, RMSNorm, QK-norm and the normalized transformer (nGPT).

One generic builder, :func:`build_transformer`; the registered presets (``vit_digits``,
``vit_cifar``, ``seq_mnist1d``, ``gpt_modular``) are thin settings of it.
"""

from __future__ import annotations

import math

import keras

from keras_normreg import layers as nr_layers
from keras_normreg._utils import check_bool, check_choice, check_number, received
from keras_normreg.constraints import UnitNorm
from keras_normreg.zoo._attention import (
    ClassToken,
    LearnedScale,
    PositionEmbedding,
    ReversibleEmbedding,
    ScaledDotProductAttention,
    SelectToken,
)
from keras_normreg.zoo._model import check_classifier_activation, zoo_model
from keras_normreg.zoo.registry import register_model

__all__ = ["NORMS", "build_transformer", "gpt_modular", "seq_mnist1d", "vit_cifar", "vit_digits"]

#: The ``norm`` choices of the family (a transformer builds its norm layers itself).
NORMS = ("layer", "rms", "none")
PLACEMENTS = ("pre", "post")
POOLS = ("mean", "cls", "last")
OUTPUTS = ("pooled", "sequence")
#: Epsilon of the LayerNormalization / RMSNormalization layers (Keras' LayerNormalization
#: default 1e-3 is not small against the variance of a residual stream that starts at the
#: scale of a 0.02-stddev embedding).
EPSILON = 1e-6
#: nGPT: the initial eigen learning rates alpha_A = alpha_M (the paper's 0.05).
NGPT_ALPHA_INIT = 0.05


def _check_norm(norm, ngpt):
    if norm is None:
        return "none" if ngpt else "layer"
    if not isinstance(norm, str) or norm not in NORMS:
        raise ValueError(f"Argument `norm` of a transformer must be one of {list(NORMS)} (the "
                         f"family places its own LayerNormalization / RMSNormalization layers). "
                         f"{received('norm', norm)}")
    if ngpt and norm != "none":
        raise ValueError("Argument `norm` must be 'none' (or left unset) with ngpt=True: nGPT "
                         "has no normalization layers, it keeps every hidden state and weight "
                         f"vector on the unit sphere instead. {received('norm', norm)}")
    return norm


def _norm_layer(norm, name, **kwargs):
    return nr_layers.get_normalization(norm, name=name, epsilon=EPSILON, **kwargs)


def _stream_dtype():
    """float32 for nGPT's hidden-state normalizations under a mixed policy, else the policy."""
    policy = keras.config.dtype_policy()
    if policy.compute_dtype != policy.variable_dtype and policy.compute_dtype in (
            "float16", "bfloat16"):
        return "float32"
    return None


class _Config:
    """The resolved knobs, passed to the block helpers."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _qkv(h, c, p):
    def proj(part):
        return keras.layers.EinsumDense(
            "btd,dhk->bthk", output_shape=(h.shape[1], c.heads, c.head_dim),
            bias_axes="hk" if c.use_bias else None,
            kernel_constraint=UnitNorm(axis=0) if c.ngpt else None, name=f"{p}_{part}")(h)
    return proj("query"), proj("key"), proj("value")


def _attn_out(a, c, p):
    o = keras.layers.EinsumDense(
        "bthk,hkd->btd", output_shape=(a.shape[1], c.width), bias_axes="d" if c.use_bias else None,
        kernel_constraint=UnitNorm(axis=2) if c.ngpt else None, name=f"{p}_attn_out")(a)
    if c.dropout:
        o = keras.layers.Dropout(c.dropout, name=f"{p}_attn_drop")(o)
    return o


def _attention(h, c, p):
    q, k, v = _qkv(h, c, p)
    if c.qk_norm:
        q = _norm_layer(c.norm, f"{p}_query_norm")(q)
        k = _norm_layer(c.norm, f"{p}_key_norm")(k)
    a = ScaledDotProductAttention(causal=c.causal, name=f"{p}_attention")(q, k, v)
    return _attn_out(a, c, p)


def _mlp(h, c, p):
    u = keras.layers.Dense(c.hidden, activation="gelu", use_bias=c.use_bias, name=f"{p}_mlp_up")(h)
    m = keras.layers.Dense(c.width, use_bias=c.use_bias, name=f"{p}_mlp_down")(u)
    if c.dropout:
        m = keras.layers.Dropout(c.dropout, name=f"{p}_mlp_drop")(m)
    return m


def _block(x, c, p):
    """Pre-LN: ``x + F(norm(x))``; post-LN: ``norm(x + F(x))`` (F: attention, then the MLP)."""
    def norm(t, part):
        return t if c.norm == "none" else _norm_layer(c.norm, f"{p}_{part}_norm")(t)

    for part, branch in (("attn", _attention), ("mlp", _mlp)):
        if c.placement == "pre":
            x = keras.layers.Add(name=f"{p}_{part}_add")([x, branch(norm(x, part), c, p)])
        else:
            x = norm(keras.layers.Add(name=f"{p}_{part}_add")([x, branch(x, c, p)]), part)
    return x


def _ngpt_update(h, branch, c, p, part):
    """``h <- Norm(h + alpha * (Norm(branch) - h))`` (nGPT eq. 10-11), in float32 under a
    mixed policy."""
    dt = c.stream_dtype
    b = keras.layers.UnitNormalization(axis=-1, name=f"{p}_{part}_out_norm", dtype=dt)(branch)
    diff = keras.layers.Subtract(name=f"{p}_{part}_diff", dtype=dt)([b, h])
    step = LearnedScale(init=NGPT_ALPHA_INIT, scale=c.base_scale, name=f"{p}_{part}_alpha",
                        dtype=dt)(diff)
    h = keras.layers.Add(name=f"{p}_{part}_add", dtype=dt)([h, step])
    return keras.layers.UnitNormalization(axis=-1, name=f"{p}_{part}_norm", dtype=dt)(h)


def _ngpt_block(x, c, p):
    q, k, v = _qkv(x, c, p)
    dt = c.stream_dtype  # float32 under a mixed policy (float16 cannot hold epsilon=1e-12)
    qk_scale = LearnedScale(init=1.0, scale=c.base_scale, trailing_dims=2, name=f"{p}_qk_scale",
                            dtype=dt)
    q = qk_scale(keras.layers.UnitNormalization(axis=-1, name=f"{p}_query_norm", dtype=dt)(q))
    k = qk_scale(keras.layers.UnitNormalization(axis=-1, name=f"{p}_key_norm", dtype=dt)(k))
    a = ScaledDotProductAttention(causal=c.causal, scale=math.sqrt(c.head_dim),
                                  name=f"{p}_attention")(q, k, v)
    x = _ngpt_update(x, _attn_out(a, c, p), c, p, "attn")

    def proj(part):
        return keras.layers.Dense(c.hidden, use_bias=False, kernel_constraint=UnitNorm(axis=0),
                                  name=f"{p}_mlp_{part}")(x)

    u = LearnedScale(init=1.0, scale=1.0, name=f"{p}_mlp_up_scale")(proj("up"))
    g = LearnedScale(init=1.0, scale=1.0, factor=math.sqrt(c.width),
                     name=f"{p}_mlp_gate_scale")(proj("gate"))
    g = keras.layers.Activation("silu", name=f"{p}_mlp_act")(g)
    m = keras.layers.Multiply(name=f"{p}_mlp_mul")([u, g])
    m = keras.layers.Dense(c.width, use_bias=False, kernel_constraint=UnitNorm(axis=1),
                           name=f"{p}_mlp_down")(m)
    if c.dropout:
        m = keras.layers.Dropout(c.dropout, name=f"{p}_mlp_drop")(m)
    return _ngpt_update(x, m, c, p, "mlp")


def _embed(inputs, input_shape, c):
    """Tokens -> (batch, tokens, width): token embedding, or non-overlapping patches."""
    embed_init = keras.initializers.RandomNormal(stddev=0.02)
    if c.vocab_size is not None:
        kwargs = dict(embeddings_initializer=embed_init, name="token_embedding",
                      embeddings_constraint=UnitNorm(axis=1) if c.ngpt else None)
        if c.tie_embeddings:
            layer = ReversibleEmbedding(c.vocab_size, c.width, reverse_units=c.num_classes,
                                        **kwargs)
        else:
            layer = keras.layers.Embedding(c.vocab_size, c.width, **kwargs)
        return layer(inputs), layer
    x = inputs
    if len(input_shape) == 1:
        x = keras.layers.Reshape((input_shape[0], 1), name="to_channels")(x)
    spatial = x.shape[1:-1]
    conv = keras.layers.Conv1D if len(spatial) == 1 else keras.layers.Conv2D
    x = conv(c.width, c.patch_size, strides=c.patch_size, padding="valid",
             use_bias=c.use_bias and not c.ngpt, name="patch_embedding",
             kernel_constraint=UnitNorm(axis=-1) if c.ngpt else None)(x)
    if len(spatial) == 2:
        x = keras.layers.Reshape((x.shape[1] * x.shape[2], c.width), name="patch_tokens")(x)
    return x, None


def _check_input(input_shape, vocab_size, patch_size):
    if vocab_size is not None:
        if len(input_shape) != 1:
            raise ValueError("Argument `input_shape` of a token transformer (vocab_size set) must "
                             f"be (tokens,). {received('input_shape', input_shape)}")
        if patch_size != 1:
            raise ValueError("Argument `patch_size` must be 1 with token inputs (vocab_size "
                             f"set). {received('patch_size', patch_size)}")
        return
    if len(input_shape) not in (1, 2, 3):
        raise ValueError("Argument `input_shape` of a transformer must be (length,), (length, "
                         "channels) or (height, width, channels). "
                         f"{received('input_shape', input_shape)}")
    spatial = input_shape[:-1] if len(input_shape) > 1 else input_shape
    if any(s % patch_size for s in spatial):
        raise ValueError(f"Argument `patch_size` must divide the input's length / height and "
                         f"width {tuple(spatial)} (non-overlapping patches). "
                         f"{received('patch_size', patch_size)}")


def build_transformer(num_classes, input_shape, norm=None, name="transformer", *, width=64,
                      depth=2, heads=4, mlp_ratio=4, dropout=0.0, patch_size=1, vocab_size=None,
                      placement="pre", qk_norm=False, ngpt=False, pool="mean", output="pooled",
                      causal=False, tie_embeddings=False, use_bias=False,
                      classifier_activation=None):
    r"""A transformer classifier (encoder or decoder-only) with the normalization knobs.

    **Inputs.** With ``vocab_size`` the input is ``(tokens,)`` integer ids, embedded by a
    ``keras.layers.Embedding`` (``"token_embedding"``). Otherwise it is a signal:
    ``(length,)`` / ``(length, channels)`` sequences or ``(height, width, channels)`` images,
    cut into non-overlapping patches of ``patch_size`` samples / ``patch_size x patch_size``
    pixels, each projected to ``width`` (a strided Conv1D / Conv2D, ``"patch_embedding"``;
    ViT, Dosovitskiy et al. 2021). A [class] token is prepended for ``pool="cls"``, then
    learned absolute position vectors are added (``"position_embedding"``), then Dropout.

    **Blocks** (``"block{i}_..."``), each attention then an MLP of ``mlp_ratio * width`` GELU
    units, with residual connections: ``placement="pre"`` (pre-LN, GPT-2/ViT:
    ``x + F(norm(x))``, and a ``"final_norm"`` after the last block) or ``"post"`` (the
    original Transformer: ``norm(x + F(x))``). ``norm`` is ``"layer"`` (LayerNormalization),
    ``"rms"`` (RMSNormalization, Zhang & Sennrich 2019) or ``"none"``; default (None):
    ``"layer"``. Attention is built from parts the scale-invariance analysis reads: Q, K, V
    projections ``EinsumDense("btd,dhk->bthk")`` (``"_query"``, ``"_key"``, ``"_value"``), the
    weightless :class:`~keras_normreg.zoo._attention.ScaledDotProductAttention`
    (``softmax(q k^T / sqrt(d_k) [+ causal mask]) v``; no attention dropout) and the output
    projection ``EinsumDense("bthk,hkd->btd")`` (``"_attn_out"``). ``qk_norm=True`` adds a
    norm of the same kind (LayerNormalization / RMSNormalization, ``axis=-1``) to queries and
    keys over ``head_dim``, i.e. per head and token, with one scale vector shared by the heads
    (Dehghani et al. 2023; Wortsman et al. 2023).

    **Biases.** ``use_bias=False`` (default): no bias in the patch embedding, the projections
    and the MLP (as PaLM / LLaMA); the norm layers' offsets (LayerNorm's beta) and the
    classifier's bias are the only additive terms. A bias right before a norm that does not
    subtract a mean (RMSNorm, QK-RMSNorm) would break the scale invariance of the kernel
    feeding it, and the analysis reads ``EinsumDense`` biases conservatively (not invariant).

    **Head.** ``output="pooled"``: one vector per example, by ``pool``: ``"mean"`` over tokens,
    ``"cls"`` (the [class] token) or ``"last"`` (the last position: with ``causal=True`` the
    state that predicts the next token, so ``model.fit`` with integer labels trains a
    next-token classifier); logits ``(batch, num_classes)``. ``output="sequence"``: the logits
    of every position, ``(batch, tokens, num_classes)`` (``pool`` unused; ``"cls"`` refused).
    The unembedding is a Dense ``"classifier"`` (with bias), or with ``tie_embeddings=True``
    (token inputs only) the token embedding itself: logits ``h E[:num_classes]^T`` over the
    first ``num_classes`` tokens (:class:`~keras_normreg.zoo._attention.ReversibleEmbedding`;
    ``num_classes <= vocab_size``).

    **nGPT** (``ngpt=True``; Loshchilov et al., "nGPT: Normalized Transformer with
    Representation Learning on the Hypersphere", ICLR 2025). No norm layers and no biases
    (``norm`` must be ``"none"`` or unset; ``placement="post"``, ``qk_norm=True`` and
    ``use_bias=True`` are refused). With ``d = width`` and ``Norm(x) = x / ||x||_2`` along the
    embedding axis (``keras.layers.UnitNormalization``):

    * ``h = Norm(embedding + positions)`` (``"embed_norm"``), then in every block
      ``h <- Norm(h + alpha_A * (Norm(h_A) - h))`` and ``h <- Norm(h + alpha_M * (Norm(h_M) -
      h))`` (``"block{i}_attn_norm"``, ``"block{i}_mlp_norm"``: every hidden state has unit
      norm), with learned per-dimension eigen learning rates ``alpha`` stored with the
      paper's init/scale trick (:class:`~keras_normreg.zoo._attention.LearnedScale`:
      alpha_init = 0.05, alpha_scale = 1/sqrt(d));
    * ``q = s_qk * Norm(q)``, ``k = s_qk * Norm(k)`` per head over ``head_dim``, one learned
      ``s_qk`` of shape (heads, head_dim) shared by q and k (init 1, scale 1/sqrt(d)), and
      softmax temperature ``sqrt(d_k)`` instead of ``1/sqrt(d_k)``;
    * the MLP is SwiGLU, ``h_M = W_down (u * silu(v))`` with ``u = s_u * (W_up h)``,
      ``v = s_v * sqrt(d) * (W_gate h)`` (s_u, s_v: init 1, scale 1), ``mlp_ratio * d`` units;
    * logits ``s_z * z`` (``"logit_scale"``, init 1, scale 1/sqrt(d)) of a bias-free
      classifier;
    * every weight vector along the embedding dimension has unit norm: token and position
      embedding rows, the [class] token, the patch embedding's rows, the input axis of the
      matrices that read the residual stream (Q, K, V, MLP up and gate, the classifier:
      ``UnitNorm(axis=0)``), the output axis of those that write it (attention output
      ``(heads, head_dim, d)``: ``UnitNorm(axis=2)``; MLP down ``(hidden, d)``:
      ``UnitNorm(axis=1)``). They are :class:`keras_normreg.constraints.UnitNorm` variable
      constraints, which every Keras optimizer applies after each step (so plain
      ``model.fit`` keeps them on the sphere), and are projected once at build time.

    Simplifications against the paper: learned absolute positions added to the token
    embedding (then normalized) instead of RoPE; the hidden state is the normalized sum of
    the token and position vectors; mean pooling (``pool="mean"``) is followed by one more
    ``Norm`` so the classifier reads a unit vector; no weight decay and no learning-rate
    warmup are built in (the paper uses neither weight decay nor warmup: pass the optimizer
    you want); ``alpha`` is used as learned (the reference code takes ``|alpha|``); under a
    mixed-precision policy the hidden-state, query and key normalizations, the residual
    updates and the logit scale run in float32 (the reference normalizes in float32 too).

    Args:
        num_classes: logits per example (per position with ``output="sequence"``).
        input_shape: see Inputs.
        norm: ``"layer"``, ``"rms"``, ``"none"`` or None (default: ``"layer"``; ``"none"``
            with ``ngpt``).
        name: the model's name.
        width: the model dimension ``d``.
        depth: number of blocks.
        heads: attention heads; must divide ``width`` (``head_dim = width // heads``).
        mlp_ratio: MLP hidden units per model dimension (> 0).
        dropout: rate of the Dropout after the embedding and on each branch's output.
        patch_size: samples / pixels per patch side (signal inputs; 1 for tokens).
        vocab_size: token vocabulary (None: signal inputs).
        placement: ``"pre"`` or ``"post"``.
        qk_norm: normalize queries and keys (needs a ``norm`` other than ``"none"``).
        ngpt: build the normalized transformer (see above).
        pool: ``"mean"``, ``"cls"`` or ``"last"``.
        output: ``"pooled"`` or ``"sequence"``.
        causal: mask attention to the future.
        tie_embeddings: unembed with the token embedding (token inputs only).
        use_bias: biases in the patch embedding, projections and MLP (not with ``ngpt``).
        classifier_activation: None or ``"linear"`` (default: the model returns logits),
            ``"softmax"`` (probabilities, over the last axis) or another Keras activation
            name, applied after the unembedding (and nGPT's logit scale).
    """
    check_bool("ngpt", ngpt)
    norm = _check_norm(norm, ngpt)
    check_number("width", width, low=1, integer=True)
    check_number("depth", depth, low=1, integer=True)
    check_number("heads", heads, low=1, integer=True)
    if width % heads:
        raise ValueError(f"Argument `heads` must divide width={width}. {received('heads', heads)}")
    check_number("mlp_ratio", mlp_ratio, low=0, low_inclusive=False)
    hidden = max(1, round(mlp_ratio * width))
    check_number("dropout", dropout, low=0, high=1, high_inclusive=False)
    check_number("patch_size", patch_size, low=1, integer=True)
    check_number("vocab_size", vocab_size, low=1, integer=True, allow_none=True)
    check_choice("placement", placement, PLACEMENTS)
    check_bool("qk_norm", qk_norm)
    check_choice("pool", pool, POOLS)
    check_choice("output", output, OUTPUTS)
    check_bool("causal", causal)
    check_bool("tie_embeddings", tie_embeddings)
    check_bool("use_bias", use_bias)
    check_classifier_activation(classifier_activation)
    if ngpt and placement != "pre":
        raise ValueError("Argument `placement` cannot be set with ngpt=True (nGPT has its own "
                         f"normalized residual update). {received('placement', placement)}")
    if ngpt and qk_norm:
        raise ValueError("Argument `qk_norm` must be False with ngpt=True (nGPT already "
                         f"L2-normalizes queries and keys). {received('qk_norm', qk_norm)}")
    if ngpt and use_bias:
        raise ValueError("Argument `use_bias` must be False with ngpt=True (nGPT has no "
                         f"biases). {received('use_bias', use_bias)}")
    if qk_norm and norm == "none":
        raise ValueError("Argument `qk_norm` needs a norm ('layer' or 'rms'), not norm='none'. "
                         f"{received('qk_norm', qk_norm)}")
    if tie_embeddings and vocab_size is None:
        raise ValueError("Argument `tie_embeddings` needs token inputs (vocab_size). "
                         f"{received('tie_embeddings', tie_embeddings)}")
    if tie_embeddings and num_classes > vocab_size:
        raise ValueError(f"Argument `num_classes` must be <= vocab_size={vocab_size} with "
                         f"tie_embeddings=True. {received('num_classes', num_classes)}")
    if pool == "cls" and output == "sequence":
        raise ValueError("Argument `pool` cannot be 'cls' with output='sequence' (the logits "
                         f"are per input position). {received('pool', pool)}")
    input_shape = tuple(input_shape)
    _check_input(input_shape, vocab_size, patch_size)

    c = _Config(num_classes=num_classes, norm=norm, width=width, heads=heads,
                head_dim=width // heads, hidden=hidden, dropout=dropout, patch_size=patch_size,
                vocab_size=vocab_size, placement=placement, qk_norm=qk_norm, ngpt=ngpt,
                causal=causal, tie_embeddings=tie_embeddings, use_bias=use_bias,
                base_scale=1.0 / math.sqrt(width),
                stream_dtype=_stream_dtype() if ngpt else None)
    if vocab_size is not None:
        inputs = keras.Input(input_shape, dtype="int32", name="tokens")
    else:
        inputs = keras.Input(input_shape, name="inputs")
    x, embedding = _embed(inputs, input_shape, c)
    if pool == "cls":
        x = ClassToken(constraint=UnitNorm() if ngpt else None, name="cls_token")(x)
    x = PositionEmbedding(constraint=UnitNorm(axis=1) if ngpt else None,
                          name="position_embedding")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="embed_drop")(x)
    if ngpt:
        x = keras.layers.UnitNormalization(axis=-1, name="embed_norm", dtype=c.stream_dtype)(x)
    for i in range(depth):
        x = (_ngpt_block if ngpt else _block)(x, c, f"block{i + 1}")
    if placement == "pre" and norm != "none":
        x = _norm_layer(norm, "final_norm")(x)
    if output == "pooled":
        if pool == "mean":
            x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
            if ngpt:
                x = keras.layers.UnitNormalization(axis=-1, name="pool_norm",
                                                   dtype=c.stream_dtype)(x)
        else:
            x = SelectToken(0 if pool == "cls" else -1, name="pool")(x)
    if tie_embeddings:
        logits = embedding(x, reverse=True)
    else:
        logits = keras.layers.Dense(num_classes, use_bias=not ngpt, name="classifier",
                                    kernel_constraint=UnitNorm(axis=0) if ngpt else None)(x)
    if ngpt:
        logits = LearnedScale(init=1.0, scale=c.base_scale, name="logit_scale",
                              dtype=c.stream_dtype)(logits)
    model = zoo_model(inputs, logits, name, classifier_activation)
    if ngpt:  # start on the sphere
        for variable in model.trainable_variables:
            if variable.constraint is not None:
                variable.assign(variable.constraint(variable))
    return model


def _register(name, description, **kw):
    return register_model(name, family="transformer", builder=build_transformer,
                          default_norm=None, norms=NORMS, description=description, **kw)


vit_digits = _register(
    "vit_digits", "ViT for 8x8 digits: 2x2 patches (16 tokens), width 64, 2 blocks, 4 heads, "
    "pre-LN.", input_shape=(8, 8, 1), dataset="digits", width=64, depth=2, heads=4,
    patch_size=2)
vit_cifar = _register(
    "vit_cifar", "ViT for CIFAR: 4x4 patches (64 tokens), width 192, 6 blocks, 3 heads, "
    "pre-LN (2.7M).", input_shape=(32, 32, 3), dataset="cifar10", slow=True, width=192,
    depth=6, heads=3, patch_size=4)
seq_mnist1d = _register(
    "seq_mnist1d", "Sequence transformer for MNIST-1D: patches of 4 samples (10 tokens), "
    "width 64, 2 blocks, 4 heads, pre-LN.", input_shape=(40, 1), dataset="mnist1d", width=64,
    depth=2, heads=4, patch_size=4)
gpt_modular = _register(
    "gpt_modular", "Decoder-only GPT for modular arithmetic [a, op, b, =] (p=97, vocab 99): "
    "width 128, 1 block, 4 heads, causal, logits of the last position.", input_shape=(4,),
    num_classes=97, width=128, depth=1, heads=4, vocab_size=99, causal=True, pool="last")
