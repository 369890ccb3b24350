"""Optimizers: decoupled weight decay for any Keras optimizer, SGDP/AdamP, sphere mode.

* :class:`DecoupledWeightDecay` wraps any Keras optimizer (SGD, Adam, RMSprop, Lion, Adagrad,
  ...) and adds decoupled weight decay with three semantics (``"lr"``, ``"schedule"``,
  ``"corrected"``), its own decay schedule, additive selection rules, and a treatment of
  scale-invariant weights (``"exclude"`` or ``"sphere"``, resolved by ``bind(model)``).
* :func:`SGDW`, :func:`AdamW`, :func:`LionW`, :func:`RMSpropW`: ready-made wrappers.
* :class:`SGDP`, :class:`AdamP`: Heo et al. (2021) radial projection for scale-invariant weights.
* :func:`normalized_weight_decay`: λ = λ_norm·sqrt(b / (B·T)) (Loshchilov & Hutter).
* :data:`TABLE`: the one optimizer table, name -> :class:`OptimizerEntry` (how :func:`get`
  makes it, how a recipe builds it); :func:`register_optimizer`, :func:`register_recipe`.
* :func:`get`: an optimizer by name (:data:`OPTIMIZERS`, the names of the table that ``get``
  makes, then Keras' own names), class, instance or config dict.
* :data:`RECIPES`: the optimizer names of a recipe's ``[optimizer]`` section (``sgd``, ``adam``,
  ``rmsprop``, ``lion``, ``sgdw``, ``adamw``, ``sgdp``, ``adamp``), each with the function that
  builds it from that section (the names of the table with a ``build``); :func:`from_recipe`.

Every formula, including whether the decay is multiplied by the learning rate, is in the
docstring of each object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import keras

from keras_normreg._registry import UNKNOWN_SHORT, Registry
from keras_normreg._utils import received
from keras_normreg.optimizers import _rules
from keras_normreg.optimizers._rules import KEYWORDS as RULE_KEYWORDS
from keras_normreg.optimizers._sphere import norms as sphere_norms
from keras_normreg.optimizers.decoupled import (
    DEFAULT_EXCLUDE,
    SCALE_INVARIANT_NAMES,
    SEMANTICS,
    SGDW,
    AdamW,
    DecoupledWeightDecay,
    LionW,
    RMSpropW,
    normalized_weight_decay,
)
from keras_normreg.optimizers.projection import SGDP, AdamP, project_radial


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
        key = identifier.lower()  # as keras.optimizers.get: names in any case
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


# ----------------------------------------------------------------------------- the table
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


class OptimizerEntry(NamedTuple):
    """One name of the optimizer table :data:`TABLE`.

    ``make``: ``make(**kwargs)``, what :func:`get` calls for the name (None: Keras' own name,
    which :func:`get` passes to ``keras.optimizers.get``). ``build``:
    ``build(section, learning_rate, model=None)``, what makes the optimizer of a recipe with
    this ``optimizer.name`` (None: not a recipe name).
    """

    make: Callable | None = None
    build: Callable | None = None


def _check_entry(entry) -> None:
    if not isinstance(entry, OptimizerEntry):
        raise ValueError("An optimizer table entry must be an OptimizerEntry(make, build). "
                         f"{received('entry', entry)}")
    if entry.make is None and entry.build is None:
        raise ValueError("Give `make` (for optimizers.get) or `build` (for recipes), or both. "
                         f"{received('make', entry.make)}")
    if entry.make is not None and not callable(entry.make):
        raise ValueError("Argument `make` must be a callable make(**kwargs) returning an "
                         f"optimizer. {received('make', entry.make)}")
    if entry.build is not None and not callable(entry.build):
        raise ValueError("Argument `build` must be a callable build(section, learning_rate, "
                         f"model=None). {received('build', entry.build)}")


#: The optimizer table: every optimizer name of the package -> :class:`OptimizerEntry`
#: (how :func:`get` makes it, how a recipe builds it). :data:`OPTIMIZERS` and :data:`RECIPES`
#: are read from it. Add to it with :func:`register_optimizer` / :func:`register_recipe`.
TABLE = Registry(
    "optimizer",
    {
        "sgd": OptimizerEntry(None, _keras("sgd", _sgd)),
        "adam": OptimizerEntry(None, _keras("adam", _adam)),
        "rmsprop": OptimizerEntry(None, _keras("rmsprop", _rmsprop)),
        "lion": OptimizerEntry(None, _keras("lion", _lion)),
        "sgdw": OptimizerEntry(SGDW, _decoupled("sgdw", _sgd)),
        "adamw": OptimizerEntry(AdamW, _decoupled("adamw", _adam)),
        "lionw": OptimizerEntry(LionW),
        "rmspropw": OptimizerEntry(RMSpropW),
        "sgdp": OptimizerEntry(SGDP, _sgdp),
        "adamp": OptimizerEntry(AdamP, _adamp),
    },
    noun=lambda entry: "recipe name" if entry is not None and entry.build else "name",
    check=_check_entry, message=UNKNOWN_SHORT, sort_names=False)

#: The optimizers of this family by name (``"sgdw"``, ``"adamw"``, ``"lionw"``, ``"rmspropw"``,
#: ``"sgdp"``, ``"adamp"``) -> the callable :func:`get` calls: the names of :data:`TABLE` with a
#: ``make`` (a read-only view of it).
OPTIMIZERS = TABLE.view(lambda entry: entry.make)

#: Recipe optimizer name -> ``build(section, learning_rate, model=None)``, which makes the
#: optimizer from a resolved ``[optimizer]`` section (see :mod:`keras_normreg.config`) and a
#: learning rate or schedule: the names of :data:`TABLE` with a ``build`` (a read-only view of
#: it), the one list of ``optimizer.name`` choices (recipes, the CLI help and
#: ``train.build_optimizer`` read it). Add to it with :func:`register_recipe`.
RECIPES = TABLE.view(lambda entry: entry.build)


def register_optimizer(name: str, make: Callable | None = None, build: Callable | None = None):
    """Add the optimizer name ``name`` to :data:`TABLE`.

    Args:
        name: the new name (:data:`keras_normreg._registry.NAME_RULE`: lower-case snake case),
            not already in the table.
        make: ``make(**kwargs) -> keras.optimizers.Optimizer``, for :func:`get` (None: ``get``
            does not know the name).
        build: ``build(section, learning_rate, model=None) -> keras.optimizers.Optimizer``, for
            recipes (see :func:`register_recipe`; None: not a recipe name).

    Returns:
        the :class:`OptimizerEntry` added.
    """
    return TABLE.register(name, OptimizerEntry(make, build))


def register_recipe(name: str, build: Callable):
    """Add the recipe optimizer name ``name`` (to :data:`TABLE`, hence :data:`RECIPES`).

    Args:
        name: the new ``optimizer.name`` (lower-case snake case), not already in the table.
        build: ``build(section, learning_rate, model=None) -> keras.optimizers.Optimizer``;
            ``section`` is the resolved ``[optimizer]`` table (``momentum``, ``weight_decay``,
            ``clipnorm`` ...), ``learning_rate`` a number or a schedule, ``model`` the model
            (for optimizers that bind to its weights) or None.

    Returns:
        ``build``, unchanged.
    """
    TABLE.register(name, OptimizerEntry(None, build))
    return build


def unregister_optimizer(name: str) -> None:
    """Remove a name added by :func:`register_optimizer` or :func:`register_recipe` (built-in
    ones stay)."""
    TABLE.unregister(name)


#: The same as :func:`unregister_optimizer` (the name of the recipe side).
unregister_recipe = unregister_optimizer


def from_recipe(section: Mapping, learning_rate=None, model=None):
    """The optimizer of a resolved ``[optimizer]`` section, built by its :data:`RECIPES` entry.

    ``learning_rate`` (a number or a schedule) defaults to ``section["learning_rate"]``;
    ``model`` is needed by ``sgdw``/``adamw`` with ``scale_invariant`` other than ``"none"``.
    """
    build = RECIPES.get(section["name"], "optimizer.name")
    if learning_rate is None:
        learning_rate = section["learning_rate"]
    return build(section, learning_rate, model)


__all__ = [
    "DEFAULT_EXCLUDE",
    "OPTIMIZERS",
    "OptimizerEntry",
    "RECIPES",
    "RULE_KEYWORDS",
    "SCALE_INVARIANT_NAMES",
    "SEMANTICS",
    "AdamP",
    "AdamW",
    "DecoupledWeightDecay",
    "LionW",
    "RMSpropW",
    "SGDP",
    "SGDW",
    "TABLE",
    "from_recipe",
    "get",
    "normalized_weight_decay",
    "project_radial",
    "register_optimizer",
    "register_recipe",
    "sphere_norms",
    "unregister_optimizer",
    "unregister_recipe",
    "_rules",
]
