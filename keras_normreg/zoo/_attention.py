"""Layers of the transformer family (:mod:`keras_normreg.zoo.transformer`), in ``keras.ops``.

The projections of attention are Keras' own ``EinsumDense`` layers (queries, keys, values:
``"btd,dhk->bthk"``; output: ``"bthk,hkd->btd"``), so the scale-invariance analysis
(:mod:`keras_normreg.invariance`) reads them like any Dense layer. What is left is here, all
serializable with ``safe_mode=True``:

* :class:`ScaledDotProductAttention`: the weightless ``softmax(q k^T * scale [+ causal mask]) v``;
* :class:`LearnedScale`: ``x * s`` with a learned per-dimension ``s`` stored with nGPT's
  init/scale trick;
* :class:`ClassToken`, :class:`PositionEmbedding`, :class:`SelectToken`,
  :class:`ReversibleEmbedding` (a token embedding that can also unembed: tied weights).

Layers whose output is a homogeneous function of an input declare it to the invariance analysis
with the class attribute ``keras_normreg_scale_rule`` (``"linear"``: degree 1 in their one
input; ``"attention"``: degree 1 in the values, any function of queries and keys), so the
analysis does not have to import this module.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_normreg._utils import check_bool, check_number, received, register

__all__ = ["ClassToken", "LearnedScale", "PositionEmbedding", "ReversibleEmbedding",
           "ScaledDotProductAttention", "SelectToken"]

# A finite "minus infinity" for masked scores: exp(-1e9 - max) is 0 in float32, and the
# scores are always computed in float32 (also under a mixed-precision policy).
_MASKED = -1e9


@register
class ScaledDotProductAttention(keras.layers.Layer):
    r"""Multi-head scaled dot-product attention on projected queries, keys and values.

    .. math::
        a_{b,h,i,j} = \mathrm{softmax}_j\bigl(s \textstyle\sum_k q_{b,i,h,k}\,k_{b,j,h,k}
                      + m_{i,j}\bigr), \qquad
        o_{b,i,h,k} = \textstyle\sum_j a_{b,h,i,j}\, v_{b,j,h,k}

    with ``q, k, v`` of shape ``(batch, tokens, heads, head_dim)`` (the output has the shape of
    ``q`` with the values' last axis), ``s = scale`` (None: ``1/sqrt(head_dim)``, Vaswani et al.
    2017; nGPT uses ``sqrt(head_dim)``) and ``m_{i,j} = -inf`` for ``j > i`` when ``causal``
    (position ``i`` sees only positions ``<= i``), else 0. The scores and the softmax are
    computed in float32 whatever the compute dtype; the result is cast back. No weights, no
    attention dropout.

    Args:
        causal: mask the future (decoder-only language models).
        scale: the factor ``s`` of the scores (a positive number), or None.
    """

    keras_normreg_scale_rule = "attention"

    def __init__(self, causal=False, scale=None, **kwargs):
        super().__init__(**kwargs)
        self.causal = check_bool("causal", causal)
        self.scale = check_number("scale", scale, low=0, low_inclusive=False, allow_none=True)
        self.supports_masking = False

    def call(self, query, key, value):
        head_dim = query.shape[-1]
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(head_dim)
        scores = ops.einsum("bihk,bjhk->bhij", ops.cast(query, "float32"),
                            ops.cast(key, "float32")) * scale
        if self.causal:
            tq, tk = ops.shape(query)[1], ops.shape(key)[1]
            rows = ops.expand_dims(ops.arange(tq), 1)
            cols = ops.expand_dims(ops.arange(tk), 0)
            scores = ops.where(cols <= rows, scores, ops.full_like(scores, _MASKED))
        weights = ops.softmax(scores, axis=-1)
        out = ops.einsum("bhij,bjhk->bihk", weights, ops.cast(value, "float32"))
        return ops.cast(out, self.compute_dtype)

    def compute_output_shape(self, query_shape, key_shape, value_shape):
        return (*query_shape[:-1], value_shape[-1])

    def get_config(self):
        return {**super().get_config(), "causal": self.causal, "scale": self.scale}


@register
class LearnedScale(keras.layers.Layer):
    r"""``y = x * s`` with a learned ``s`` over the last ``trailing_dims`` axes of ``x``.

    ``s`` is stored with the init/scale trick of nGPT (Loshchilov et al. 2025, sec. 2.5): the
    variable ``w`` starts at ``scale`` and the layer uses

    .. math:: s = w \cdot \frac{\mathrm{init}}{\mathrm{scale}} \cdot \mathrm{factor},

    so ``s`` starts at ``init * factor`` while the optimizer moves ``w`` on the scale
    ``scale`` (a small ``scale`` makes the effective learning rate of ``s`` larger by
    ``init / scale``).

    Args:
        init: the initial value of ``s / factor``.
        scale: the initial value of the stored variable (> 0).
        factor: a fixed multiplier (nGPT's ``sqrt(d_model)`` on the SwiGLU gate).
        trailing_dims: how many trailing axes of the input ``s`` covers (1: one value per
            channel; 2: per (head, head_dim)).
    """

    keras_normreg_scale_rule = "linear"

    def __init__(self, init=1.0, scale=1.0, factor=1.0, trailing_dims=1, **kwargs):
        super().__init__(**kwargs)
        self.init = check_number("init", init)
        self.scale = check_number("scale", scale, low=0, low_inclusive=False)
        self.factor = check_number("factor", factor)
        self.trailing_dims = check_number("trailing_dims", trailing_dims, low=1, integer=True)

    def build(self, input_shape):
        if len(input_shape) <= self.trailing_dims:
            raise ValueError(f"LearnedScale {self.name!r} needs an input of rank > "
                             f"trailing_dims={self.trailing_dims}. "
                             f"{received('input_shape', tuple(input_shape))}")
        shape = tuple(input_shape[-self.trailing_dims:])
        self.s = self.add_weight(shape=shape, name="scale",
                                 initializer=keras.initializers.Constant(self.scale))

    def effective(self):
        """The scale actually applied, ``w * init / scale * factor``."""
        return self.s * (self.init / self.scale * self.factor)

    def call(self, inputs):
        return inputs * ops.cast(self.effective(), inputs.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "init": self.init, "scale": self.scale,
                "factor": self.factor, "trailing_dims": self.trailing_dims}


@register
class ClassToken(keras.layers.Layer):
    """Prepend a learned token to a sequence ``(batch, tokens, dim) -> (batch, 1 + tokens, dim)``
    (ViT's [class] token, Dosovitskiy et al. 2021).

    Args:
        initializer: of the token (default: normal, stddev 0.02).
        constraint: of the token (nGPT: ``UnitNorm()``), or None.
    """

    def __init__(self, initializer=None, constraint=None, **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(
            initializer or keras.initializers.RandomNormal(stddev=0.02))
        self.constraint = keras.constraints.get(constraint)

    def build(self, input_shape):
        self.token = self.add_weight(shape=(input_shape[-1],), name="token",
                                     initializer=self.initializer, constraint=self.constraint)

    def call(self, inputs):
        token = ops.cast(self.token, inputs.dtype)
        token = ops.broadcast_to(token, (ops.shape(inputs)[0], 1, inputs.shape[-1]))
        return ops.concatenate([token, inputs], axis=1)

    def compute_output_shape(self, input_shape):
        tokens = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], tokens, input_shape[2])

    def get_config(self):
        return {**super().get_config(),
                "initializer": keras.initializers.serialize(self.initializer),
                "constraint": keras.constraints.serialize(self.constraint)}


@register
class PositionEmbedding(keras.layers.Layer):
    """Add learned absolute position vectors: ``y[b, t] = x[b, t] + P[t]`` (``P``: (tokens, dim),
    the variable ``embeddings``, one row per position).

    Args:
        initializer: of ``P`` (default: normal, stddev 0.02).
        constraint: of ``P`` (nGPT: ``UnitNorm(axis=1)``, one unit row per position), or None.
    """

    def __init__(self, initializer=None, constraint=None, **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(
            initializer or keras.initializers.RandomNormal(stddev=0.02))
        self.constraint = keras.constraints.get(constraint)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] is None or input_shape[2] is None:
            raise ValueError(f"PositionEmbedding {self.name!r} needs inputs (batch, tokens, dim) "
                             f"with known tokens and dim. "
                             f"{received('input_shape', tuple(input_shape))}")
        self.embeddings = self.add_weight(shape=(input_shape[1], input_shape[2]),
                                          name="embeddings", initializer=self.initializer,
                                          constraint=self.constraint)

    def call(self, inputs):
        return inputs + ops.cast(self.embeddings, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(),
                "initializer": keras.initializers.serialize(self.initializer),
                "constraint": keras.constraints.serialize(self.constraint)}


@register
class SelectToken(keras.layers.Layer):
    """One position of a sequence: ``(batch, tokens, dim) -> (batch, dim)``, ``x[:, index]``
    (``0``: the [class] token; ``-1``: the last position, a causal model's next-token state).
    """

    keras_normreg_scale_rule = "linear"

    def __init__(self, index=-1, **kwargs):
        super().__init__(**kwargs)
        self.index = check_number("index", index, integer=True)

    def call(self, inputs):
        return inputs[:, self.index]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *input_shape[2:])

    def get_config(self):
        return {**super().get_config(), "index": self.index}


@register
class ReversibleEmbedding(keras.layers.Embedding):
    """A token embedding that also unembeds (tied input/output embeddings, Press & Wolf 2017).

    ``layer(tokens)`` is ``keras.layers.Embedding``; ``layer(x, reverse=True)`` gives the logits
    ``x @ E[:reverse_units]^T`` over the first ``reverse_units`` tokens of the vocabulary
    (all of them when None): ``(..., dim) -> (..., reverse_units)``.

    Args:
        reverse_units: how many rows of ``E`` the reverse call scores (<= ``input_dim``).
        Other arguments: those of ``keras.layers.Embedding``.
    """

    def __init__(self, input_dim, output_dim, reverse_units=None, **kwargs):
        super().__init__(input_dim, output_dim, **kwargs)
        if reverse_units is not None:
            check_number("reverse_units", reverse_units, low=1, high=input_dim, integer=True)
        self.reverse_units = reverse_units

    def _units(self):
        return self.input_dim if self.reverse_units is None else self.reverse_units

    def call(self, inputs, reverse=False):
        if not reverse:
            return super().call(inputs)
        table = ops.cast(self.embeddings[: self._units()], inputs.dtype)
        return ops.matmul(inputs, ops.transpose(table))

    def compute_output_spec(self, inputs, reverse=False):
        if not reverse:
            return super().compute_output_spec(inputs)
        return keras.KerasTensor((*inputs.shape[:-1], self._units()), dtype=self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "reverse_units": self.reverse_units}
