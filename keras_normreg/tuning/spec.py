"""Study specs: one TOML file per search (``tuning/<study>.toml``), validated against a schema.

A study is a *base* recipe (the sections of a zoo recipe: model, data, optimizer, schedule,
train) that every trial fills in with a point of the search space, plus how to search::

    name = "mnist1d_lambda_norm"          # runs/tuning/<name>/, saved_models/<name>_best/
    description = "..."
    strategy = "auto"                     # tf.distribute strategy of each trial (single-worker)

    [base.model]                          # a partial recipe (see zoo/*.toml)
    arch = "cnn1d"
    [base.data]
    dataset = "mnist1d"                   # default split: train[:90%] / validation train[90%:]
    [base.train]
    epochs = 15

    [space]                               # keras_normreg.tuning.space
    norms = ["none", "batch"]
    decay = ["none", "decoupled"]         # l2 | decoupled | unit_norm | none
    lambda = [1e-4, 1e-3]                 # number, list, or {min, max, sampling, step}
    parametrization = "independent"       # or "product": sample eta_lambda and learning_rate

    [tuner]
    kind = "grid"                         # random | bayesian | hyperband | grid
    [budget]
    max_trials = 8                        # hyperband: max_epochs instead
    [objective]
    name = "val_accuracy"
    [distributed]
    worker_timeout = 600                  # s a worker may stay silent (chief/worker studies)
    [output]
    directory = "runs/tuning"

Unknown keys are rejected with their dotted path; keys the search space sets (``base.model.norm``,
``base.optimizer.name`` / ``weight_decay`` / ``scale_invariant``, ``base.regularization``, and
``base.optimizer.learning_rate`` when ``space.learning_rate`` is given) are rejected too, as is
``base.train.strategy`` (use the top-level ``strategy``).

This module does not import TensorFlow.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from keras_normreg import config as nr_config
from keras_normreg import distribute
from keras_normreg.config import ConfigError, Field
from keras_normreg.tuning import space as nr_space

__all__ = ["STUDY_SCHEMA", "TUNERS", "OBJECTIVES", "load_study", "resolve_study",
           "study_budget", "study_to_toml", "project_dir", "with_worker_timeout"]

TUNERS = ("random", "bayesian", "hyperband", "grid")
OBJECTIVES = {"val_accuracy": "max", "val_loss": "min", "accuracy": "max", "loss": "min"}
REQUIRED = nr_config._REQUIRED
EXPORT_SUFFIX = "_best"  # the default export name: <name>_best
#: A study name leaves room for the names derived from it (<name>_trial_<trial id>, the
#: trials' recipe names; <name>_best) within config.NAME_MAX_LENGTH.
STUDY_NAME_MAX_LENGTH = 64


def _name(v):
    """A study or export name becomes a folder name (``<directory>/<name>``,
    ``<export_dir>/<export_name>``): :data:`keras_normreg.config.NAME_RULE`."""
    return None if nr_config.name_problem(v) is None else \
        "must be a file-name-safe identifier (" + nr_config.NAME_RULE[len("must be "):] + ")"


def _path(v):  # written folders: whether they can be written is run_study's check
    return nr_config.path_problem(v)


def _strategy(v):
    if v == "multiworker":
        return ("cannot be 'multiworker': keras-tuner runs each trial under a single-worker "
                "strategy (spread trials over machines with --role/--oracle instead)")
    return distribute.check_strategy(v)


def _at_least(n):
    def check(v):
        return None if v >= n else f"must be >= {n}"
    return check


def _positive_seconds(v):
    return None if math.isfinite(v) and v > 0 else "must be a positive, finite number of seconds"


BASE_SCHEMA = {k: v for k, v in nr_config.RECIPE_SCHEMA.items() if k not in ("name",
                                                                             "description")}

STUDY_SCHEMA: dict[str, Any] = {
    "name": Field(str, REQUIRED, check=_name, doc="study name: runs/tuning/<name>/"),
    "description": Field(str, "", doc="free text (leaderboard, model card)"),
    "strategy": Field(str, "auto", check=_strategy, doc="tf.distribute strategy of each trial"),
    "base": BASE_SCHEMA,
    "space": Field(dict, {}, doc="search space (keras_normreg.tuning.space)"),
    "tuner": {
        "kind": Field(str, "random", choices=TUNERS, doc="random | bayesian | hyperband | grid"),
        "seed": Field(int, 1, doc="oracle seed"),
        "num_initial_points": Field(int, None, check=_at_least(1),
                                    doc="bayesian: random points first (default 3 x dims)"),
        "factor": Field(int, 3, check=_at_least(2), doc="hyperband: reduction factor"),
        "hyperband_iterations": Field(int, 1, check=_at_least(1), doc="hyperband sweeps"),
        "max_retries_per_trial": Field(int, 0, check=_at_least(0), doc="retries of a crash"),
        "max_consecutive_failed_trials": Field(int, 3, check=_at_least(1),
                                               doc="stop after this many failures in a row"),
    },
    "budget": {
        "max_trials": Field(int, 10, check=_at_least(1),
                            doc="trials (random, bayesian; grid: at most)"),
        "max_epochs": Field(int, None, check=_at_least(1),
                            doc="hyperband: epochs of the longest trial (default base.train.epochs)"),
        "executions_per_trial": Field(int, 1, check=_at_least(1),
                                      doc="trainings per trial (seeds seed, seed+1, ...)"),
    },
    "objective": {
        "name": Field(str, "val_accuracy", choices=tuple(OBJECTIVES),
                      doc="metric the tuner optimizes"),
        "direction": Field(str, None, choices=("max", "min"), doc="default: from the name"),
    },
    "distributed": {
        "worker_timeout": Field(float, 600.0, check=_positive_seconds,
                                doc="seconds a worker may stay silent before the chief hands "
                                    "its trial to another worker"),
    },
    "output": {
        "directory": Field(str, os.path.join("runs", "tuning"), check=_path,
                           doc="keras-tuner directory: <directory>/<name>/"),
        "export": Field(bool, True, doc="export the best trial's model with a card"),
        "export_dir": Field(str, "saved_models", check=_path,
                            doc="<export_dir>/<export_name>/"),
        "export_name": Field(str, None, check=_name, doc="default <name>_best"),
        "top": Field(int, 10, check=_at_least(1), doc="leaderboard rows printed"),
    },
}

# keys of the base recipe that the search space sets
_CONTROLLED = {
    ("model", "norm"): "space.norms",
    ("optimizer", "name"): "space.decay and space.optimizer",
    ("optimizer", "weight_decay"): "space.decay and space.lambda",
    ("optimizer", "scale_invariant"): "space.decay (unit_norm)",
    ("optimizer", "decay_semantics"): "space.decay (decoupled decay uses 'lr'; the other modes "
                                      "have no decay)",
    ("train", "strategy"): "the top-level 'strategy'",
}


def _check_base(raw_base: Mapping, raw_space: Mapping) -> None:
    if not isinstance(raw_base, Mapping):
        return  # the schema reports it
    for (section, key), owner in _CONTROLLED.items():
        sec = raw_base.get(section)
        if isinstance(sec, Mapping) and key in sec:
            raise ConfigError(
                f"Config key 'base.{section}.{key}' is set by {owner}; remove it from [base]. "
                f"Received: base.{section}.{key}={sec[key]!r}")
    if "regularization" in raw_base:
        raise ConfigError(
            "Config section 'base.regularization' is set by space.decay (mode 'l2'); remove it. "
            f"Received: base.regularization={raw_base['regularization']!r}")
    opt = raw_base.get("optimizer")
    if isinstance(raw_space, Mapping) and "learning_rate" in raw_space and \
            isinstance(opt, Mapping) and "learning_rate" in opt:
        raise ConfigError(
            "Config key 'base.optimizer.learning_rate' conflicts with space.learning_rate; "
            f"remove one. Received: base.optimizer.learning_rate={opt['learning_rate']!r}")


_DIMS = ("learning_rate", "lambda", "eta_lambda")


def _check_space_defaults(raw_space) -> None:
    """A λ / ηλ dimension that is given must be given: an empty list, an empty table, 0 or
    false would otherwise fall back to the default range (``space.lambda`` left out samples
    1e-6..1e-2) without a word. Refused with the dimension's own error."""
    if not isinstance(raw_space, Mapping):
        return  # the schema reports it
    for key in _DIMS:
        if key in raw_space and not raw_space[key]:
            nr_space.resolve_dim(f"space.{key}", raw_space[key])  # raises: empty, 0, false


