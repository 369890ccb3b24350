"""Optimizers: decoupled weight decay for any Keras optimizer, SGDP/AdamP, sphere mode.

* :class:`DecoupledWeightDecay` wraps any Keras optimizer (SGD, Adam, RMSprop, Lion, Adagrad,
  ...) and adds decoupled weight decay with three semantics (``"lr"``, ``"schedule"``,
  ``"corrected"``), its own decay schedule, additive selection rules, and a treatment of
  scale-invariant weights (``"exclude"`` or ``"sphere"``, resolved by ``bind(model)``).
* :func:`SGDW`, :func:`AdamW`, :func:`LionW`, :func:`RMSpropW`: ready-made wrappers.
* :class:`SGDP`, :class:`AdamP`: Heo et al. (2021) radial projection for scale-invariant weights.
* :func:`normalized_weight_decay`: λ = λ_norm·sqrt(b / (B·T)) (Loshchilov & Hutter).
* :func:`get`: the string table of this family.
* :data:`RECIPES`: the optimizer names of a recipe's ``[optimizer]`` section (``sgd``, ``adam``,
  ``rmsprop``, ``lion``, ``sgdw``, ``adamw``, ``sgdp``, ``adamp``), each with the function that
  builds it from that section; :func:`from_recipe`, :func:`register_recipe`.

Every formula, including whether the decay is multiplied by the learning rate, is in the
docstring of each object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import keras

from keras_normreg._utils import received, unregister_choice
from keras_normreg.optimizers import _rules
from keras_normreg.optimizers._rules import KEYWORDS as RULE_KEYWORDS
from keras_normreg.optimizers._sphere import norms as sphere_norms
from keras_normreg.optimizers.decoupled import (
    DEFAULT_EXCLUDE,
    SEMANTICS,
    SGDW,
    AdamW,
    DecoupledWeightDecay,
    LionW,
    RMSpropW,
    normalized_weight_decay,
)
from keras_normreg.optimizers.projection import SGDP, AdamP, project_radial

OPTIMIZERS = {
    "sgdw": SGDW,
    "adamw": AdamW,
    "lionw": LionW,
    "rmspropw": RMSpropW,
    "sgdp": SGDP,
    "adamp": AdamP,
}


def get(identifier, **kwargs):
    """Resolve an optimizer of this family (or any Keras optimizer).

    ``identifier`` may be a name of :data:`OPTIMIZERS` (``"sgdw"``, ``"adamw"``, ``"lionw"``,
    ``"rmspropw"``, ``"sgdp"``, ``"adamp"``; ``kwargs`` go to its constructor), a Keras
    optimizer name (``"sgd"``, ``"adam"``, ...; ``kwargs`` go to ``keras.optimizers``), an
    optimizer class (instantiated with ``kwargs``), an instance (returned as is) or a config
    dict (deserialized).
    """
    if isinstance(identifier, keras.optimizers.Optimizer):
        if kwargs:
            raise ValueError(
                "Keyword arguments cannot be applied to an optimizer instance. "
                f"{received('kwargs', kwargs)}"
            )
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, keras.optimizers.Optimizer):
        return identifier(**kwargs)
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in OPTIMIZERS:
            return OPTIMIZERS[key](**kwargs)
        try:
            optimizer = keras.optimizers.get(key)
        except ValueError:
            optimizer = None
        if optimizer is not None:
            return optimizer.__class__(**kwargs) if kwargs else optimizer
    raise ValueError(
        f"Argument `identifier` must be one of {sorted(OPTIMIZERS)}, a Keras optimizer name, "
        f"class, instance or config dict. {received('identifier', identifier)}"
    )



# ----------------------------------------------------------------------------- recipe table
def _clip(o: Mapping) -> dict:
    return {} if o["clipnorm"] is None else {"clipnorm": o["clipnorm"]}


def _keras(name: str, make: Callable):
    """A plain Keras optimizer: ``weight_decay`` must be 0 (decay is the decoupled family's)."""
    def build(o: Mapping, learning_rate, model=None):
        if o["weight_decay"]:
            raise ValueError(
                f"optimizer.name={name!r} is a plain Keras optimizer: use 'sgdw' or 'adamw' for "
                f"weight decay (or 'regularization' for a coupled L2 penalty). "
                f"Received: optimizer.weight_decay={o['weight_decay']!r}")
        return make(o, learning_rate)
    build.__name__ = build.__qualname__ = f"build_{name}"
    return build


def _sgd(o: Mapping, learning_rate):
    return keras.optimizers.SGD(learning_rate, momentum=o["momentum"], nesterov=o["nesterov"],
                                **_clip(o))


def _adam(o: Mapping, learning_rate):
    return keras.optimizers.Adam(learning_rate, beta_1=o["momentum"], **_clip(o))


def _rmsprop(o: Mapping, learning_rate):
    return keras.optimizers.RMSprop(learning_rate, momentum=o["momentum"], **_clip(o))


def _lion(o: Mapping, learning_rate):
    return keras.optimizers.Lion(learning_rate, beta_1=o["momentum"], **_clip(o))


def _decoupled(name: str, make_inner: Callable):
    """:class:`DecoupledWeightDecay` around ``make_inner``'s Keras optimizer; the
    scale-invariant treatment (``exclude`` / ``sphere``) is bound to ``model``."""
    def build(o: Mapping, learning_rate, model=None):
        inner = make_inner(o, learning_rate)
        si = None if o["scale_invariant"] == "none" else o["scale_invariant"]
        opt = DecoupledWeightDecay(
            inner, weight_decay=o["weight_decay"], semantics=o["decay_semantics"],
            max_learning_rate=o["learning_rate"], base_learning_rate=o["learning_rate"],
            exclude=tuple(o["exclude"]), scale_invariant=si)
        if si is not None:
            if model is None:
                raise ValueError("optimizer.scale_invariant needs the model to find the "
                                 "scale-invariant weights. Received: model=None")
            opt.bind(model)
        return opt
    build.__name__ = build.__qualname__ = f"build_{name}"
    return build


def _sgdp(o: Mapping, learning_rate, model=None):
    return SGDP(learning_rate, momentum=o["momentum"], nesterov=o["nesterov"],
                weight_decay=o["weight_decay"], **_clip(o))


def _adamp(o: Mapping, learning_rate, model=None):
    return AdamP(learning_rate, beta_1=o["momentum"], weight_decay=o["weight_decay"], **_clip(o))


#: Recipe optimizer name -> ``build(section, learning_rate, model=None)``, which makes the
#: optimizer from a resolved ``[optimizer]`` section (see :mod:`keras_normreg.config`) and a
#: learning rate or schedule. The one list of ``optimizer.name`` choices: recipes, the CLI
#: help and ``train.build_optimizer`` read it. Add to it with :func:`register_recipe`.
RECIPES: dict[str, Callable] = {
    "sgd": _keras("sgd", _sgd),
    "adam": _keras("adam", _adam),
    "rmsprop": _keras("rmsprop", _rmsprop),
    "lion": _keras("lion", _lion),
    "sgdw": _decoupled("sgdw", _sgd),
    "adamw": _decoupled("adamw", _adam),
    "sgdp": _sgdp,
    "adamp": _adamp,
}
_BUILTIN_RECIPES = frozenset(RECIPES)


def register_recipe(name: str, build: Callable):
    """Add the recipe optimizer name ``name`` to :data:`RECIPES`.

    Args:
        name: the new ``optimizer.name``, an identifier not already in the table.
        build: ``build(section, learning_rate, model=None) -> keras.optimizers.Optimizer``;
            ``section`` is the resolved ``[optimizer]`` table (``momentum``, ``weight_decay``,
            ``clipnorm`` ...), ``learning_rate`` a number or a schedule, ``model`` the model
            (for optimizers that bind to its weights) or None.

    Returns:
        ``build``, unchanged.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError("Argument `name` must be an identifier (letters, digits, _). "
                         f"{received('name', name)}")
    if name in RECIPES:
        raise ValueError(f"Optimizer {name!r} is already a recipe name ({list(RECIPES)}). "
                         f"{received('name', name)}")
    if not callable(build):
        raise ValueError("Argument `build` must be a callable "
                         f"build(section, learning_rate, model=None). {received('build', build)}")
    RECIPES[name] = build
    return build


def unregister_recipe(name: str) -> None:
    """Remove a name added by :func:`register_recipe` (built-in ones stay)."""
    unregister_choice("Optimizer", RECIPES, _BUILTIN_RECIPES, name)


def from_recipe(section: Mapping, learning_rate=None, model=None):
    """The optimizer of a resolved ``[optimizer]`` section, built by its :data:`RECIPES` entry.

    ``learning_rate`` (a number or a schedule) defaults to ``section["learning_rate"]``;
    ``model`` is needed by ``sgdw``/``adamw`` with ``scale_invariant`` other than ``"none"``.
    """
    name = section["name"]
    if not isinstance(name, str) or name not in RECIPES:
        raise ValueError(f"Unknown optimizer. Valid names: {list(RECIPES)}. "
                         f"{received('optimizer.name', name)}")
    if learning_rate is None:
        learning_rate = section["learning_rate"]
    return RECIPES[name](section, learning_rate, model)


__all__ = [
    "DEFAULT_EXCLUDE",
    "OPTIMIZERS",
    "RECIPES",
    "RULE_KEYWORDS",
    "SEMANTICS",
    "AdamP",
    "AdamW",
    "DecoupledWeightDecay",
    "LionW",
    "RMSpropW",
    "SGDP",
    "SGDW",
    "from_recipe",
    "get",
    "normalized_weight_decay",
    "project_radial",
    "register_recipe",
    "sphere_norms",
    "unregister_recipe",
    "_rules",
]
