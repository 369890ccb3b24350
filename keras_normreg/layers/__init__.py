"""Normalization layers and the normalization table.

* :class:`L1BatchNormalization`, :class:`TopKBatchNormalization`: batch normalization with the
  L1 / top-k dispersion of Hoffer et al. 2018 (drop-in for ``keras.layers.BatchNormalization``).
* :class:`FusedBatchNormalization`: ``keras.layers.BatchNormalization`` running TensorFlow's
  fused kernel in training (the table's ``"batch"``; the same layer elsewhere).
* :class:`WeightNormalization`: weight-normalization wrapper for Dense / Conv / DepthwiseConv
  (trainable gain, or fixed gain = "bounded weight norm").
* :class:`AutoGroupNormalization`: ``keras.layers.GroupNormalization`` whose number of groups
  is picked from the channel count at build time.
* The normalization table, the one list of normalization choices (recipes, CLI help, tuning
  spaces and the model zoo all read it): ``NORMALIZATIONS`` (name -> class, ``None`` for
  "none") and :func:`get_normalization`; ``WEIGHT_NORMS``: the names of the weight-normalization
  choices, which wrap a layer instead of inserting one (handled by the model zoo with
  :class:`WeightNormalization`); :func:`normalization_names` (both);
  :func:`register_normalization` / :func:`unregister_normalization` to add a choice.
  ``NORMALIZATIONS`` is a :class:`keras_normreg._registry.Registry`, the one table helper of
  the package (names in lower-case snake case).
"""

from __future__ import annotations

import keras

from keras_normreg._registry import UNKNOWN_SHORT, Registry
from keras_normreg._utils import check_number, received, register
from keras_normreg.layers._base import DispersionBatchNormalization
from keras_normreg.layers.fused_batch_norm import FusedBatchNormalization
from keras_normreg.layers.l1_batch_norm import L1BatchNormalization
from keras_normreg.layers.topk_batch_norm import TopKBatchNormalization, topk_scale
from keras_normreg.layers.weight_normalization import WeightNormalization

#: Default upper bound on the number of groups of AutoGroupNormalization.
MAX_GROUPS = 32