def _check_space_used(raw_space, space: Mapping) -> None:
    """A λ / ηλ dimension given while no mode of ``space.decay`` uses λ is ignored: refused.
    Every value of a dimension must be representable in float32 (the training dtype)."""
    if isinstance(raw_space, Mapping):
        for key in ("lambda", "eta_lambda"):
            if key in raw_space and space[key] is None:
                users = [m for m, (uses, *_) in nr_space.DECAY_MODES.items() if uses]
                raise ConfigError(
                    f"Config key 'space.{key}' is ignored: no mode of space.decay="
                    f"{space['decay']!r} uses λ (the modes that do: {users}); remove it or add "
                    f"such a mode. Received: space.{key}={raw_space[key]!r}, "
                    f"space.decay={space['decay']!r}")
    for key in _DIMS:
        dim = space.get(key)
        if dim is None:
            continue
        values = {"fixed": lambda d: [d["value"]], "choice": lambda d: d["values"],
                  "range": lambda d: [d["min"], d["max"]]}[dim["kind"]](dim)
        for value in values:
            problem = nr_config.float32_problem(value)
            if problem:
                shown = raw_space.get(key) if isinstance(raw_space, Mapping) else value
                raise ConfigError(f"Config key 'space.{key}' {problem}: {value!r} is not. "
                                  f"Received: space.{key}={shown!r}")


