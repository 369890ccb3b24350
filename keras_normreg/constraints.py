"""Norm constraints that normalize per *output unit*, with the axes inferred from the layer.

Maths
-----
For a weight ``W`` and each output unit ``j`` let ``w_j`` be the slice of ``W`` that produces
unit ``j`` and ``n_j = ||w_j||_2``. After every optimizer step Keras replaces ``W`` by
``constraint(W)``:

* :class:`UnitNorm`:  ``w_j <- w_j / n_j``                     (``||w_j|| = 1``)
* :class:`FixedNorm`: ``w_j <- value * w_j / n_j``             (``||w_j|| = value``)
* :class:`MaxNorm`:   ``w_j <- w_j * min(1, max_value / n_j)`` (only units above ``max_value``
  are shrunk, the others are left untouched)

(``n_j`` is floored at 1e-12 so an all-zero unit stays zero instead of producing NaN.)
Projecting onto ``||w_j|| = const`` is the direct answer to the scale invariance that
normalization layers create (van Laarhoven 2017, Hoffer et al. 2018): it removes the norm
degree of freedom that L2 regularization would otherwise only shrink.

Axes ("per output unit")
------------------------
==================================  =============================  =======================
weight                              layout                          norm over axes
==================================  =============================  =======================
Dense kernel                        ``(in, out)``                   ``0``
Conv1D/2D/3D kernel                 ``(*k, in, out)``               all but the last
DepthwiseConv kernel                ``(*k, in, multiplier)``        the spatial ``*k``
Conv*Transpose kernel               ``(*k, out, in)``               all but the 2nd-to-last
Embedding table                     ``(vocab, dim)``                ``1`` (one norm per row)
rank-0/1 weights (bias, gamma)      ``(n,)``                        the whole vector
==================================  =============================  =======================

A Keras constraint only sees the tensor, not its layer, so:

* ``axis=`` (an int or a list of ints) overrides everything;
* else ``layer_kind`` in ``{"dense", "conv", "conv_transpose", "depthwise", "embedding"}``
  selects the rule above;
* else the rule is guessed from the rank: rank 2 -> ``"dense"``, rank >= 3 -> ``"conv"``.
  **Depthwise, embedding and transposed-convolution weights are therefore normalized wrongly
  by a bare ``UnitNorm()``**: pass ``layer_kind=...`` or use :func:`attach`, which sets
  ``layer_kind`` from each layer's type.

Keras' own ``keras.constraints.UnitNorm()`` defaults to ``axis=0``, which is right for Dense but
on a Conv2D kernel ``(kh, kw, in, out)`` normalizes over the kernel rows instead of per filter.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_normreg import _targeting, selectors
from keras_normreg._registry import Registry, get_from_table
from keras_normreg._utils import check_choice, check_number, received, register

LAYER_KINDS = ("dense", "conv", "conv_transpose", "depthwise", "embedding")
_EPS = 1e-12


def _floored(norms):
    """``max(norms, 1e-12)`` in the norms' dtype. Written with ``where``: Keras' torch
    ``ops.maximum`` / ``ops.minimum`` return float32 for float64 inputs (its type promotion maps
    float64 to float32 off TensorFlow); ``where`` keeps float64 on every backend. Python floats
    reach the dtype with ``convert_to_tensor(x, dtype)`` (TensorFlow's ``ops.cast`` of a Python
    float goes through float32)."""
    floor = ops.convert_to_tensor(_EPS, dtype=norms.dtype)
    return ops.where(norms < floor, floor, norms)

__all__ = ["UnitNorm", "MaxNorm", "FixedNorm", "get", "from_value", "attach", "CONSTRAINTS",
           "LAYER_KINDS", "VALUE_ARGUMENTS", "register_constraint", "unregister_constraint"]


def _check_axis(axis):
    if axis is None:
        return None
    if isinstance(axis, bool):
        raise ValueError("Argument `axis` must be None, an int or a list of ints. "
                         + received("axis", axis))
    if isinstance(axis, int):
        return axis
    if isinstance(axis, (list, tuple)) and axis and all(
        isinstance(a, int) and not isinstance(a, bool) for a in axis
    ):
        if len(set(axis)) != len(axis):
            raise ValueError("Argument `axis` must not repeat an axis. " + received("axis", axis))
        return list(axis)
    raise ValueError("Argument `axis` must be None, an int or a non-empty list of ints. "
                     + received("axis", axis))


def reduction_axes(rank: int, axis=None, layer_kind=None) -> tuple[int, ...] | None:
    """Axes over which the per-unit norm is taken for a weight of ``rank``.

    None means "the whole tensor" (rank 0/1 weights). Raises ValueError for an axis out of
    range or a ``layer_kind`` that does not fit the rank.
    """
    if axis is not None:
        axes = [axis] if isinstance(axis, int) else list(axis)
        for a in axes:
            if not -rank <= a < rank:
                raise ValueError(
                    f"Argument `axis` is out of range for a weight of rank {rank}. "
                    + received("axis", axis)
                )
        return tuple(sorted(a % rank for a in axes))
    if layer_kind is None:
        if rank <= 1:
            return None
        layer_kind = "dense" if rank == 2 else "conv"
    if layer_kind in ("dense", "embedding"):
        if rank != 2:
            raise ValueError(
                f"layer_kind={layer_kind!r} expects a rank-2 weight, got rank {rank}. "
                + received("layer_kind", layer_kind)
            )
        return (0,) if layer_kind == "dense" else (1,)
    if rank < 3:
        raise ValueError(
            f"layer_kind={layer_kind!r} expects a weight of rank >= 3, got rank {rank}. "
            + received("layer_kind", layer_kind)
        )
    if layer_kind == "conv":
        return tuple(range(rank - 1))
    if layer_kind == "conv_transpose":
        return tuple(range(rank - 2)) + (rank - 1,)
    return tuple(range(rank - 2))  # depthwise


class _PerUnitNormConstraint(keras.constraints.Constraint):
    """Shared machinery: axis/layer_kind handling and the per-unit norm."""

    def __init__(self, axis=None, layer_kind=None):
        self.axis = _check_axis(axis)
        self.layer_kind = check_choice("layer_kind", layer_kind, (None,) + LAYER_KINDS)

    def norm_axes(self, rank):
        """The axes the norms of a weight of ``rank`` are taken over (None: the whole tensor);
        what sphere mode and the monitor read (:func:`keras_normreg._targeting.vector_axes`)."""
        return reduction_axes(rank, self.axis, self.layer_kind)

    def unit_norms(self, w):
        """``||w_j||`` with keepdims (broadcastable against ``w``)."""
        axes = self.norm_axes(len(w.shape))
        return ops.sqrt(ops.sum(ops.square(w), axis=axes, keepdims=True))

    def get_config(self):
        return {"axis": self.axis, "layer_kind": self.layer_kind}

    def _args_repr(self):
        parts = [f"{k}={v!r}" for k, v in self.get_config().items() if v is not None]
        return ", ".join(parts)

    def __repr__(self):
        return f"{type(self).__name__}({self._args_repr()})"


@register
class FixedNorm(_PerUnitNormConstraint):
    """Hold the L2 norm of every output unit exactly at ``value``: ``w_j <- value * w_j/||w_j||``.

    Args:
        value: the norm each unit is projected to (> 0).
        axis: int or list of ints: axes to take the norm over (overrides ``layer_kind``).
        layer_kind: one of ``"dense"``, ``"conv"``, ``"conv_transpose"``, ``"depthwise"``,
            ``"embedding"``; None infers from the rank (2 -> dense, >= 3 -> conv). See the module
            docstring for the axes of each kind.
    """

    def __init__(self, value=1.0, axis=None, layer_kind=None):
        super().__init__(axis=axis, layer_kind=layer_kind)
        self.value = check_number("value", value, low=0, low_inclusive=False)

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        norms = self.unit_norms(w)
        return w * (ops.convert_to_tensor(self.value, dtype=w.dtype) / _floored(norms))

    def get_config(self):
        return {"value": self.value, **super().get_config()}


@register
class UnitNorm(FixedNorm):
    """Unit L2 norm per output unit: ``w_j <- w_j / ||w_j||`` (``FixedNorm(1.0)``).

    Unlike ``keras.constraints.UnitNorm`` (``axis=0`` by default), the axes follow the layer
    kind, so a Conv2D kernel gets one unit-norm filter per output channel.

    Args:
        axis: int or list of ints: axes to take the norm over (overrides ``layer_kind``).
        layer_kind: see :class:`FixedNorm`.
    """

    def __init__(self, axis=None, layer_kind=None):
        super().__init__(value=1.0, axis=axis, layer_kind=layer_kind)

    def get_config(self):
        config = super().get_config()
        config.pop("value")
        return config


@register
class MaxNorm(_PerUnitNormConstraint):
    """Cap the L2 norm of every output unit: ``w_j <- w_j * min(1, max_value / ||w_j||)``.

    Units whose norm is at most ``max_value`` are returned unchanged (exactly).

    Args:
        max_value: the largest allowed norm (> 0).
        axis: int or list of ints: axes to take the norm over (overrides ``layer_kind``).
        layer_kind: see :class:`FixedNorm`.
    """

    def __init__(self, max_value=2.0, axis=None, layer_kind=None):
        super().__init__(axis=axis, layer_kind=layer_kind)
        self.max_value = check_number("max_value", max_value, low=0, low_inclusive=False)

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        norms = self.unit_norms(w)
        ratio = ops.convert_to_tensor(self.max_value, dtype=w.dtype) / _floored(norms)
        one = ops.ones((), dtype=w.dtype)
        return w * ops.where(ratio < one, ratio, one)  # min(1, ratio), see _floored

    def get_config(self):
        return {"max_value": self.max_value, **super().get_config()}


def _check_constraint_class(cls) -> None:
    if not (isinstance(cls, type) and issubclass(cls, keras.constraints.Constraint)):
        raise ValueError("Argument `cls` must be a keras.constraints.Constraint subclass. "
                         + received("cls", cls))


#: String table of the constraint family (``constraint="unit_norm"``): the one list of
#: constraint names (recipes, CLI help and the zoo read it). ``"none"`` (no constraint) is a
#: choice of recipes but not an entry. Add to it with :func:`register_constraint`.
CONSTRAINTS = Registry(
    "constraint",
    {
        "unit_norm": UnitNorm,
        "max_norm": MaxNorm,
        "fixed_norm": FixedNorm,
        "non_neg": keras.constraints.NonNeg,
    },
    reserved={"none": "For no constraint, pass None."},
    check=_check_constraint_class)

#: Name -> the constructor argument that takes a recipe's ``model.constraint_value``
#: (names absent here take no value: ``unit_norm``, ``non_neg``); filled by
#: :func:`register_constraint` together with :data:`CONSTRAINTS`.
VALUE_ARGUMENTS = {
    "max_norm": "max_value",
    "fixed_norm": "value",
}


def register_constraint(name: str, cls, *, value_argument: str | None = None):
    """Add the constraint name ``name`` to :data:`CONSTRAINTS`.

    Args:
        name: the new name (:data:`keras_normreg._registry.NAME_RULE`: lower-case snake case),
            not already in the table.
        cls: a ``keras.constraints.Constraint`` subclass (instantiated without arguments by
            :func:`get`).
        value_argument: the constructor argument that receives a recipe's
            ``model.constraint_value`` (see :func:`from_value`); None: the class takes none.

    Returns:
        ``cls``, unchanged.
    """
    if value_argument is not None and (not isinstance(value_argument, str)
                                       or not value_argument.isidentifier()):
        raise ValueError("Argument `value_argument` must be None or an argument name. "
                         + received("value_argument", value_argument))
    CONSTRAINTS.register(name, cls)
    if value_argument is not None:
        VALUE_ARGUMENTS[name] = value_argument
    return cls


def unregister_constraint(name: str) -> None:
    """Remove a name added by :func:`register_constraint` (built-in ones stay)."""
    CONSTRAINTS.unregister(name)
    VALUE_ARGUMENTS.pop(name, None)


def get(identifier):
    """Resolve a constraint from a name, a class, an instance or a config dict.

    * None -> None;
    * a name from :data:`CONSTRAINTS` (``"unit_norm"``, ``"max_norm"``, ``"fixed_norm"``,
      ``"non_neg"`` and the registered ones) or a class -> a default instance;
    * an instance (any callable, e.g. a Keras constraint) -> itself;
    * a serialized dict ``{"class_name": ..., "config": {...}}`` (``class_name`` may also be a
      table name) -> the deserialized constraint.
    """
    return get_from_table(CONSTRAINTS, identifier, keras.constraints.Constraint,
                          keras.constraints.get)


def from_value(name: str, value: float):
    """The constraint ``name`` of :data:`CONSTRAINTS` built with a recipe's
    ``model.constraint_value`` (passed as its :data:`VALUE_ARGUMENTS` entry; names without one
    ignore ``value``): ``from_value("max_norm", 3.0) == MaxNorm(max_value=3.0)``.
    ``"none"`` gives None.
    """
    if name == "none":
        return None
    if name not in CONSTRAINTS:
        raise CONSTRAINTS.unknown(name, "name", also=("none",))
    argument = VALUE_ARGUMENTS.get(name)
    return CONSTRAINTS[name]() if argument is None else CONSTRAINTS[name](**{argument: value})


def _for_layer(constraint, layer, variable):
    """A copy of ``constraint`` with ``layer_kind`` set from ``layer``'s type (when ours)."""
    if not isinstance(constraint, _PerUnitNormConstraint) or constraint.axis is not None:
        return constraint
    kind = _targeting.layer_kind(layer, variable)
    if kind is None:
        kind = constraint.layer_kind
    config = dict(constraint.get_config(), layer_kind=kind)
    return type(constraint).from_config(config)


