"""TOML configuration: recipes (one per trained model) validated against a schema.

A recipe is a TOML file with the sections of :data:`RECIPE_SCHEMA`. Loading it

* rejects unknown keys and wrong types with the dotted key path in the message,
* fills every default, so the *resolved* config is complete,
* applies ``--set section.key=value`` overrides (values parsed as TOML literals),

and :func:`dump` writes the resolved config back out (it is written next to every result).

Values are checked one by one (type, range, choices; every number representable in float32,
the training dtype) and then as a whole (:func:`check_recipe`): keys that make sense only
together (a step schedule's boundaries and the epochs, warmup and training length, the
regularization kind and its factors ...) are refused with all of them named, and so is a
non-default value of a key that the rest of the recipe ignores (``regularization.l2`` with
``kind = "none"``, ``schedule.boundaries`` with a cosine schedule ...): a setting never drops
silently. ``name`` is an entry name (:data:`NAME_RULE`: one folder name, since
``<train.output_dir>/<name>/`` and ``runs/<name>/`` are made of it), and the folder keys are
refused when given if they are empty or hold a NUL or control character (:func:`path_problem`);
``data.data_dir``, a folder that is read, also if a file is in the way (:func:`folder_problem`;
``train.output_dir`` gets that check, writability included, from
:func:`keras_normreg.saving.check_destination` before training starts).

The choices of ``model.norm``, ``model.constraint``, ``regularization.kind``,
``optimizer.name``, ``optimizer.decay_semantics``, ``optimizer.scale_invariant`` and
``train.strategy`` are not listed here: they are read, at validation time, from the family that
implements them (:func:`keras_normreg.layers.normalization_names`,
:data:`keras_normreg.constraints.CONSTRAINTS`, :data:`keras_normreg.regularizers.REGULARIZERS`
(and its :data:`~keras_normreg.regularizers.FACTORS`), :data:`keras_normreg.optimizers.RECIPES`,
:data:`keras_normreg.optimizers.SEMANTICS`, :data:`keras_normreg.optimizers.SCALE_INVARIANT_NAMES`,
:func:`keras_normreg.distribute.check_strategy`), so a name registered there is accepted here.

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
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

import numpy as np
import tomli_w

from keras_normreg import constraints as nr_constraints
from keras_normreg import distribute
from keras_normreg import layers as nr_layers
from keras_normreg import optimizers as nr_optimizers
from keras_normreg import regularizers as nr_regularizers
from keras_normreg.zoo import _model as zoo_model
from keras_normreg.zoo import registry as zoo_registry

__all__ = [
    "ConfigError",
    "FLOAT32_MAX",
    "Field",
    "NAME_MAX_LENGTH",
    "NAME_RULE",
    "RECIPE_SCHEMA",
    "check_name",
    "check_recipe",
    "choice_fields",
    "drop_none",
    "dump",
    "dumps",
    "float32_problem",
    "folder_problem",
    "load_recipe",
    "name_problem",
    "parse_overrides",
    "path_problem",
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


def _fraction(v):
    return None if 0 <= v <= 1 else "must be in [0, 1]"


def _seed(v):
    return None if 0 <= v <= 2**32 - 1 else "must be in [0, 2**32 - 1] (a NumPy/Keras seed)"


def _boundaries(v):
    if any(b <= 0 for b in v):
        return "must hold epochs > 0"
    if any(a >= b for a, b in zip(v, v[1:], strict=False)):
        return "must be strictly increasing"
    return None


# -- names that become paths ------------------------------------------------------------------
NAME_MAX_LENGTH = 100
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: The rule every entry and study name follows (they become folder names: ``<output_dir>/<name>``,
#: ``runs/<name>``, ``<directory>/<study>``, ``<export_dir>/<export_name>``): ONE path component
#: of ASCII letters, digits, ``_``, ``.`` and ``-``, starting with a letter or a digit (so never
#: empty, ``.``, ``..``, hidden, or holding a separator, a NUL or a control character), at most
#: :data:`NAME_MAX_LENGTH` characters.
NAME_RULE = (f"must be one folder name: a letter or digit, then letters, digits, '_', '.' or "
             f"'-' (at most {NAME_MAX_LENGTH} characters; no '/', no leading '.')")


def name_problem(value) -> str | None:
    """What is wrong with ``value`` as an entry or study name (:data:`NAME_RULE`), or None."""
    if (not isinstance(value, str) or len(value) > NAME_MAX_LENGTH
            or not _NAME_PATTERN.fullmatch(value)):
        return NAME_RULE
    return None


def check_name(value, key: str = "name", *, argument: bool = False) -> str:
    """Return ``value`` if it is a valid entry/study name, else raise :class:`ConfigError`
    naming ``key`` (a config key, or with ``argument=True`` a function argument)."""
    problem = name_problem(value)
    if problem:
        what = f"Argument `{key}`" if argument else f"Config key '{key}'"
        raise ConfigError(f"{what} {problem}. Received: {key}={value!r}")
    return value


def path_problem(path) -> str | None:
    """What is wrong with the text of ``path`` as a folder path, or None: not a string, empty
    (``os.path.join("", name)`` would silently mean the current folder), or holding a NUL or
    a control character (which ``os`` refuses with a bare ValueError)."""
    if not isinstance(path, (str, os.PathLike)):
        return "must be a folder path"
    path = os.fspath(path)
    if not path:
        return 'must not be empty (use "." for the current folder)'
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "must not contain NUL or control characters"
    return None


def folder_problem(path) -> str | None:
    """What is wrong with ``path`` as a folder to read (or create), or None:
    :func:`path_problem`, or an existing file at the path or at one of its parents (checked on
    the file system now). Folders that are *written* (``train.output_dir``, a study's
    ``output.directory``) get only :func:`path_problem` from the schema: whether they can be
    written, a file in the way included, is checked before anything runs by
    :func:`keras_normreg.saving.check_destination`, with its own message."""
    problem = path_problem(path)
    if problem:
        return problem
    path = os.fspath(path)
    head = os.path.abspath(path)
    while not os.path.lexists(head):
        parent = os.path.dirname(head)
        if parent == head:
            return None
        head = parent
    if not os.path.isdir(head):
        where = "it" if head == os.path.abspath(path) else repr(head)
        return f"must be a folder, but {where} is a file"
    return None


def _folder(v):
    return folder_problem(v)


def _path(v):
    return path_problem(v)


def _classifier_activation(v):
    try:
        zoo_model.check_classifier_activation(v)
    except ValueError:
        return "must be 'linear' (logits), 'softmax' or another Keras activation name"
    return None


SCHEDULES = ("constant", "cosine", "step")


def _constraint_choices() -> tuple[str, ...]:
    return ("none", *nr_constraints.CONSTRAINTS)


def _regularizer_choices() -> tuple[str, ...]:
    return ("none", *nr_regularizers.REGULARIZERS.names())


def _optimizer_choices() -> tuple[str, ...]:
    return tuple(nr_optimizers.RECIPES)


RECIPE_SCHEMA: dict[str, Any] = {
    "name": Field(str, _REQUIRED, check=name_problem,
                  doc="entry name, one folder name ([A-Za-z0-9][A-Za-z0-9._-]*); "
                      "saved_models/<name>/"),
    "description": Field(str, "", doc="free text copied to the model card"),
    "model": {
        "arch": Field(str, _REQUIRED, doc="zoo model name (keras-normreg list)"),
        "norm": Field(str, None, choices=nr_layers.normalization_names,
                      doc="normalization choice (default: the zoo model's own: 'batch' for "
                          "the CNNs, the transformers' choice of 'layer' / 'none' for nGPT)"),
        "constraint": Field(str, "none", choices=_constraint_choices, doc="weight constraint"),
        "constraint_value": Field(float, 1.0, check=_positive, doc="max_norm / fixed_norm value"),
        "dropout": Field(float, 0.0, check=_unit_interval, doc="dropout rate where the arch has it"),
        "overrides": Field(dict, {}, doc="extra keyword arguments for zoo.create"),
        "classifier_activation": Field(str, None, check=_classifier_activation,
                                       doc="what the head outputs: unset or 'linear' logits "
                                           "(default), 'softmax' probabilities (zoo.create's "
                                           "argument; the loss's from_logits follows it)"),
    },
    "data": {
        "dataset": Field(str, _REQUIRED, doc="dataset name (keras-normreg list)"),
        "data_dir": Field(str, None, check=_folder, doc="tfds data_dir (default: tfds' default)"),
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
        "kind": Field(str, "none", choices=_regularizer_choices, doc="penalty"),
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
        "decay_semantics": Field(str, "lr", choices=nr_optimizers.SEMANTICS,
                                 doc="decay multiplied by lr / schedule multiplier / lr^2/max_lr"),
        "exclude": Field(list, ["bias", "normalization"], item_type=str,
                         doc="decay exclusion rules (they add up)"),
        "scale_invariant": Field(str, "none", choices=nr_optimizers.SCALE_INVARIANT_NAMES,
                                 doc="treatment of scale-invariant weights"),
        "clipnorm": Field(float, None, check=_positive, doc="gradient clipping by norm"),
    },
    "schedule": {
        "kind": Field(str, "cosine", choices=SCHEDULES, doc="learning-rate schedule"),
        "warmup_epochs": Field(float, 0.0, check=_non_negative, doc="linear warmup length"),
        "boundaries": Field(list, [], item_type=float, check=_boundaries,
                            doc="step: epochs where lr drops (increasing, > 0, < train.epochs)"),
        "factor": Field(float, 0.1, check=_positive, doc="step: multiplier at each boundary"),
        "final_fraction": Field(float, 0.0, check=_fraction, doc="cosine: final lr / peak"),
    },
    "train": {
        "epochs": Field(int, 30, check=_positive, doc="epochs"),
        "seed": Field(int, 42, check=_seed, doc="random seed (weights, shuffling)"),
        "mixed_precision": Field(bool, False, doc="mixed_float16 (GPU) / mixed_bfloat16 (TPU)"),
        "jit_compile": Field((bool, str), "auto", check=_jit_compile,
                             doc='XLA: "auto" (Keras\' rule: on for JAX, off on CPU-only '
                                 'TensorFlow and on PyTorch), true or false'),
        "strategy": Field(str, "auto", check=distribute.check_strategy,
                          doc="tf.distribute strategy: " + distribute.STRATEGIES_HELP),
        "output_dir": Field(str, "saved_models", check=_path,
                            doc="where saved_models/<name>/ goes"),
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


FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4028235e38


def float32_problem(value: float) -> str | None:
    """What goes wrong with ``value`` in float32 (the training dtype: learning rates, decay
    factors and penalties become float32 variables), or None: it overflows to inf, or a
    non-zero value underflows to 0."""
    with np.errstate(over="ignore", under="ignore"):
        as32 = np.float32(value)
    if not np.isfinite(as32):
        return f"must be representable in float32, the training dtype (|x| <= {FLOAT32_MAX:.8g})"
    if value != 0 and as32 == 0:
        return ("must be representable in float32, the training dtype (it rounds to 0: use 0 "
                f"or a magnitude >= {float(np.finfo(np.float32).smallest_subnormal):.3g})")
    return None


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
    if expected is float:
        problem = float32_problem(value)
        if problem:
            raise ConfigError(f"Config key '{path}' {problem}. Received: {path}={value!r}")
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
    """Validate ``raw`` against ``schema`` (default: the recipe schema) and fill defaults; a
    recipe is then checked as a whole (:func:`check_recipe`)."""
    schema = RECIPE_SCHEMA if schema is None else schema
    out = _resolve(raw, schema, "")
    if schema is RECIPE_SCHEMA:
        fill_model_defaults(out)
        check_recipe(out)
    return out


def fill_model_defaults(cfg: dict) -> dict:
    """Fill ``model.norm`` left unset with the zoo entry's default normalization
    (``zoo.get_spec(arch).default_norm``: ``"batch"`` for the CNN families; ``None`` for the
    transformers, whose builder picks ``"layer"``, or ``"none"`` with ``ngpt``). An unknown
    ``arch`` is left for training to report. Returns ``cfg``."""
    model = cfg.get("model", {})
    if model.get("norm") is None and model.get("arch") in zoo_registry.list_models():
        model["norm"] = zoo_registry.get_spec(model["arch"]).default_norm
    return cfg


def _whole_error(message: str, prefix: str, **values) -> ConfigError:
    shown = ", ".join(f"{prefix}{k.replace('__', '.')}={v!r}" for k, v in values.items())
    return ConfigError(f"{message}. Received: {shown}")


def _default(section: str, key: str):
    return RECIPE_SCHEMA[section][key].default


def check_recipe(cfg: Mapping, prefix: str = "") -> None:
    """Check the keys of a resolved recipe that make sense only together; raise
    :class:`ConfigError` naming every key involved, with its value (keys shown with
    ``prefix``: ``"base."`` for a study's base recipe). The rules:

    * ``schedule``: ``warmup_epochs <= train.epochs``; ``boundaries`` (strictly increasing
      epochs > 0, checked per key) all ``< train.epochs`` and at least one with
      ``kind = "step"``; the peak lr times ``factor`` at every boundary stays representable in
      float32 (not inf, not 0); ``boundaries``, a non-default ``factor`` or a warmup with
      another kind than the one that uses it (``step`` for the first two, ``cosine`` or
      ``constant`` for warmup; ``final_fraction`` != 0 only with ``cosine``) is an error: the
      schedule would ignore it.
    * ``regularization``: ``kind = "none"`` takes no ``l1``/``l2`` factor and no non-default
      ``targets``/``skip_scale_invariant``; a kind needs its factors > 0 and refuses the others
      (:data:`keras_normreg.regularizers.FACTORS`: ``l1``/``l2`` their own, ``elastic_net``
      both); a penalty needs a target.
    * ``optimizer``: a non-default ``decay_semantics`` needs ``weight_decay`` > 0.
    * ``model``: a non-default ``constraint_value`` needs a constraint that takes a value
      (``max_norm``, ``fixed_norm``: :data:`keras_normreg.constraints.VALUE_ARGUMENTS`).
    """
    sched, train, opt = cfg["schedule"], cfg["train"], cfg["optimizer"]
    reg, model = cfg["regularization"], cfg["model"]
    kind, epochs = sched["kind"], train["epochs"]
    p = prefix
    if sched["warmup_epochs"] > epochs:
        raise _whole_error(f"Config key '{p}schedule.warmup_epochs' must not exceed "
                           f"'{p}train.epochs' (the warmup would outlast the training)", p,
                           schedule__warmup_epochs=sched["warmup_epochs"], train__epochs=epochs)
    if kind != "step":
        for key in ("boundaries", "factor"):
            if sched[key] != _default("schedule", key):
                raise _whole_error(f"Config key '{p}schedule.{key}' is used only by "
                                   f"{p}schedule.kind='step'; remove it or change the kind", p,
                                   **{f"schedule__{key}": sched[key], "schedule__kind": kind})
    else:
        if not sched["boundaries"]:
            raise _whole_error(f"Config key '{p}schedule.boundaries' must list at least one "
                               f"epoch with {p}schedule.kind='step' (or use kind='constant')",
                               p, schedule__boundaries=sched["boundaries"], schedule__kind=kind)
        late = [b for b in sched["boundaries"] if b >= epochs]
        if late:
            raise _whole_error(f"Config key '{p}schedule.boundaries' must be < '{p}train.epochs'"
                               f" (a boundary at or after the end never applies: {late[0]!r})",
                               p, schedule__boundaries=sched["boundaries"],
                               train__epochs=epochs)
        if sched["warmup_epochs"]:
            raise _whole_error(f"Config key '{p}schedule.warmup_epochs' is not applied by "
                               f"{p}schedule.kind='step'; remove it or use kind='cosine' or "
                               f"'constant'", p, schedule__warmup_epochs=sched["warmup_epochs"],
                               schedule__kind=kind)
        lr, n = opt["learning_rate"], len(sched["boundaries"])
        try:  # factor > 0: the last value is the smallest or the largest
            last = lr * sched["factor"] ** n
        except OverflowError:
            last = math.inf
        problem = float32_problem(last) if last != 0 else "rounds to 0"
        if problem:
            raise _whole_error(
                f"Config keys '{p}optimizer.learning_rate', '{p}schedule.factor' and "
                f"'{p}schedule.boundaries' give a learning rate of lr * factor^{n} = {last!r} "
                f"after the last boundary, which is not representable in float32, the training "
                f"dtype", p, optimizer__learning_rate=lr, schedule__factor=sched["factor"],
                schedule__boundaries=sched["boundaries"])
    if kind != "cosine" and sched["final_fraction"] != _default("schedule", "final_fraction"):
        raise _whole_error(f"Config key '{p}schedule.final_fraction' is used only by "
                           f"{p}schedule.kind='cosine'; remove it or change the kind", p,
                           schedule__final_fraction=sched["final_fraction"], schedule__kind=kind)
    rkind = reg["kind"]
    if rkind == "none":
        for key in (*nr_regularizers.RECIPE_FACTORS, "targets", "skip_scale_invariant"):
            if reg[key] != _default("regularization", key):
                kinds = ", ".join(nr_regularizers.REGULARIZERS.names())
                raise _whole_error(
                    f"Config key '{p}regularization.{key}' is ignored with "
                    f"{p}regularization.kind='none'; set the kind ({kinds}) or "
                    f"remove it", p, **{f"regularization__{key}": reg[key],
                                        "regularization__kind": rkind})
    else:
        needs = nr_regularizers.FACTORS[rkind]
        for key in nr_regularizers.RECIPE_FACTORS:
            value = reg[key]
            if key in needs and value == 0:
                raise _whole_error(
                    f"Config key '{p}regularization.{key}' must be > 0 with "
                    f"{p}regularization.kind={rkind!r} (a penalty of nothing; use kind='none')",
                    p, **{f"regularization__{key}": value, "regularization__kind": rkind})
            if key not in needs and value != 0:
                # the kinds that take this factor as well as the current kind's
                takers = [k for k, f in nr_regularizers.FACTORS.items()
                          if {*needs, key} <= set(f)]
                use = " or ".join(f"kind={k!r}" for k in takers)
                raise _whole_error(
                    f"Config key '{p}regularization.{key}' is ignored with "
                    f"{p}regularization.kind={rkind!r}; remove it"
                    + (f" or use {use}" if use else ""),
                    p, **{f"regularization__{key}": value, "regularization__kind": rkind})
        if not reg["targets"]:
            raise _whole_error(f"Config key '{p}regularization.targets' must name at least one "
                               f"kind of weight with {p}regularization.kind={rkind!r}", p,
                               regularization__targets=reg["targets"],
                               regularization__kind=rkind)
    if opt["weight_decay"] == 0 and \
            opt["decay_semantics"] != _default("optimizer", "decay_semantics"):
        raise _whole_error(f"Config key '{p}optimizer.decay_semantics' is ignored with "
                           f"{p}optimizer.weight_decay=0; set the decay or remove it", p,
                           optimizer__decay_semantics=opt["decay_semantics"],
                           optimizer__weight_decay=opt["weight_decay"])
    if model["constraint_value"] != _default("model", "constraint_value") and \
            nr_constraints.VALUE_ARGUMENTS.get(model["constraint"]) is None:
        takes = sorted(nr_constraints.VALUE_ARGUMENTS)
        raise _whole_error(f"Config key '{p}model.constraint_value' is ignored with "
                           f"{p}model.constraint={model['constraint']!r} (only {takes} take a "
                           f"value); remove it or change the constraint", p,
                           model__constraint_value=model["constraint_value"],
                           model__constraint=model["constraint"])


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
