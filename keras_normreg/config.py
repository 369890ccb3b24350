"""TOML configuration: recipes (one per trained model) validated against a schema.

A recipe is a TOML file with the sections of :data:`RECIPE_SCHEMA`. Loading it

* rejects unknown keys and wrong types with the dotted key path in the message,
* fills every default, so the *resolved* config is complete,
* applies ``--set section.key=value`` overrides (values parsed as TOML literals),

and :func:`dump` writes the resolved config back out (it is written next to every result).

The choices of ``model.norm``, ``model.constraint``, ``optimizer.name`` and ``train.strategy``
are not listed here: they are read, at validation time, from the table of each family
(:func:`keras_normreg.layers.normalization_names`, :data:`keras_normreg.constraints.CONSTRAINTS`,
:data:`keras_normreg.optimizers.RECIPES`, :func:`keras_normreg.distribute.check_strategy`), so a
name registered there is accepted here.

Example::

    name = "mnist1d_cnn_batch"
    [model]
    arch = "cnn1d"
    norm = "batch"
    [data]
    dataset = "mnist1d"
    [optimizer]
    name = "sgdw"
    learning_rate = 0.1
    weight_decay = 5e-4
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

import tomli_w

from keras_normreg import constraints as nr_constraints
from keras_normreg import distribute
from keras_normreg import layers as nr_layers
from keras_normreg import optimizers as nr_optimizers

__all__ = [
    "ConfigError",
    "Field",
    "RECIPE_SCHEMA",
    "choice_fields",
    "drop_none",
    "dump",
    "dumps",
    "load_recipe",
    "parse_overrides",
    "resolve",
]

_REQUIRED = object()


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One key of a schema section.

    Args:
        type: a Python type or tuple of types the value must have (``float`` also accepts ints).
        default: the value filled in when the key is absent; ``_REQUIRED`` makes the key mandatory;
            ``None`` means "unset" (TOML has no null: an unset key is simply left out when dumped).
        choices: allowed values, if restricted: a sequence, or a callable returning one (read
            at each validation, so a choice registered in a family's table later is accepted).
        check: extra validation, ``check(value) -> error message or None``.
        item_type: for lists, the type of each element.
        doc: a one-line description of the key (documentation; also quoted in the error for a
            missing required key).
    """

    type: Any
    default: Any = _REQUIRED
    choices: Sequence | None = None
    check: Callable[[Any], str | None] | None = None
    item_type: Any = None
    doc: str = ""

    def valid_choices(self) -> tuple | None:
        """The allowed values now (None: not restricted)."""
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)


def _positive(v):
    return None if v > 0 else "must be > 0"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def _unit_interval(v):
    return None if 0 <= v < 1 else "must be in [0, 1)"


def _jit_compile(v):
    return None if v in (True, False) or v == "auto" else 'must be true, false or "auto"'


SCHEDULES = ("constant", "cosine", "step")


def _constraint_choices() -> tuple[str, ...]:
    return ("none", *nr_constraints.CONSTRAINTS)


def _optimizer_choices() -> tuple[str, ...]:
    return tuple(nr_optimizers.RECIPES)


