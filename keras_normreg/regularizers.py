"""L1 / L2 / ElasticNet penalties, and rules for which weights get them.

Maths and factor convention
---------------------------
For a weight ``w`` the penalty added to the loss is

* :class:`L1`: ``l1 * sum(|w|)``
* :class:`L2`: ``l2 * sum(w**2)``  (no 1/2: the gradient is ``2 * l2 * w``)
* :class:`ElasticNet`: ``l1 * sum(|w|) + l2 * sum(w**2)``

the same convention as ``keras.regularizers``. PyTorch-style weight decay ``λ`` (gradient
``λ * w``, i.e. a penalty ``λ/2 * ||w||²``) therefore equals ``L2(λ / 2)``. Both are *coupled*
decay: the term goes through the optimizer (Adam rescales it); see
``keras_normreg.optimizers`` for decoupled decay.

Why rules
---------
A kernel followed by a normalization layer (conv -> BN) is *scale-invariant*: the network
computes the same function for ``c * W`` as for ``W`` (any ``c > 0``, in training mode, up to the
normalization's epsilon). L2 on such a kernel does not regularize the function; it only shrinks
``||W||``, which raises the effective learning rate ``lr / ||W||²`` (van Laarhoven 2017).
:func:`apply` therefore skips scale-invariant kernels by default
(``skip_scale_invariant="auto"``, found by :func:`keras_normreg.invariance.find_scale_invariant`)
and regularizes the rest, e.g. the final Dense classifier.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import keras
from keras import ops

from keras_normreg import _invariance, _targeting, selectors
from keras_normreg._registry import Registry, get_from_table
from keras_normreg._utils import check_number, received, register

__all__ = ["L1", "L2", "ElasticNet", "get", "apply", "RegularizationReport", "REGULARIZERS",
           "FACTORS", "RECIPE_FACTORS", "register_regularizer",
           "unregister_regularizer"]


def _check_factor(name, value):
    check_number(name, value, low=0)  # NaN and inf refused there ("must be a finite number")
    return float(value)


@register
class L1(keras.regularizers.Regularizer):
    """L1 penalty ``l1 * sum(|w|)``.

    Args:
        l1: non-negative factor.
    """

    def __init__(self, l1=0.01):
        self.l1 = _check_factor("l1", l1)

    def __call__(self, x):
        return ops.cast(self.l1, x.dtype) * ops.sum(ops.abs(x))

    def get_config(self):
        return {"l1": self.l1}

    def __repr__(self):
        return f"L1(l1={self.l1:g})"


@register
class L2(keras.regularizers.Regularizer):
    """L2 penalty ``l2 * sum(w**2)`` (gradient ``2 * l2 * w``).

    Factor convention: PyTorch weight decay ``λ`` (gradient ``λ * w``) is ``L2(λ / 2)``.

    Args:
        l2: non-negative factor.
    """

    def __init__(self, l2=0.01):
        self.l2 = _check_factor("l2", l2)

    def __call__(self, x):
        return ops.cast(self.l2, x.dtype) * ops.sum(ops.square(x))

    def get_config(self):
        return {"l2": self.l2}

    def __repr__(self):
        return f"L2(l2={self.l2:g})"


@register
class ElasticNet(keras.regularizers.Regularizer):
    """Elastic net ``l1 * sum(|w|) + l2 * sum(w**2)`` (same convention as :class:`L1`/:class:`L2`).

    Args:
        l1: non-negative L1 factor.
        l2: non-negative L2 factor.
    """

    def __init__(self, l1=0.01, l2=0.01):
        self.l1 = _check_factor("l1", l1)
        self.l2 = _check_factor("l2", l2)

    def __call__(self, x):
        return ops.cast(self.l1, x.dtype) * ops.sum(ops.abs(x)) + ops.cast(
            self.l2, x.dtype
        ) * ops.sum(ops.square(x))

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}

    def __repr__(self):
        return f"ElasticNet(l1={self.l1:g}, l2={self.l2:g})"


def _check_regularizer_class(cls) -> None:
    if not (isinstance(cls, type) and issubclass(cls, keras.regularizers.Regularizer)):
        raise ValueError("Argument `cls` must be a keras.regularizers.Regularizer subclass. "
                         + received("cls", cls))


#: String table of the regularizer family (``regularizer="l2"``): the one list of penalty
#: kinds (a recipe's ``regularization.kind``, besides ``"none"``; the CLI help; :func:`get`).
#: ``"l1_l2"`` is an alias of ``"elastic_net"`` (Keras' name), accepted by :func:`get` but not
#: a recipe choice. Add to it with :func:`register_regularizer`.
REGULARIZERS = Registry(
    "regularizer", {"l1": L1, "l2": L2, "elastic_net": ElasticNet},
    aliases={"l1_l2": "elastic_net"},
    reserved={"none": "For no regularizer, pass None."},
    check=_check_regularizer_class)

#: The factors of a recipe's ``[regularization]`` section (``regularization.l1`` / ``.l2``).
RECIPE_FACTORS = ("l1", "l2")

#: Name of :data:`REGULARIZERS` -> the recipe factors its constructor takes (as keyword
#: arguments of the same names); filled by :func:`register_regularizer` with the table. A recipe
#: with that kind needs each of them > 0 and refuses the others.
FACTORS = {"l1": ("l1",), "l2": ("l2",), "elastic_net": ("l1", "l2")}


def register_regularizer(name: str, cls, *, factors):
    """Add the penalty kind ``name`` to :data:`REGULARIZERS` (and to the recipes'
    ``regularization.kind``).

    Args:
        name: the new name (:data:`keras_normreg._registry.NAME_RULE`: lower-case snake case),
            not already in the table.
        cls: a ``keras.regularizers.Regularizer`` subclass; :func:`get` makes it without
            arguments, a recipe with ``cls.from_config({factor: value, ...})`` for each of
            ``factors``.
        factors: the recipe factors its constructor takes, a non-empty subset of
            :data:`RECIPE_FACTORS` (``("l2",)``, ``("l1", "l2")`` ...).

    Returns:
        ``cls``, unchanged.
    """
    if (not isinstance(factors, (tuple, list)) or not factors
            or not all(isinstance(f, str) and f in RECIPE_FACTORS for f in factors)
            or len(set(factors)) != len(factors)):
        raise ValueError(f"Argument `factors` must be a non-empty tuple of distinct names from "
                         f"{RECIPE_FACTORS}. {received('factors', factors)}")
    REGULARIZERS.register(name, cls)
    FACTORS[name] = tuple(factors)
    return cls


def unregister_regularizer(name: str) -> None:
    """Remove a name added by :func:`register_regularizer` (built-in ones stay)."""
    REGULARIZERS.unregister(name)
    FACTORS.pop(name, None)


def get(identifier):
    """Resolve a regularizer from a name, a spec dict, a class, an instance or a config dict.

    * None -> None;
    * a name from :data:`REGULARIZERS` (``"l1"``, ``"l2"``, ``"elastic_net"``/``"l1_l2"``) or a
      class -> a default instance (factor 0.01, as in Keras);
    * a spec dict ``{"l2": 1e-4}``, ``{"l1": 1e-5}`` or ``{"l1": 1e-5, "l2": 1e-4}`` ->
      ``L2`` / ``L1`` / ``ElasticNet``;
    * a serialized dict ``{"class_name": ..., "config": {...}}`` -> the deserialized object;
    * an instance (any callable, e.g. a Keras regularizer) -> itself.
    """
    if isinstance(identifier, dict) and "class_name" not in identifier:
        keys = set(identifier)
        if not keys or not keys <= {"l1", "l2"}:
            raise ValueError(
                "A regularizer spec dict takes the keys 'l1' and/or 'l2' (e.g. {'l2': 1e-4}) or "
                "is a serialized {'class_name': ..., 'config': ...}. "
                + received("identifier", identifier)
            )
        if keys == {"l1", "l2"}:
            return ElasticNet(l1=identifier["l1"], l2=identifier["l2"])
        if keys == {"l1"}:
            return L1(identifier["l1"])
        return L2(identifier["l2"])
    return get_from_table(REGULARIZERS, identifier, keras.regularizers.Regularizer,
                          keras.regularizers.get)


class Entry(NamedTuple):
    """One row of a :class:`RegularizationReport`."""

    path: str
    applied: bool
    reason: str


class RegularizationReport(list):
    """List of :class:`Entry` ``(path, applied, reason)`` returned by :func:`apply`.

    Printing it gives a table; ``.applied`` / ``.skipped`` list the paths of each kind.
    """

    @property
    def applied(self):
        return [e.path for e in self if e.applied]

    @property
    def skipped(self):
        return [e.path for e in self if not e.applied]

    def __str__(self):
        if not self:
            return "RegularizationReport([])"
        width = max(len(e.path) for e in self)
        lines = [f"{'variable':<{width}}  applied  reason"]
        for e in self:
            lines.append(f"{e.path:<{width}}  {'yes' if e.applied else 'no':<7}  {e.reason}")
        return "\n".join(lines)

    __repr__ = __str__


def _check_skip(value):
    if value == "auto" or isinstance(value, bool):
        return "auto" if value is True else value
    raise ValueError(
        "Argument `skip_scale_invariant` must be 'auto' (or True) or False. "
        + received("skip_scale_invariant", value)
    )


def apply(model, regularizer, targets=("kernel",), include=None, exclude=None,
          skip_scale_invariant="auto"):
    """Regularize the selected weights of a built model, by rule.

    Args:
        model: a built Keras model or layer. ``"auto"`` needs a functional or Sequential model
            (nested ones included) to read the graph; on a subclassed model it warns and only
            skips ``WeightNormalization`` directions.
        regularizer: anything :func:`get` accepts (``L2(1e-4)``, ``"l2"``, ``{"l2": 1e-4}``);
            None removes the regularizer from the selected weights.
        targets: what to regularize, selectors of :mod:`keras_normreg.selectors` (a list is
            their union): roles ``"kernel"``, ``"depthwise_kernel"``, ``"bias"``, ``"gamma"``,
            ``"beta"``, ``"embeddings"``, ``"all"``; keywords ``"normalization"``, ``"1d"``;
            layer classes or class names (``"Conv2D"``); ``"glob:<pattern>"`` /
            ``"regex:<pattern>"`` on the variable path.
        include: only these (the same selectors; a bare glob such as ``"block1_*/kernel"`` is
            still matched against the variable path and the layer name).
        exclude: never these (same forms as ``include``).
        skip_scale_invariant: ``"auto"`` (default) leaves alone the weights that
            :func:`keras_normreg.invariance.find_scale_invariant` proves scale-invariant
            (L2 there only changes the effective learning rate, not the function); False
            regularizes them anyway.

    For each selected weight the layer attribute ``<target>_regularizer`` is set (so it is in
    ``get_config()`` and survives ``.keras`` save/load) and ``variable.regularizer`` is set (Keras
    3 ``Layer.losses`` reads it). A previously compiled model re-traces its train function on the
    next ``fit``. Frozen (non-trainable) weights are reported and left alone.

    Returns:
        :class:`RegularizationReport`: one ``(path, applied, reason)`` per selected weight.
    """

    _targeting.check_built(model, "regularizers.apply")
    regularizer = get(regularizer)
    targets = selectors.parse_targets(targets)
    include = selectors.parse_filter(include, "include")
    exclude = selectors.parse_filter(exclude, "exclude")
    skip = _check_skip(skip_scale_invariant)

    pairs = _targeting.layer_variables(model)
    chosen = selectors.select(pairs, targets, include, exclude, name_prefix="regularizers.apply: ")
    if not chosen:
        what = selectors.describe(targets)
        raise ValueError(
            f"regularizer targets {what} but the model has no weight of that kind"
            + (" matching include/exclude" if include is not None or exclude is not None else "")
            + f" (variables: {[v.path for _, v in pairs][:12]}). " + received("targets", targets)
        )
    analysis = {}
    if skip == "auto" and regularizer is not None:
        if isinstance(model, keras.Model) and not _invariance.is_graph_model(model):
            warnings.warn(
                f"regularizers.apply: skip_scale_invariant='auto' cannot read the graph of "
                f"{type(model).__name__} {model.name!r} (not a functional or Sequential model); "
                "only WeightNormalization directions are skipped. Pass "
                "skip_scale_invariant=False to silence this, or exclude= the invariant kernels.",
                stacklevel=2,
            )
        analysis = _invariance.verdicts(model, variables=[v for _, v in chosen])

    report = RegularizationReport()
    for layer, variable in chosen:
        path = variable.path
        if not variable.trainable or not layer.trainable:
            report.append(Entry(path, False, "not trainable (frozen): left alone"))
            continue
        verdict = analysis.get(id(variable))
        if verdict is not None and verdict.invariant:
            report.append(Entry(path, False, f"skipped, scale-invariant: {verdict.reason}"))
            continue
        where = _targeting.attribute_name(layer, variable, "regularizer")
        if where is not None:
            setattr(where[0], where[1], regularizer)
        variable.regularizer = regularizer
        if regularizer is None:
            reason = "regularizer removed"
        else:
            reason = f"{regularizer!r}"
            if verdict is not None and verdict.reason:
                reason += f"; {verdict.reason}"
        if where is None:
            reason += (f" (set on the variable only: {type(layer).__name__} has no "
                       "regularizer attribute for it, so it is not saved in the model config)")
        report.append(Entry(path, regularizer is not None, reason))
    _targeting.reset_compiled_functions(model)
    return report
