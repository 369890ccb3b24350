"""Building blocks shared by the zoo families: layers with the normalization knob applied.

``norm`` is a name of the normalization table (:func:`keras_normreg.layers.normalization_names`:
the layers of ``NORMALIZATIONS``, registered ones included, and ``WEIGHT_NORMS``) or a
normalization layer class, instance or config dict. Conventions used by every family:

* ``"batch"``-like and ``"layer"``/``"group"`` norms (and any other layer of the table): conv/dense
  without bias, then the norm layer, then the activation (the bias would be removed by the norm's
  centering anyway).
* ``"none"``: conv/dense with bias, no norm layer.
* ``"weight"``: conv/dense wrapped in :class:`~keras_normreg.layers.WeightNormalization`
  (trainable gain g), with bias; ``"weight_fixed"``: the same with g fixed at sqrt(2) (the norm of
  a He-initialized unit, so activations keep their scale: bounded weight normalization, Hoffer et
  al. 2018).
* The classifier head is always a plain Dense producing logits; a builder's
  ``classifier_activation`` adds an activation after it (:func:`keras_normreg.zoo._model.zoo_model`).
"""

from __future__ import annotations

import math

import keras

from keras_normreg import layers as nr_layers
from keras_normreg.layers import WEIGHT_NORMS

FIXED_G = math.sqrt(2.0)


def is_weight_norm(norm) -> bool:
    return isinstance(norm, str) and norm in WEIGHT_NORMS


def uses_bias(norm) -> bool:
    """Conv/dense layers get a bias only when no normalization layer follows them."""
    return norm is None or (isinstance(norm, str) and norm in ("none", *WEIGHT_NORMS))


def check_norm(norm):
    """Validate the ``norm`` knob eagerly (the error names ``norm`` and lists the valid names)."""
    if norm is None or isinstance(norm, keras.layers.Layer):
        return norm
    if isinstance(norm, str):
        valid = list(nr_layers.normalization_names())
        if norm not in valid:
            raise ValueError(f"Unknown normalization. Valid names: {valid}. "
                             f"Received: norm={norm!r}")
        return norm
    if (isinstance(norm, type) and issubclass(norm, keras.layers.Layer)) or (
            isinstance(norm, dict) and "class_name" in norm):
        return norm
    raise ValueError("Argument `norm` must be a normalization name, a keras Layer class, a layer "
                     f"instance or a Keras config dict. Received: norm={norm!r}")


def make_norm(norm, name: str):
    """A fresh normalization layer for ``norm`` (None when the choice adds no layer)."""
    check_norm(norm)
    if norm is None or (isinstance(norm, str) and norm in ("none", *WEIGHT_NORMS)):
        return None
    if isinstance(norm, keras.layers.Layer):
        config = dict(norm.get_config())
        config["name"] = name
        return norm.__class__.from_config(config)
    if isinstance(norm, dict):
        # Through the normalization table, so {"class_name": "l1_batch", ...} works too.
        layer = nr_layers.get_normalization(norm)
        return None if layer is None else make_norm(layer, name)
    return nr_layers.get_normalization(norm, name=name)


def wrap(layer: keras.layers.Layer, norm):
    """Wrap a conv/dense layer in WeightNormalization when ``norm`` asks for it."""
    if not is_weight_norm(norm):
        return layer
    fixed = FIXED_G if norm == "weight_fixed" else None
    return nr_layers.WeightNormalization(layer, fixed_g=fixed, name=f"{layer.name}_wn")


def conv(rank: int, filters: int, kernel_size, norm, name: str, *, strides=1,
         padding="same", use_bias=None, kernel_initializer="he_normal"):
    cls = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[rank]
    layer = cls(filters, kernel_size, strides=strides, padding=padding,
                use_bias=uses_bias(norm) if use_bias is None else use_bias,
                kernel_initializer=kernel_initializer, name=name)
    return wrap(layer, norm)


def dense(units: int, norm, name: str, *, use_bias=None, kernel_initializer="he_normal"):
    layer = keras.layers.Dense(units, use_bias=uses_bias(norm) if use_bias is None else use_bias,
                               kernel_initializer=kernel_initializer, name=name)
    return wrap(layer, norm)


def norm_act(x, norm, name: str, activation="relu"):
    """Apply the norm layer (if any) then the activation."""
    layer = make_norm(norm, f"{name}_norm")
    if layer is not None:
        x = layer(x)
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_act")(x)
    return x


def conv_norm_act(x, rank, filters, kernel_size, norm, name, *, strides=1, activation="relu"):
    x = conv(rank, filters, kernel_size, norm, f"{name}_conv", strides=strides)(x)
    return norm_act(x, norm, name, activation)


def classifier(x, num_classes: int, name: str = "classifier"):
    """The plain Dense head producing logits."""
    return keras.layers.Dense(num_classes, name=name)(x)


def check_positive_ints(name: str, values):
    seq = values if isinstance(values, (tuple, list)) else [values]
    if not seq or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in seq):
        raise ValueError(f"Argument `{name}` must be a positive integer or a non-empty sequence "
                         f"of them. Received: {name}={values!r}")
    return values
