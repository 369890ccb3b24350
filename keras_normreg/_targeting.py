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

A layer may declare the roles of its variables with the class attribute
``keras_normreg_variable_roles`` (``{variable name: role}``), so this module needs no import of
it. The transformer zoo's layers are also known here by class name (:data:`LAYER_VARIABLE_ROLES`):
``ClassToken``'s ``token`` is an embedding (``"embeddings"``), ``PositionEmbedding``'s and
``ReversibleEmbedding``'s ``embeddings`` embeddings (as their name says). ``LearnedScale``'s
``scale`` (nGPT's per-dimension step sizes / scalings) keeps the role ``"other"`` for now (a
``"gamma"`` is a candidate of the invariance analysis, which does not yet analyse the layer);
the selector keyword ``"normalization"`` picks it as a gain, so the optimizers' default
``exclude`` leaves it undecayed.

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
#: ``{layer class name: {variable name: role}}`` for layers we know without importing them
#: (a layer's own ``keras_normreg_variable_roles`` class attribute takes precedence).
LAYER_VARIABLE_ROLES = {
    "ClassToken": {"token": "embeddings"},
    "PositionEmbedding": {"embeddings": "embeddings"},
    "ReversibleEmbedding": {"embeddings": "embeddings"},
}

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
    declared = declared_role(layer, name)
    if declared is not None:
        return declared
    if is_weight_normalization(layer):
        if name == "v":
            return "depthwise_kernel" if isinstance(inner_layer(layer), _DEPTHWISE) else "kernel"
        if name == "g":
            return "gamma"
    if name == "kernel" and isinstance(layer, _DEPTHWISE):
        return "depthwise_kernel"
    return name_role(variable)


def declared_role(layer, name):
    """The role ``layer`` declares for its variable ``name`` (class attribute
    ``keras_normreg_variable_roles``, else :data:`LAYER_VARIABLE_ROLES` by class name), or
    None."""
    table = getattr(type(layer), "keras_normreg_variable_roles", None)
    if table is None:
        for cls in type(layer).__mro__:
            table = LAYER_VARIABLE_ROLES.get(cls.__name__)
            if table is not None:
                break
    if not table:
        return None
    role = table.get(name)
    return role if role in ROLES else None


def vector_axes(layer, variable) -> tuple[int, ...] | None:
    """The axes of one weight *vector* of ``variable`` (owned by ``layer``): what a per-unit norm
    or a per-vector angle is taken over; None for the whole tensor (rank <= 1).

    * a norm constraint with axes (keras_normreg's ``UnitNorm`` / ``FixedNorm`` / ``MaxNorm``,
      read by duck typing, or ``keras.constraints.UnitNorm``): the constraint's axes (nGPT's
      explicit axes);
    * an ``EinsumDense`` kernel: the kernel axes contracted with the input (``"btd,dhk->bthk"``:
      ``(0,)``, one vector per (head, head_dim); ``"bthk,hkd->btd"``: ``(0, 1)``, one vector per
      output dimension);
    * an embedding table (role ``"embeddings"``, rank 2): ``(1,)``, one vector per row;
    * a depthwise kernel: all axes but the last two; a transposed convolution's kernel
      ``(..., out, in)``: all axes but the second last;
    * any other kernel of rank >= 2: all axes but the last (Keras' ``(..., in, out)``).
    """
    rank = len(variable.shape)
    if rank <= 1:
        return None
    axes = constraint_axes(variable)
    if axes is not None:
        return axes or None
    role = variable_role(layer, variable)
    if isinstance(layer, keras.layers.EinsumDense) and variable_name(variable) == "kernel":
        contracted = _einsum_contracted_axes(layer.equation, rank)
        if contracted:
            return contracted
    if role == "embeddings":
        return (1,) if rank == 2 else tuple(range(1, rank))
    if role == "depthwise_kernel":
        return tuple(range(rank - 2)) if rank >= 3 else (0,)
    if isinstance(layer, _CONV_TRANSPOSE) and role == "kernel":
        return tuple(range(rank - 2)) + (rank - 1,)
    return tuple(range(rank - 1))


def _einsum_contracted_axes(equation, rank):
    """Kernel axes of an EinsumDense ``"in,kernel->out"`` equation summed over (their letters
    appear in the input and not in the output)."""
    try:
        lhs, out = equation.replace(" ", "").split("->")
        inp, kernel = lhs.split(",")
    except (AttributeError, ValueError):
        return None
    if len(kernel) != rank or "." in kernel:
        return None
    axes = tuple(i for i, c in enumerate(kernel) if c in inp and c not in out)
    return axes or None


def constraint_axes(variable):
    """The axes the norm constraint of ``variable`` takes its norms over: a tuple (``()`` for the
    whole tensor), or None when the variable has no norm constraint we can read.

    keras_normreg's norm constraints are read by duck typing (their ``norm_axes(rank)``
    method); ``keras.constraints.UnitNorm`` / ``MaxNorm`` / ``MinMaxNorm`` by their ``axis``.
    """
    constraint = getattr(variable, "constraint", None)
    if constraint is None:
        return None
    rank = len(variable.shape)
    axes_of = getattr(constraint, "norm_axes", None)
    if callable(axes_of):  # keras_normreg's UnitNorm / FixedNorm / MaxNorm
        try:
            axes = axes_of(rank)
        except ValueError:  # a layer_kind or axis that does not fit the rank
            return None
        return () if axes is None else tuple(axes)
    if isinstance(constraint, (keras.constraints.UnitNorm, keras.constraints.MaxNorm,
                               keras.constraints.MinMaxNorm)):
        axis = constraint.axis
    else:
        return None
    axes = [axis] if isinstance(axis, int) else list(axis)
    if not all(isinstance(a, int) and -rank <= a < rank for a in axes):
        return None
    return tuple(sorted(a % rank for a in axes))


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