def auto_groups(channels: int, max_groups: int = MAX_GROUPS) -> int:
    """Largest divisor of ``channels`` that is <= min(max_groups, channels)."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


@register
class AutoGroupNormalization(keras.layers.GroupNormalization):
    """``keras.layers.GroupNormalization`` with ``groups`` chosen from the channel count.

    With ``groups=None`` (default) the layer uses, at build time, the largest divisor of the
    number of channels ``C`` that is ``<= min(32, C)`` (e.g. C=64 -> 32, C=48 -> 24,
    C=10 -> 10, C=100 -> 25). An integer ``groups`` behaves exactly like Keras (``-1`` =
    instance normalization). As with Keras' ``groups=-1``, ``self.groups`` holds the resolved
    value after build, so the config of a built layer records the number actually used.
    All other arguments are those of ``keras.layers.GroupNormalization``.
    """

    def __init__(self, groups=None, axis=-1, **kwargs):
        if groups is not None and groups != -1:
            check_number("groups", groups, low=1, integer=True)
        super().__init__(groups=MAX_GROUPS if groups is None else groups, axis=axis, **kwargs)
        self.groups = groups

    def build(self, input_shape):
        channels = input_shape[self.axis]
        if self.groups is None and channels is not None:
            self.groups = auto_groups(int(channels))
        super().build(input_shape)


def _check_layer_class(cls) -> None:
    if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
        raise ValueError("Argument `cls` must be a keras.layers.Layer subclass. "
                         f"{received('cls', cls)}")


#: Weight-normalization choices: the zoo wraps Dense/Conv layers in WeightNormalization
#: ("weight": trainable gain; "weight_fixed": fixed gain) instead of inserting a layer.
WEIGHT_NORMS = ("weight", "weight_fixed")

_WRAPPER_HINT = (f"{WEIGHT_NORMS} are not layers but wrappers of Dense/Conv layers: use "
                 "`keras_normreg.layers.WeightNormalization(layer, ...)`.")

#: The normalization table: name -> layer class (``None``: no normalization layer). The
#: names of :data:`WEIGHT_NORMS` are reserved in it (choices, but not layers).
NORMALIZATIONS = Registry(
    "normalization",
    {
        "none": None,
        # keras.layers.BatchNormalization, with TensorFlow's fused kernel in training
        "batch": FusedBatchNormalization,
        "l1_batch": L1BatchNormalization,
        "topk_batch": TopKBatchNormalization,
        "layer": keras.layers.LayerNormalization,
        "group": AutoGroupNormalization,
        # x / sqrt(mean(x^2) + eps) * scale over the last axis: LayerNormalization without
        # centering and without beta (Zhang & Sennrich 2019), channel-wise like "layer"
        "rms": keras.layers.RMSNormalization,
    },
    reserved=dict.fromkeys(WEIGHT_NORMS, _WRAPPER_HINT), noun="choice",
    check=_check_layer_class, message=UNKNOWN_SHORT)


def normalization_names() -> tuple[str, ...]:
    """Every normalization choice, in table order: the layer names of ``NORMALIZATIONS``
    (``"none"`` first; registered names after the built-in ones), then ``WEIGHT_NORMS``.

    This is what ``model.norm`` of a recipe, ``space.norms`` of a study and ``norm=`` of
    ``zoo.create`` accept as a string.
    """
    return (*NORMALIZATIONS, *WEIGHT_NORMS)


def register_normalization(name: str, cls):
    """Add the normalization choice ``name`` (a new layer inserted after conv/dense layers).

    Args:
        name: the new choice, following the name rule of every table
            (:data:`keras_normreg._registry.NAME_RULE`: lower-case snake case), not already a
            choice.
        cls: a ``keras.layers.Layer`` subclass; the zoo calls ``cls(name=..., **kwargs)``
            (e.g. ``axis=1`` for channels-first models), so its constructor must accept the
            usual Layer keyword arguments. Register it with Keras too
            (``keras.saving.register_keras_serializable``) for ``.keras`` files to load it.

    Returns:
        ``cls``, unchanged.

    Raises:
        ValueError: a name that breaks the rule or is already a choice, or a ``cls`` that is
            not a Layer subclass.
    """
    return NORMALIZATIONS.register(name, cls)


def unregister_normalization(name: str) -> None:
    """Remove a choice added by :func:`register_normalization` (built-in ones stay)."""
    NORMALIZATIONS.unregister(name)


def _short_name_class(class_name):
    """A Layer class from a bare class name: ours first, then ``keras.layers``."""
    for namespace in (globals(), vars(keras.layers)):
        cls = namespace.get(class_name)
        if isinstance(cls, type) and issubclass(cls, keras.layers.Layer):
            return cls
    return None


def get_normalization(identifier, **kwargs):
    """Resolve a normalization choice to a new layer (or ``None`` for no normalization).

    Args:
        identifier: one of

            * a name from ``NORMALIZATIONS`` (``"none"``, ``"batch"``, ``"l1_batch"``,
              ``"topk_batch"``, ``"layer"``, ``"group"``, ``"rms"`` and any name added with
              :func:`register_normalization`): a new layer built with ``kwargs``;
              ``"none"`` (and ``None``) give ``None``;
            * a ``keras.layers.Layer`` subclass: instantiated with ``kwargs``;
            * a layer instance: returned as is (``kwargs`` are ignored);
            * a Keras config dict (``{"class_name": ..., "config": {...}}``, as written by
              ``keras.saving.serialize_keras_object`` or ``layer.get_config`` wrapped in
              ``class_name``/``config``); ``class_name`` may also be a table name. ``kwargs``
              fill in the keys the dict's ``config`` does not set.
        **kwargs: constructor arguments (e.g. ``axis=1`` for channels-first models).

    Raises:
        ValueError: unknown name (the message lists the valid names), or an identifier of
            another type.
    """
    if identifier is None:
        return None
    if isinstance(identifier, str):
        factory = NORMALIZATIONS.get(identifier, "identifier")
        return None if factory is None else factory(**kwargs)
    if isinstance(identifier, keras.layers.Layer):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, keras.layers.Layer):
        return identifier(**kwargs)
    if isinstance(identifier, dict) and "class_name" in identifier:
        config = {**kwargs, **(identifier.get("config") or {})}
        class_name = identifier["class_name"]
        if class_name in NORMALIZATIONS:
            factory = NORMALIZATIONS[class_name]
            return None if factory is None else factory(**config)
        short_form = "module" not in identifier and "registered_name" not in identifier
        cls = _short_name_class(class_name) if short_form else None
        if cls is not None:
            layer = cls.from_config(config)
        else:
            layer = keras.saving.deserialize_keras_object({**identifier, "config": config})
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                "Argument `identifier` must describe a Keras layer. "
                f"{received('identifier', identifier)}"
            )
        return layer
    raise ValueError(
        "Argument `identifier` must be a normalization name, a keras Layer class, a layer "
        f"instance or a Keras config dict. {received('identifier', identifier)}"
    )


__all__ = [
    "AutoGroupNormalization",
    "DispersionBatchNormalization",
    "FusedBatchNormalization",
    "L1BatchNormalization",
    "NORMALIZATIONS",
    "TopKBatchNormalization",
    "WEIGHT_NORMS",
    "WeightNormalization",
    "auto_groups",
    "get_normalization",
    "normalization_names",
    "register_normalization",
    "topk_scale",
    "unregister_normalization",
]
