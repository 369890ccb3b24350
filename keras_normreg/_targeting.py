"""Layer kinds and variable roles: the machinery beneath :mod:`keras_normreg.selectors`.

Used by :mod:`keras_normreg.selectors` (which weights a selector picks), by
:func:`keras_normreg.constraints.attach` / :func:`keras_normreg.regularizers.apply` (where a
constraint or regularizer is stored) and by :mod:`keras_normreg._invariance`. Nothing here
imports ``keras_normreg.layers``: our own normalization layers and the ``WeightNormalization``
wrapper are recognised by class name (duck typing), so this module works whether or not those
layers are imported.

Roles
-----
Every trainable variable gets a *role* from its layer and its name:

* ``"kernel"``: the main weight tensor of Dense / EinsumDense / Conv* / Conv*Transpose, the
  pointwise kernel of SeparableConv*, recurrent kernels (any name ending in ``_kernel``), and the
  direction ``v`` of a ``WeightNormalization`` wrapper;
* ``"depthwise_kernel"``: the kernel of DepthwiseConv* and the depthwise kernel of
  SeparableConv* (kept apart from ``"kernel"`` on purpose: depthwise filters are usually left
  unregularized, as in MobileNet);
* ``"bias"`` (also any name ending in ``_bias``), ``"beta"``, ``"embeddings"``;
* ``"gamma"``: the scale of a normalization layer, and the gain ``g`` of ``WeightNormalization``;
* ``"other"``: anything else (reachable only through the selector ``"all"``).

:func:`name_role` gives the role from the variable's name alone (what the optimizers see);
:func:`variable_role` refines it with the owning layer (DepthwiseConv's ``kernel``,
``WeightNormalization``'s ``v`` and ``g``).
"""

from __future__ import annotations

import keras

from keras_normreg._utils import received, variable_name

#: The roles a selector can name (``"all"``: every variable, whatever its role).
ROLES = ("kernel", "depthwise_kernel", "bias", "gamma", "beta", "embeddings", "all")
TARGETS = ROLES  # the name this tuple had when roles were only ``targets=``

#: Class names of the batch-normalization family we recognise without importing them.
BATCH_NORM_CLASS_NAMES = frozenset(
    {"BatchNormalization", "L1BatchNormalization", "TopKBatchNormalization",
     "SyncBatchNormalization"}
)
WEIGHT_NORMALIZATION_CLASS_NAMES = frozenset({"WeightNormalization"})

_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_CONV_TRANSPOSE = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                   keras.layers.Conv3DTranspose)


def class_names(obj) -> set[str]:
    """Names of ``type(obj)`` and of all its base classes."""
    return {cls.__name__ for cls in type(obj).__mro__}


# --------------------------------------------------------------------------- layer kinds


def normalization_kind(layer) -> str | None:
    """``"batch"``, ``"layer"``, ``"group"``, ``"unit"``, ``"rms"`` or None.

    ``"batch"`` is the whole BatchNormalization family: keras' own, and by class name
    ``L1BatchNormalization`` / ``TopKBatchNormalization`` (or any class whose name ends with
    ``BatchNormalization``); all of them subtract a per-feature batch mean.
    """
    names = class_names(layer)
    if isinstance(layer, keras.layers.BatchNormalization) or names & BATCH_NORM_CLASS_NAMES:
        return "batch"
    if any(n.endswith("BatchNormalization") for n in names):
        return "batch"
    if isinstance(layer, keras.layers.LayerNormalization):
        return "layer"
    if isinstance(layer, keras.layers.GroupNormalization):
        return "group"
    if isinstance(layer, keras.layers.UnitNormalization):
        return "unit"
    if isinstance(layer, keras.layers.RMSNormalization):
        return "rms"
    return None


def is_weight_normalization(layer) -> bool:
    """True for a ``WeightNormalization`` wrapper (recognised by class name)."""
    return bool(class_names(layer) & WEIGHT_NORMALIZATION_CLASS_NAMES)


def inner_layer(layer):
    """The layer wrapped by a wrapper (``layer.layer``), else None."""
    inner = getattr(layer, "layer", None)
    return inner if isinstance(inner, keras.layers.Layer) else None


def name_role(variable) -> str:
    """Role of ``variable`` from its name alone (no layer): see the module doc.

    ``"kernel"`` for ``kernel`` / ``*_kernel`` (``depthwise_kernel`` excepted), ``"bias"`` for
    ``bias`` / ``*_bias``, the name itself for ``depthwise_kernel`` / ``gamma`` / ``beta`` /
    ``embeddings``, else ``"other"``.
    """
    name = variable_name(variable)
    if name == "depthwise_kernel":
        return "depthwise_kernel"
    if name == "kernel" or name.endswith("_kernel"):
        return "kernel"
    if name == "bias" or name.endswith("_bias"):
        return "bias"
    if name in ("gamma", "beta", "embeddings"):
        return name
    return "other"


