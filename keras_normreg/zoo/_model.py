"""The model class of the zoo: a functional ``keras.Model`` that knows what its head outputs.

Every zoo builder returns a :class:`ZooModel`. By default its head is a plain Dense and the model
returns **logits**; ``classifier_activation`` (keras.applications' argument, with the opposite
default) adds an activation after the head: ``"softmax"`` returns probabilities. A logits model
compiled with a loss that expects probabilities (``loss="sparse_categorical_crossentropy"``, or a
cross-entropy ``Loss`` with ``from_logits=False``) does not train, silently; :meth:`ZooModel.compile`
warns about it (:class:`LossMismatchWarning`, naming the fix), and about the opposite mistake, a
model with an output activation compiled with ``from_logits=True`` (the loss would apply its own
softmax / sigmoid on top of the model's).

``ZooModel`` is a functional model (built as ``ZooModel(inputs, outputs, name=...)``, no
constructor of its own), so its ``get_config`` is the functional config and ``.keras`` files
load it back with ``safe_mode=True``; what the head outputs is read from the graph (the
activation layer named :data:`HEAD_NAME`), so it round-trips with the layers.
"""

from __future__ import annotations

import inspect
import warnings

import keras

from keras_normreg._utils import register

__all__ = ["HEAD_NAME", "LossMismatchWarning", "ZooModel", "check_classifier_activation",
           "zoo_model"]

#: Name of the activation layer a head with ``classifier_activation`` ends in (as in
#: keras.applications).
HEAD_NAME = "predictions"
#: The values of ``classifier_activation`` that leave the head's logits as they are.
LOGITS = (None, "linear")


class LossMismatchWarning(UserWarning):
    """A zoo model was compiled with a loss that reads its outputs the wrong way (logits as
    probabilities, or probabilities as logits)."""


def check_classifier_activation(value):
    """Validate ``classifier_activation`` and return it normalized: None for logits (None or
    ``"linear"``), else the activation's name (any name ``keras.activations.get`` knows)."""
    what = ("Argument `classifier_activation` must be None or \"linear\" (the head returns "
            "logits), \"softmax\" (probabilities) or the name of another Keras activation")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what}. Received: classifier_activation={value!r}")
    if value == "linear":
        return None
    try:
        keras.activations.get(value)
    except ValueError:
        raise ValueError(f"{what}; {value!r} is not one. "
                         f"Received: classifier_activation={value!r}") from None
    return value


def zoo_model(inputs, logits, name: str, classifier_activation=None) -> ZooModel:
    """The :class:`ZooModel` from ``inputs`` to ``logits``, with the ``classifier_activation``
    layer (:data:`HEAD_NAME`) after them unless it is None / ``"linear"``.

    The activation runs in float32 whatever the dtype policy (probabilities of a float16 softmax
    are coarse and can round to 0 or 1), as Keras' mixed-precision guide advises."""
    activation = check_classifier_activation(classifier_activation)
    outputs = logits
    if activation is not None:
        outputs = keras.layers.Activation(activation, dtype="float32", name=HEAD_NAME)(logits)
    return ZooModel(inputs, outputs, name=name)


def _loss_name(loss) -> str:
    """A loss's class name, for the message (``"SparseCategoricalCrossentropy"``)."""
    if isinstance(loss, keras.losses.Loss):
        fn = getattr(loss, "fn", None)
        if type(loss).__name__ != "LossFunctionWrapper" or fn is None:
            return type(loss).__name__
        loss = fn
    words = getattr(loss, "__name__", "loss").split("_")
    return "".join(w[:1].upper() + w[1:] for w in words)


def _from_logits(loss):
    """``(from_logits, the loss resolved)`` for a loss that has a ``from_logits`` setting (a
    name, a ``Loss`` or a loss function), else ``(None, loss)``."""
    resolved = loss
    if isinstance(loss, str):
        try:
            resolved = keras.losses.get(loss)
        except (ValueError, TypeError):
            return None, loss  # compile() reports an unknown name itself
    if isinstance(resolved, keras.losses.Loss):
        value = getattr(resolved, "from_logits", None)
        if value is None:
            value = resolved.get_config().get("from_logits")
        return (value if isinstance(value, bool) else None), resolved
    if callable(resolved):
        try:
            parameter = inspect.signature(resolved).parameters.get("from_logits")
        except (TypeError, ValueError):
            return None, resolved
        if parameter is not None and isinstance(parameter.default, bool):
            return parameter.default, resolved
    return None, resolved


def _losses(loss) -> list:
    """The single losses of a ``compile(loss=...)`` value (a loss, a list or a dict of them)."""
    if isinstance(loss, dict):
        return [v for v in loss.values() if v is not None]
    if isinstance(loss, (list, tuple)):
        return [v for v in loss if v is not None]
    return [] if loss is None else [loss]


def loss_mismatch(classifier_activation, loss) -> str | None:
    """What is wrong with ``loss`` for a model whose head applies ``classifier_activation``
    (None: logits), or None when nothing is."""
    for single in _losses(loss):
        from_logits, resolved = _from_logits(single)
        if from_logits is None:
            continue
        shown = repr(single) if isinstance(single, str) else _loss_name(resolved)
        fixed = f"keras.losses.{_loss_name(resolved)}(from_logits=True)"
        if classifier_activation is None and not from_logits:
            activation = "sigmoid" if "binary" in _loss_name(resolved).lower() else "softmax"
            return (f"this model returns logits (classifier_activation=None: its head is a "
                    f"plain Dense), but loss={shown} expects probabilities (from_logits=False), "
                    f"so the model would not train. Compile with loss={fixed}, or build the "
                    f"model with classifier_activation=\"{activation}\".")
        if classifier_activation is not None and from_logits:
            return (f"this model applies classifier_activation=\"{classifier_activation}\" to "
                    f"its outputs, but loss={shown} has from_logits=True and applies its own "
                    f"softmax / sigmoid on top. Compile with from_logits=False, or build the "
                    f"model with classifier_activation=None (logits).")
    return None


@register
class ZooModel(keras.Model):
    """A functional model built by a zoo builder; :meth:`compile` checks the loss against the
    head (see the module docstring). Built as ``ZooModel(inputs, outputs, name=...)``."""

    @property
    def classifier_activation(self) -> str | None:
        """The activation the head applies to its logits (None: the model returns logits)."""
        for layer in self.layers:
            if layer.name == HEAD_NAME and isinstance(layer, keras.layers.Activation):
                return keras.activations.serialize(layer.activation)
        return None

    def compile(self, optimizer="rmsprop", loss=None, *args, **kwargs):
        """``keras.Model.compile``, after a :class:`LossMismatchWarning` when ``loss`` reads
        the outputs the wrong way (logits as probabilities or the reverse)."""
        problem = loss_mismatch(self.classifier_activation, loss)
        if problem:
            warnings.warn(f"Zoo model {self.name!r}: {problem}", LossMismatchWarning,
                          stacklevel=2)
        return super().compile(optimizer, loss, *args, **kwargs)

    def compile_from_config(self, config):
        """Compile a loaded model as it was saved (Keras' own version skips a model whose
        ``compile`` is overridden; this one's takes the same arguments as Keras')."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)  # its variables, as Keras does
