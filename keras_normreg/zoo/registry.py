"""The zoo's registry: ``create(name, ...)``, ``list_models()`` and ``register_model``.

Each architecture family has one generic builder (e.g. ``cnn1d.build_cnn1d``); the registered
entries (``resnet20``, ``cnn1d`` ...) are thin presets over it. ``create`` is the one entry point:
it checks the name and the overrides against the builder's signature, builds the model with the
normalization knob, then applies the regularization and constraint knobs by rule
(:func:`keras_normreg.regularizers.apply` / :func:`keras_normreg.constraints.attach`).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable, Mapping

import keras

from keras_normreg import constraints, regularizers
from keras_normreg._utils import received
from keras_normreg.zoo._blocks import check_norm
from keras_normreg.zoo._model import check_classifier_activation

__all__ = ["ModelSpec", "create", "get_spec", "list_models", "register_model"]

# Arguments every builder accepts and create() handles itself.
_COMMON = ("num_classes", "input_shape", "norm", "name", "classifier_activation")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    builder: Callable[..., keras.Model]
    defaults: Mapping
    input_shape: tuple
    num_classes: int
    description: str
    dataset: str | None
    slow: bool
    #: the ``norm`` that :func:`create` uses when none is given (None: the builder's own
    #: default, e.g. the transformer's pre-LN ``"layer"``, or ``"none"`` with ``ngpt=True``)
    default_norm: str | None = "batch"
    #: the normalization names this entry accepts (None: every name of the table, classes,
    #: instances and config dicts too)
    norms: tuple[str, ...] | None = None

    @property
    def options(self) -> list[str]:
        """The overrides ``create`` accepts for this entry (builder keyword arguments)."""
        params = inspect.signature(self.builder).parameters
        return sorted(p for p in params if p not in _COMMON)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, family: str, builder: Callable[..., keras.Model],
                   input_shape: tuple, num_classes: int = 10, description: str = "",
                   dataset: str | None = None, slow: bool = False,
                   default_norm: str | None = "batch", norms: tuple[str, ...] | None = None,
                   **defaults):
    """Register a preset ``name`` of ``builder`` and return a thin builder function for it.

    ``defaults`` are the preset's keyword arguments (e.g. ``depth=20``); ``input_shape`` and
    ``num_classes`` are the defaults used when ``create`` is called without them. ``slow`` marks
    big models that the fast test suite builds only at reduced size. ``default_norm`` is the
    ``norm`` of ``create(name)`` without one (``"batch"``; None: the builder's own default);
    ``norms``, when given, the only normalization names the entry accepts (``create`` refuses
    the others, and classes, instances and config dicts).
    """
    if name in _REGISTRY:
        raise ValueError(f"A zoo model named {name!r} is already registered. {received('name', name)}")
    params = inspect.signature(builder).parameters
    unknown = sorted(set(defaults) - set(params))
    if unknown:
        raise ValueError(f"Preset {name!r} sets {unknown}, which builder "
                         f"{builder.__name__} does not accept.")
    if norms is not None:
        norms = tuple(norms)
        if not norms or not all(isinstance(n, str) for n in norms):
            raise ValueError(f"Argument `norms` must be None or a non-empty sequence of "
                             f"normalization names. {received('norms', norms)}")
        if default_norm is not None and default_norm not in norms:
            raise ValueError(f"Argument `default_norm` must be one of norms={list(norms)}. "
                             f"{received('default_norm', default_norm)}")
    spec = ModelSpec(name, family, builder, dict(defaults), tuple(input_shape), num_classes,
                     description, dataset, slow, default_norm, norms)
    _REGISTRY[name] = spec

    def thin(**kwargs):
        return create(name, **kwargs)

    thin.__name__ = name
    thin.__qualname__ = name
    thin.__doc__ = f"{description}\n\nSame as ``zoo.create({name!r}, **kwargs)``; " \
                   f"overrides: {', '.join(spec.options)}."
    return thin


def list_models(family: str | None = None) -> list[str]:
    """Registered model names, sorted; optionally only one family."""
    if family is not None:
        families = sorted({s.family for s in _REGISTRY.values()})
        if family not in families:
            raise ValueError(f"Unknown zoo family. Valid families: {families}. "
                             f"{received('family', family)}")
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)


def get_spec(name: str) -> ModelSpec:
    if not isinstance(name, str) or name not in _REGISTRY:
        hint = ""
        if isinstance(name, str):
            close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
            hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"Unknown zoo model.{hint} Valid names: {list_models()}. "
                         f"{received('name', name)}")
    return _REGISTRY[name]


def create(name: str, *, num_classes: int | None = None, input_shape: tuple | None = None,
           norm=None, regularization=None, constraint=None, classifier_activation=None,
           **overrides) -> keras.Model:
    """Build zoo model ``name``.

    Args:
        name: a name from :func:`list_models`.
        num_classes: output units (default: the entry's).
        input_shape: input shape without the batch axis (default: the entry's).
        norm: None (the entry's ``spec.default_norm``: ``"batch"`` for the CNN families,
            pre-LN ``"layer"`` for the transformers), a name of the normalization table
            (:func:`keras_normreg.layers.normalization_names`: ``"none"``, ``"batch"``,
            ``"l1_batch"``, ``"topk_batch"``, ``"layer"``, ``"group"``, ``"rms"``, the names
            added with :func:`keras_normreg.layers.register_normalization`, ``"weight"``
            (WeightNormalization on every conv/dense), ``"weight_fixed"`` (bounded weight norm:
            g fixed)), or a normalization layer class, instance or config dict (cloned for each
            use). Entries with ``spec.norms`` (the transformers: ``"layer"``, ``"rms"``,
            ``"none"``) accept only those names.
        regularization: ``None``, a regularizer (``regularizers.L2(1e-4)``), a name, or a spec
            dict such as ``{"l2": 1e-4}``; applied to kernels with ``skip_scale_invariant="auto"``
            unless the spec dict also gives ``targets`` / ``skip_scale_invariant``.
        constraint: ``None``, a name of :data:`keras_normreg.constraints.CONSTRAINTS`
            (``"unit_norm"``, ``"max_norm"``, ``"fixed_norm"``, ``"non_neg"``, registered ones)
            or a constraint; attached to every kernel with axes inferred per layer kind.
        classifier_activation: what the head outputs (keras.applications' argument, with the
            opposite default): None or ``"linear"`` (default) the logits of the Dense head,
            ``"softmax"`` probabilities, or any other Keras activation name applied after the
            head. The model is a :class:`~keras_normreg.zoo.ZooModel`, whose ``compile`` warns
            (:class:`~keras_normreg.zoo.LossMismatchWarning`) when the loss reads its outputs
            the wrong way (``loss="sparse_categorical_crossentropy"`` on logits).
        **overrides: the builder's own options (``spec.options``), e.g. ``width=2``.
    """
    spec = get_spec(name)
    valid = spec.options
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"Unknown override(s) {unknown} for zoo model {name!r}. "
                         f"Valid overrides: {valid}. Received: {unknown[0]}={overrides[unknown[0]]!r}")
    if num_classes is None:
        num_classes = spec.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"Argument `num_classes` must be a positive integer. "
                         f"{received('num_classes', num_classes)}")
    if input_shape is None:
        input_shape = spec.input_shape
    if not isinstance(input_shape, (tuple, list)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape):
        raise ValueError(f"Argument `input_shape` must be a tuple of positive integers (no batch "
                         f"axis). {received('input_shape', input_shape)}")
    classifier_activation = check_classifier_activation(classifier_activation)
    if norm is None:
        norm = spec.default_norm
    check_norm(norm)
    if spec.norms is not None and norm is not None and norm not in spec.norms:
        raise ValueError(f"Normalization {norm!r} is not available for zoo model {name!r} "
                         f"(family {spec.family!r}); valid names: {list(spec.norms)}. "
                         f"Received: norm={norm!r}")
    kwargs = {**spec.defaults, **overrides}
    if "classifier_activation" in inspect.signature(spec.builder).parameters:
        kwargs["classifier_activation"] = classifier_activation
    elif classifier_activation is not None:  # a builder registered from outside the package
        raise ValueError(f"Zoo model {name!r} (builder {spec.builder.__name__}) has no "
                         f"`classifier_activation` argument: it returns what its builder "
                         f"returns. Received: classifier_activation={classifier_activation!r}")
    model = spec.builder(num_classes=num_classes, input_shape=tuple(input_shape), norm=norm,
                         name=name, **kwargs)
    if constraint is not None:
        c = constraints.get(constraint)
        try:
            constraints.attach(model, c, targets=("kernel", "depthwise_kernel"))
        except ValueError as e:
            raise ValueError(f"Constraint {constraint!r} cannot be used with zoo model {name!r} "
                             f"(norm={norm!r}): {e}") from None
    if regularization is not None:
        opts = {}
        reg = regularization
        if isinstance(regularization, Mapping) and (
                "targets" in regularization or "skip_scale_invariant" in regularization):
            reg = {k: v for k, v in regularization.items()
                   if k not in ("targets", "skip_scale_invariant")}
            opts = {k: regularization[k] for k in ("targets", "skip_scale_invariant")
                    if k in regularization}
        opts.setdefault("targets", ("kernel",))
        opts.setdefault("skip_scale_invariant", "auto")
        regularizers.apply(model, regularizers.get(reg), **opts)
    return model