def attach(model_or_layer, constraint, targets=("kernel",), include=None, exclude=None):
    """Attach ``constraint`` to the selected weights of a built model or layer.

    For every trainable variable that ``targets`` picks and that passes ``include`` /
    ``exclude`` (all three are selectors of :mod:`keras_normreg.selectors`: roles
    ``"kernel"``, ``"depthwise_kernel"``, ``"bias"``, ``"gamma"``, ``"beta"``, ``"embeddings"``,
    ``"all"``; keywords ``"normalization"``, ``"1d"``; layer classes or class names;
    ``"glob:<pattern>"`` / ``"regex:<pattern>"`` on ``variable.path``; in include/exclude a
    bare glob is still matched against the path and the layer name):

    1. a per-layer copy of the constraint gets ``layer_kind`` from the layer's type (Dense ->
       ``"dense"``, Conv -> ``"conv"``, DepthwiseConv -> ``"depthwise"``, Conv*Transpose ->
       ``"conv_transpose"``, Embedding -> ``"embedding"``) unless it has an explicit ``axis``;
    2. the layer attribute (``kernel_constraint``, ``depthwise_constraint``, ...) is set, so the
       constraint is in ``get_config()`` and survives ``.keras`` save/load;
    3. ``variable.constraint`` is set (Keras 3 optimizers apply it after every step);
    4. the current value is projected once, so the constraint holds from step 0.

    Attach before ``compile()``/``fit()``; if the model was already trained, its cached
    train function is dropped so the next ``fit`` re-traces with the constraint.
    ``constraint=None`` removes constraints from the selected weights.

    Returns:
        list of the variable paths touched.
    """
    _targeting.check_built(model_or_layer, "constraints.attach")
    constraint = get(constraint)
    targets = selectors.parse_targets(targets)
    include = selectors.parse_filter(include, "include")
    exclude = selectors.parse_filter(exclude, "exclude")
    pairs = _targeting.layer_variables(model_or_layer)
    chosen = selectors.select(pairs, targets, include, exclude, name_prefix="constraints.attach: ")
    if not chosen:
        what = selectors.describe(targets)
        extra = " matching include/exclude" if include is not None or exclude is not None else ""
        raise ValueError(
            f"constraint targets {what} but the model has no layer with a "
            f"{what.replace(chr(39), '')}{extra} (trainable variables: "
            f"{[v.path for _, v in pairs][:12]}). " + received("targets", targets)
        )
    touched = []
    for layer, variable in chosen:
        c = _for_layer(constraint, layer, variable)
        where = _targeting.attribute_name(layer, variable, "constraint")
        if where is not None:
            setattr(where[0], where[1], c)
        variable.constraint = c
        if c is not None:
            variable.assign(c(variable))
        touched.append(variable.path)
    _targeting.reset_compiled_functions(model_or_layer)
    return touched