RECIPE_SCHEMA: dict[str, Any] = {
    "name": Field(str, _REQUIRED, doc="entry name; saved_models/<name>/"),
    "description": Field(str, "", doc="free text copied to the model card"),
    "model": {
        "arch": Field(str, _REQUIRED, doc="zoo model name (keras-normreg list)"),
        "norm": Field(str, "batch", choices=nr_layers.normalization_names,
                      doc="normalization choice"),
        "constraint": Field(str, "none", choices=_constraint_choices, doc="weight constraint"),
        "constraint_value": Field(float, 1.0, check=_positive, doc="max_norm / fixed_norm value"),
        "dropout": Field(float, 0.0, check=_unit_interval, doc="dropout rate where the arch has it"),
        "overrides": Field(dict, {}, doc="extra keyword arguments for zoo.create"),
    },
    "data": {
        "dataset": Field(str, _REQUIRED, doc="dataset name (keras-normreg list)"),
        "data_dir": Field(str, None, doc="tfds data_dir (default: tfds' default)"),
        "batch_size": Field(int, 128, check=_positive, doc="GLOBAL batch size"),
        "augment": Field(bool, None, doc="default: the dataset's standard train augmentation"),
        "validation_split": Field(str, None, doc="e.g. 'train[90%:]'; default: none"),
        "train_split": Field(str, "train", doc="tfds split used for training"),
        "test_split": Field(str, "test", doc="tfds split used for evaluation"),
        "download": Field(bool, False, doc="allow tfds to download missing data"),
        "autotune": Field(bool, False, doc="tf.data autotuning (off: with it on, the end of a "
                          "fit stalled up to 5 s on CPU; see keras_normreg.data.pipelines)"),
    },
    "regularization": {
        "kind": Field(str, "none", choices=("none", "l1", "l2", "elastic_net"), doc="penalty"),
        "l1": Field(float, 0.0, check=_non_negative, doc="L1 factor (adds l1*sum|w|)"),
        "l2": Field(float, 0.0, check=_non_negative, doc="L2 factor (adds l2*sum w^2)"),
        "targets": Field(list, ["kernel"], item_type=str, doc="kernel, bias, gamma, beta, ..."),
        "skip_scale_invariant": Field(bool, True, doc="skip kernels that feed a normalization"),
    },
    "optimizer": {
        "name": Field(str, "sgdw", choices=_optimizer_choices, doc="optimizer"),
        "learning_rate": Field(float, 0.1, check=_positive, doc="peak learning rate"),
        "momentum": Field(float, 0.9, check=_unit_interval, doc="SGD momentum / Adam beta_1"),
        "nesterov": Field(bool, False, doc="Nesterov momentum (SGD family)"),
        "weight_decay": Field(float, 0.0, check=_non_negative, doc="decoupled decay λ"),
        "decay_semantics": Field(str, "lr", choices=("lr", "schedule", "corrected"),
                                 doc="decay multiplied by lr / schedule multiplier / lr^2/max_lr"),
        "exclude": Field(list, ["bias", "normalization"], item_type=str,
                         doc="decay exclusion rules (they add up)"),
        "scale_invariant": Field(str, "none", choices=("none", "exclude", "sphere"),
                                 doc="treatment of scale-invariant weights"),
        "clipnorm": Field(float, None, check=_positive, doc="gradient clipping by norm"),
    },
    "schedule": {
        "kind": Field(str, "cosine", choices=SCHEDULES, doc="learning-rate schedule"),
        "warmup_epochs": Field(float, 0.0, check=_non_negative, doc="linear warmup length"),
        "boundaries": Field(list, [], item_type=float, doc="step: epochs where lr drops"),
        "factor": Field(float, 0.1, check=_positive, doc="step: multiplier at each boundary"),
        "final_fraction": Field(float, 0.0, check=_non_negative, doc="cosine: final lr / peak"),
    },
    "train": {
        "epochs": Field(int, 30, check=_positive, doc="epochs"),
        "seed": Field(int, 42, doc="random seed (weights, shuffling)"),
        "mixed_precision": Field(bool, False, doc="mixed_float16 (GPU) / mixed_bfloat16 (TPU)"),
        "jit_compile": Field((bool, str), "auto", check=_jit_compile,
                             doc='XLA: "auto" (Keras\' rule: on for JAX, off on CPU-only '
                                 'TensorFlow and on PyTorch), true or false'),
        "strategy": Field(str, "auto", check=distribute.check_strategy,
                          doc="tf.distribute strategy: " + distribute.STRATEGIES_HELP),
        "output_dir": Field(str, "saved_models", doc="where saved_models/<name>/ goes"),
        "verbose": Field(int, 1, choices=(0, 1, 2), doc="Keras fit verbosity"),
    },
}


def choice_fields(schema: Mapping | None = None, prefix: str = "") -> dict[str, tuple]:
    """Dotted key -> its allowed values now, for every key of ``schema`` (default: the recipe
    schema) restricted to a set of choices (``{"model.norm": ("none", "batch", ...), ...}``)."""
    out: dict[str, tuple] = {}
    for key, spec in (RECIPE_SCHEMA if schema is None else schema).items():
        if isinstance(spec, Mapping):
            out.update(choice_fields(spec, f"{prefix}{key}."))
        elif spec.choices is not None:
            out[prefix + key] = spec.valid_choices()
    return out


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list: "a list", dict: "a table"}.get(t, getattr(t, "__name__", str(t)))