def resolve_study(raw: Mapping, *, max_trials: int | None = None) -> dict:
    """Validate a study table, fill defaults, resolve the space; returns the resolved spec.

    ``max_trials`` overrides ``budget.max_trials``.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"A study must be a table. Received: {raw!r}")
    raw = copy.deepcopy(dict(raw))
    raw_base = raw.get("base", {})
    raw_space = raw.get("space", {})
    _check_base(raw_base, raw_space)
    spec = nr_config.resolve(raw, STUDY_SCHEMA)
    base = spec["base"]
    d = base["data"]
    raw_data = raw_base.get("data", {}) if isinstance(raw_base, Mapping) else {}
    if d["validation_split"] is None and "train_split" not in raw_data:
        d["train_split"], d["validation_split"] = "train[:90%]", "train[90%:]"
    raw_train = raw_base.get("train", {}) if isinstance(raw_base, Mapping) else {}
    if "verbose" not in raw_train:
        base["train"]["verbose"] = 0
    objective = spec["objective"]
    if objective["direction"] is None:
        objective["direction"] = OBJECTIVES[objective["name"]]
    if objective["name"].startswith("val_") and d["validation_split"] is None:
        raise ConfigError(
            f"objective.name={objective['name']!r} needs validation data: set "
            "base.data.validation_split (e.g. 'train[90%:]' with train_split 'train[:90%]'). "
            "Received: base.data.validation_split=None")
    if len(spec["name"]) > STUDY_NAME_MAX_LENGTH:  # the trials' and the export's names
        raise ConfigError(f"Config key 'name' must be at most {STUDY_NAME_MAX_LENGTH} characters"
                          f" (the trials are named <name>_trial_<id>, the export "
                          f"<name>{EXPORT_SUFFIX}: entry names of at most "
                          f"{nr_config.NAME_MAX_LENGTH}). Received: name={spec['name']!r}")
    nr_config.check_recipe(base, prefix="base.")
    spec = with_max_trials(spec, max_trials)
    _check_space_defaults(raw_space)
    spec["space"] = nr_space.resolve_space(
        raw_space, base_learning_rate=base["optimizer"]["learning_rate"])
    _check_space_used(raw_space, spec["space"])
    kind = spec["tuner"]["kind"]
    if kind == "grid":
        nr_space.check_discrete(spec["space"])
    if kind == "hyperband" and spec["budget"]["max_epochs"] is None:
        spec["budget"]["max_epochs"] = base["train"]["epochs"]
    if spec["output"]["export_name"] is None:
        spec["output"]["export_name"] = f"{spec['name']}{EXPORT_SUFFIX}"
    return spec


def with_max_trials(spec: Mapping, max_trials: int | None) -> dict:
    """A copy of a resolved spec with ``budget.max_trials`` replaced (None: unchanged)."""
    spec = copy.deepcopy(dict(spec))
    if max_trials is not None:
        if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
            raise ConfigError(f"--max-trials must be a positive integer. "
                              f"Received: max_trials={max_trials!r}")
        spec["budget"]["max_trials"] = max_trials
    return spec


def with_worker_timeout(spec: Mapping, worker_timeout: float | None) -> dict:
    """A copy of a resolved spec with ``distributed.worker_timeout`` replaced (None:
    unchanged); ValueError naming ``worker_timeout`` if it is not a positive number."""
    spec = copy.deepcopy(dict(spec))
    spec.setdefault("distributed", {}).setdefault("worker_timeout", 600.0)
    if worker_timeout is not None:
        if isinstance(worker_timeout, bool) or not isinstance(worker_timeout, (int, float)) \
                or _positive_seconds(worker_timeout):
            raise ConfigError(f"--worker-timeout must be a positive number of seconds. "
                              f"Received: worker_timeout={worker_timeout!r}")
        spec["distributed"]["worker_timeout"] = float(worker_timeout)
    return spec


def load_study(path: str | os.PathLike, *, max_trials: int | None = None) -> dict:
    """Read and resolve ``tuning/<study>.toml``; errors name the file."""
    raw = nr_config.read_toml(path)
    try:
        spec = resolve_study(raw, max_trials=max_trials)
    except ConfigError as e:
        raise ConfigError(f"{os.fspath(path)}: {e}") from None
    spec["_path"] = os.fspath(path)
    return spec


def study_budget(spec: Mapping) -> int | None:
    """Trials the study runs: ``max_trials`` (random, bayesian), ``min(max_trials, grid size)``
    (grid); None for hyperband (its oracle knows: :func:`keras_normreg.tuning.oracle.budget`)."""
    kind = spec["tuner"]["kind"]
    if kind == "hyperband":
        return None
    n = spec["budget"]["max_trials"]
    if kind == "grid":
        size = nr_space.grid_size(spec["space"])
        return n if size is None else min(n, size)
    return n


def project_dir(spec: Mapping, directory: str | None = None) -> str:
    """``<directory>/<name>``: where keras-tuner keeps the study (trials, oracle state)."""
    return os.path.join(directory or spec["output"]["directory"], spec["name"])


def _drop(d):
    if isinstance(d, dict):
        return {k: _drop(v) for k, v in d.items() if v is not None and not k.startswith("_")}
    return d


def study_to_toml(spec: Mapping) -> str:
    """The resolved study as TOML text (written next to the results)."""
    out = copy.deepcopy(dict(spec))
    out["space"] = nr_space.space_to_toml(spec["space"])
    base = out["base"]
    base.pop("regularization", None)
    for (section, key) in _CONTROLLED:
        base.get(section, {}).pop(key, None)
    base["optimizer"].pop("learning_rate", None)  # space.learning_rate holds it
    return nr_config.dumps(_drop(out))


def find_spec(name_or_path: str, search: Sequence[str] = ()) -> str:
    """A study path: an existing file, or ``<name>.toml`` in ``tuning/`` or the shipped specs."""
    if os.path.isfile(name_or_path):
        return name_or_path
    base = name_or_path if name_or_path.endswith(".toml") else name_or_path + ".toml"
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")
    for d in (*search, "tuning", here):
        p = os.path.join(d, os.path.basename(base))
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"Study spec not found. Received: study={name_or_path!r}")