def variable_role(layer, variable) -> str:
    """Role of ``variable`` (owned by ``layer``): :func:`name_role` refined by the layer type."""
    name = variable_name(variable)
    if is_weight_normalization(layer):
        if name == "v":
            return "depthwise_kernel" if isinstance(inner_layer(layer), _DEPTHWISE) else "kernel"
        if name == "g":
            return "gamma"
    if name == "kernel" and isinstance(layer, _DEPTHWISE):
        return "depthwise_kernel"
    return name_role(variable)


def layer_kind(layer, variable) -> str | None:
    """The constraint ``layer_kind`` of ``variable`` from the type of its ``layer``.

    None when the type says nothing (the constraint then infers from the rank).
    """
    role = variable_role(layer, variable)
    name = variable_name(variable)
    rank = len(variable.shape)
    if is_weight_normalization(layer):
        inner = inner_layer(layer)
        if inner is None or name != "v":
            return None
        return _kernel_kind(inner, rank)
    if role == "depthwise_kernel":
        return "depthwise"
    if role == "embeddings" or isinstance(layer, keras.layers.Embedding):
        return "embedding" if rank == 2 else None
    if role != "kernel":
        return None
    if isinstance(layer, _SEPARABLE):  # pointwise kernel (1, ..., in, out)
        return "conv"
    return _kernel_kind(layer, rank)


def _kernel_kind(layer, rank):
    if isinstance(layer, _CONV_TRANSPOSE):
        return "conv_transpose"
    if isinstance(layer, _DEPTHWISE):
        return "depthwise"
    if isinstance(layer, _CONV):
        return "conv"
    if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)) and rank == 2:
        return "dense"
    return None


def attribute_name(layer, variable, suffix: str):
    """Where ``variable``'s ``suffix`` (``"regularizer"``/``"constraint"``) lives in the config.

    Returns ``(owner, attribute)`` or None when no layer attribute holds it. Usually the owner
    is ``layer``: ``kernel`` -> ``kernel_regularizer``; DepthwiseConv ``kernel`` ->
    ``depthwise_regularizer``; ``depthwise_kernel`` -> ``depthwise_regularizer``;
    ``recurrent_kernel`` -> ``recurrent_regularizer``. For a ``WeightNormalization`` wrapper,
    ``v`` and ``bias`` are made from the (serialized) inner layer's ``kernel_*`` /
    ``depthwise_*`` / ``bias_*`` arguments, so the owner is the inner layer; ``g`` has none.
    """
    name = variable_name(variable)
    owner = layer
    if is_weight_normalization(layer):
        inner = inner_layer(layer)
        if inner is None or name not in ("v", "bias"):
            return None
        owner = inner
        name = "bias" if name == "bias" else (
            "depthwise_kernel" if isinstance(inner, _DEPTHWISE) else "kernel"
        )
    candidates = [f"{name}_{suffix}"]
    if name.endswith("_kernel"):
        candidates.append(f"{name[: -len('_kernel')]}_{suffix}")
    if name == "kernel":
        candidates.append(f"depthwise_{suffix}")
    for attr in candidates:
        if attr in vars(owner) or hasattr(type(owner), attr):
            return owner, attr
    return None


# --------------------------------------------------------------------------- traversal


def iter_layers(model_or_layer):
    """All layers of ``model_or_layer`` (itself included), nested models and wrappers too."""
    if not isinstance(model_or_layer, keras.layers.Layer):
        raise ValueError(
            "Expected a Keras model or layer. " + received("model", model_or_layer)
        )
    flatten = getattr(model_or_layer, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=True, recursive=True))
    return [model_or_layer]  # pragma: no cover  (every Keras 3 layer has _flatten_layers)


def own_variables(layer):
    """The trainable variables created by ``layer`` itself (not by its sublayers).

    "Trainable" as declared at creation (``add_weight(trainable=True)``): a frozen layer's
    kernel is included, BatchNormalization's moving statistics are not.
    """
    own = getattr(layer, "_trainable_variables", None)
    if own is None:  # pragma: no cover  (every Keras 3 layer has it)
        return list(layer.trainable_weights)
    return list(own)


def layer_variables(model_or_layer):
    """``[(layer, variable)]`` for every (declared-)trainable variable, each variable once."""
    seen = set()
    out = []
    for layer in iter_layers(model_or_layer):
        for variable in own_variables(layer):
            if id(variable) in seen:
                continue
            seen.add(id(variable))
            out.append((layer, variable))
    return out


def check_built(model_or_layer, what: str):
    if not getattr(model_or_layer, "built", False):
        raise ValueError(
            f"`{what}` needs a built model (its weights must exist): call the model on data, "
            "build it with an input shape, or give it an `Input`. "
            + received("model", model_or_layer)
        )


def reset_compiled_functions(model) -> None:
    """Drop cached traced train/test functions so that new regularizers/constraints are seen.

    Keras traces ``train_step`` once; a regularizer or constraint attached after that would be
    ignored until the function is re-made. Setting them to None makes Keras re-trace on the next
    ``fit``/``evaluate`` (the same thing ``compile()`` does).
    """
    for attr in ("train_function", "test_function"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