def _check_type(path: str, value, field: Field):
    expected = field.type
    ok: bool
    if expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(
            f"Config key '{path}' must be {_type_name(expected)}. Received: {path}={value!r}"
        )
    if expected is float and not math.isfinite(value):  # TOML has inf and nan literals
        raise ConfigError(f"Config key '{path}' must be a finite number. Received: {path}={value}")
    if expected is list and field.item_type is not None:
        items = []
        for i, item in enumerate(value):
            sub = Field(field.item_type)
            items.append(_check_type(f"{path}[{i}]", item, sub))
        value = items
    choices = field.valid_choices()
    if choices is not None and value not in choices:
        raise ConfigError(
            f"Config key '{path}' must be one of {list(choices)}. "
            f"Received: {path}={value!r}"
        )
    if field.check is not None:
        msg = field.check(value)
        if msg:
            raise ConfigError(f"Config key '{path}' {msg}. Received: {path}={value!r}")
    return value


def _resolve(raw: Mapping, schema: Mapping, prefix: str) -> dict:
    if not isinstance(raw, Mapping):
        where = prefix.rstrip(".") or "<root>"
        raise ConfigError(f"Config section '{where}' must be a table. Received: {where}={raw!r}")
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        path = prefix + unknown[0]
        valid = ", ".join(sorted(schema))
        raise ConfigError(
            f"Unknown config key '{path}'. Valid keys"
            f"{' in [' + prefix.rstrip('.') + ']' if prefix else ''}: {valid}. "
            f"Received: {path}={raw[unknown[0]]!r}"
        )
    out: dict = {}
    for key, spec in schema.items():
        path = prefix + key
        if isinstance(spec, Mapping):
            out[key] = _resolve(raw.get(key, {}), spec, path + ".")
            continue
        if key in raw:
            out[key] = _check_type(path, raw[key], spec)
        elif spec.default is _REQUIRED:
            raise ConfigError(f"Missing required config key '{path}' ({spec.doc}).")
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


def resolve(raw: Mapping, schema: Mapping | None = None) -> dict:
    """Validate ``raw`` against ``schema`` (default: the recipe schema) and fill defaults."""
    return _resolve(raw, RECIPE_SCHEMA if schema is None else schema, "")


def parse_overrides(items: Sequence[str]) -> dict:
    """Turn ``["optimizer.learning_rate=0.05", "model.norm=l1_batch"]`` into a nested dict.

    Values are parsed as TOML literals (``0.05``, ``true``, ``["a", "b"]``); anything that is not
    a valid TOML literal is taken as a plain string.
    """
    nested: dict = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"An override must look like 'section.key=value'. Received: {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"An override key must be a dotted path. Received: {item!r}")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Override {item!r} conflicts with another override.")
        node[parts[-1]] = value
    return nested


def merge(base: Mapping, extra: Mapping) -> dict:
    """Deep copy of ``base`` with ``extra`` merged in (nested tables merged key by key)."""
    out = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_toml(path: str | os.PathLike) -> dict:
    """Read a TOML file with errors naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file not found. Received: path={path!r}")
    with open(path, "rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from e


def load_recipe(path: str | os.PathLike, overrides: Sequence[str] = (),
                schema: Mapping | None = None) -> dict:
    """Load a recipe TOML, apply ``--set`` overrides, validate and fill defaults."""
    raw = read_toml(path)
    if overrides:
        raw = merge(raw, parse_overrides(overrides))
    try:
        return resolve(raw, schema)
    except ConfigError as e:
        raise ConfigError(f"{os.fspath(path)}: {e}") from None


def drop_none(d):
    """A copy of ``d`` without its ``None`` values, nested dicts (and dicts in lists) included:
    TOML has no null, so an unset key is left out (and :func:`resolve` fills it back in)."""
    if isinstance(d, Mapping):
        return {k: drop_none(v) for k, v in d.items() if v is not None}
    if isinstance(d, list):
        return [drop_none(v) for v in d]
    return d


def dumps(config: Mapping) -> str:
    """The resolved config as TOML text (unset keys left out: TOML has no null)."""
    return tomli_w.dumps(drop_none(dict(config)))


def dump(config: Mapping, path: str | os.PathLike) -> None:
    """Write the resolved config to ``path`` as TOML."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps(config))
