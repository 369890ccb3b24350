"""The λ × normalization × decay-mode search space, and how a point of it becomes a recipe.

The λ convention
----------------
λ is a PyTorch-style decay coefficient: with plain SGD (no momentum) every decay mode that uses
λ takes the step ``w ← w − η (∇L(w) + λ w)`` on the decayed kernels. The decay modes map to
recipe fields (:mod:`keras_normreg.config`) as follows, with ``opt`` the space's optimizer family
(``"sgd"`` or ``"adam"``):

=============  ==============================================================================
decay mode     recipe
=============  ==============================================================================
``l2``         coupled penalty ``(λ/2)·Σ‖w‖²`` on every kernel, scale-invariant ones included:
               ``regularization.kind="l2"``, ``l2=λ/2``, ``targets=["kernel"]``,
               ``skip_scale_invariant=false``; optimizer ``opt`` (no decoupled decay). Its
               gradient is ``λ w``; with momentum/Adam it goes through the optimizer state.
``decoupled``  ``optimizer.name=opt+"w"`` (sgdw / adamw), ``weight_decay=λ``,
               ``decay_semantics="lr"`` (``w ← w − η λ w`` before the step), biases and
               normalization parameters excluded, scale-invariant kernels decayed.
``unit_norm``  ``optimizer.name=opt+"w"``, ``scale_invariant="sphere"``, ``weight_decay=0``:
               scale-invariant kernels are retracted to a fixed norm after each step, the
               other weights are not decayed. No λ hyperparameter exists in this mode. The
               radius is DecoupledWeightDecay's default rule ``sphere_radius="units"``: each
               unit at norm 1 before a per-channel BatchNorm, and the whole kernel at
               ``√units`` before LayerNorm/GroupNorm (mean unit norm² 1). So a unit's
               effective learning rate ``η/‖w_j‖²`` is the same ``η`` on average for every
               normalization. Radius 1 for the whole tensor made it ``units`` times larger and
               collapsed ``layer × unit_norm`` in the demo.
``none``       optimizer ``opt``, no penalty, no decay.
=============  ==============================================================================

For a scale-invariant kernel (one that feeds a normalization), coupled L2 does not regularize
the function at all: it only shrinks ‖w‖, and the function's effective step is ``η/‖w‖²``, so
λ acts as an effective-learning-rate knob — that is what the ``l2`` mode measures.

Parametrizations
----------------
``independent``: λ and η are sampled separately (``space.lambda`` and ``space.learning_rate``).

``product``: ηλ (``space.eta_lambda``) and η are sampled, and ``λ = (ηλ)/η``. For a
scale-invariant weight under SGD with weight decay the norm settles where the shrinking by
``ηλ‖w‖²`` balances the growth by ``η²‖g‖²`` of the (orthogonal) gradient steps; at that
equilibrium the angular update per step is ``≈ sqrt(2ηλ/(1+μ))`` (μ the momentum), a function
of ηλ only (van Laarhoven 2017; Wan et al. 2021, "spherical motion dynamics"). So the accuracy
of a normalized network is (nearly) constant along the lines ``ηλ = const`` of the
(log η, log λ) plane: sampled independently, the good configurations lie on a diagonal ridge,
and a box in (η, λ) wide enough to contain the ridge for every η also holds a lot of
configurations far off it; in (η, ηλ) the ridge is axis-aligned and η is left to govern the
weights that are *not* scale-invariant (classifier, biases, normalization parameters).

A dimension (``learning_rate``, ``lambda``, ``eta_lambda``) is written in TOML as a number
(fixed), a list of numbers (a choice, what grid search needs) or a table
``{min = .., max = .., sampling = "log" | "linear", step = ..}`` (a range).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from keras_normreg import config as nr_config
from keras_normreg import layers as nr_layers
from keras_normreg.config import ConfigError, Field

__all__ = [
    "DECAY_MODES",
    "PARAMETRIZATIONS",
    "SPACE_SCHEMA",
    "declare",
    "decode",
    "grid_size",
    "resolve_space",
    "trial_recipe",
]

PARAMETRIZATIONS = ("independent", "product")

# decay mode -> (uses λ, one-line description)
DECAY_MODES: dict[str, tuple[bool, str]] = {
    "l2": (True, "coupled L2 penalty (λ/2)‖w‖² on kernels, scale-invariant ones included"),
    "decoupled": (True, "decoupled decay w ← w − ηλw (sgdw / adamw)"),
    "unit_norm": (False, "scale-invariant kernels kept on the sphere (unit norm per unit, "
                         "√units per whole tensor); no λ"),
    "none": (False, "no decay"),
}
OPTIMIZER_FAMILIES = ("sgd", "adam")

DIM_KEYS = ("min", "max", "sampling", "step")
DEFAULT_LAMBDA = {"min": 1e-6, "max": 1e-2, "sampling": "log"}
DEFAULT_ETA_LAMBDA = {"min": 1e-7, "max": 1e-3, "sampling": "log"}


def _unique_subset(choices):
    """``check`` for a list of distinct values of ``choices`` (a sequence, or a callable that
    returns the current one, e.g. a family table's names)."""
    def check(values):
        valid = tuple(choices() if callable(choices) else choices)
        if not values:
            return "must not be empty"
        bad = [v for v in values if v not in valid]
        if bad:
            return f"has unknown value {bad[0]!r} (valid: {', '.join(valid)})"
        if len(set(values)) != len(values):
            return "must not repeat a value"
        return None
    return check


DIM_TYPES = (int, float, list, dict)

SPACE_SCHEMA: dict[str, Any] = {
    "parametrization": Field(str, "independent", choices=PARAMETRIZATIONS,
                             doc="independent: sample λ and η; product: sample ηλ and η"),
    "norms": Field(list, ["batch"], item_type=str, check=_unique_subset(nr_layers.normalization_names),
                   doc="normalization choices (model.norm)"),
    "decay": Field(list, ["decoupled"], item_type=str, check=_unique_subset(tuple(DECAY_MODES)),
                   doc="decay modes: l2 | decoupled | unit_norm | none"),
    "optimizer": Field(str, "sgd", choices=OPTIMIZER_FAMILIES,
                       doc="optimizer family: sgd -> sgd/sgdw, adam -> adam/adamw"),
    "learning_rate": Field(DIM_TYPES, None,
                           doc="η: number, list or {min,max,sampling}; default base lr (fixed)"),
    "lambda": Field(DIM_TYPES, None, doc="λ (independent parametrization); default 1e-6..1e-2 log"),
    "eta_lambda": Field(DIM_TYPES, None, doc="ηλ (product parametrization); default 1e-7..1e-3 log"),
}

_DIM_TABLE_SCHEMA = {
    "min": Field(float, nr_config._REQUIRED, doc="smallest value"),
    "max": Field(float, nr_config._REQUIRED, doc="largest value"),
    "sampling": Field(str, "log", choices=("log", "linear"), doc="log or linear"),
    "step": Field(float, None, doc="grid step (additive; a factor > 1 with log sampling)"),
}


def _err(path, message, value):
    return ConfigError(f"Config key '{path}' {message}. Received: {path}={value!r}")


def resolve_dim(path: str, value) -> dict:
    """A dimension as ``{"kind": "fixed"|"choice"|"range", ...}``, validated (> 0)."""
    if isinstance(value, bool):
        raise _err(path, "must be a number, a list of numbers or a table", value)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise _err(path, "must be a finite number", value)
        if not value > 0:
            raise _err(path, "must be > 0", value)
        return {"kind": "fixed", "value": float(value)}
    if isinstance(value, list):
        if not value:
            raise _err(path, "must not be an empty list", value)
        values = []
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _err(f"{path}[{i}]", "must be a number > 0", v)
            if not math.isfinite(v):
                raise _err(f"{path}[{i}]", "must be a finite number", v)
            if not v > 0:
                raise _err(f"{path}[{i}]", "must be a number > 0", v)
            values.append(float(v))
        if len(set(values)) != len(values):
            raise _err(path, "must not repeat a value", value)
        if len(values) == 1:
            return {"kind": "fixed", "value": values[0]}
        return {"kind": "choice", "values": values}
    if isinstance(value, Mapping):
        parts = path.split(".")
        raw: dict = dict(value)
        for p in reversed(parts):
            raw = {p: raw}
        schema: dict = _DIM_TABLE_SCHEMA
        for p in reversed(parts):
            schema = {p: schema}
        table = nr_config.resolve(raw, schema)
        for p in parts:
            table = table[p]
        lo, hi, step = table["min"], table["max"], table["step"]
        if not 0 < lo < hi:
            raise _err(path, "needs 0 < min < max", dict(value))
        if step is not None:
            if table["sampling"] == "log" and step <= 1:
                raise _err(path + ".step", "must be a factor > 1 with sampling='log'", step)
            if table["sampling"] == "linear" and step <= 0:
                raise _err(path + ".step", "must be > 0", step)
        return {"kind": "range", "min": lo, "max": hi, "sampling": table["sampling"],
                "step": step}
    raise _err(path, "must be a number, a list of numbers or a table", value)


def _dim_values(dim) -> list[float] | None:
    """The discrete values of a dimension (None for a continuous range)."""
    if dim["kind"] == "fixed":
        return [dim["value"]]
    if dim["kind"] == "choice":
        return list(dim["values"])
    step = dim["step"]
    if step is None:
        return None
    out, v = [], dim["min"]
    while v <= dim["max"] * (1 + 1e-9):
        out.append(v)
        v = v * step if dim["sampling"] == "log" else v + step
    return out


def resolve_space(raw: Mapping | None = None, *, base_learning_rate: float = 0.1,
                  prefix: str = "space") -> dict:
    """Validate a ``[space]`` table (unknown keys rejected) and resolve its dimensions.

    Returns the validated table with ``learning_rate``, ``lambda`` and ``eta_lambda`` replaced
    by resolved dimensions (``lambda`` is None in the product parametrization, ``eta_lambda``
    None in the independent one, both None when no decay mode uses λ).
    """
    raw = {} if raw is None else raw
    if isinstance(raw, Mapping) and raw.get("_resolved"):
        return copy.deepcopy(dict(raw))
    nested = nr_config.resolve({prefix: raw}, {prefix: SPACE_SCHEMA})[prefix]
    out = dict(nested)
    product = nested["parametrization"] == "product"
    uses_lambda = any(DECAY_MODES[d][0] for d in nested["decay"])
    lr = nested["learning_rate"]
    out["learning_rate"] = resolve_dim(f"{prefix}.learning_rate",
                                       base_learning_rate if lr is None else lr)
    wrong = "eta_lambda" if not product else "lambda"
    if nested[wrong] is not None:
        want = "lambda" if not product else "eta_lambda"
        raise ConfigError(
            f"Config key '{prefix}.{wrong}' does not belong to parametrization="
            f"{nested['parametrization']!r} (use '{prefix}.{want}'). "
            f"Received: {prefix}.{wrong}={nested[wrong]!r}")
    if uses_lambda and not product:
        out["lambda"] = resolve_dim(
            f"{prefix}.lambda", DEFAULT_LAMBDA if nested["lambda"] is None else nested["lambda"])
        out["eta_lambda"] = None
    elif uses_lambda:
        out["eta_lambda"] = resolve_dim(
            f"{prefix}.eta_lambda",
            DEFAULT_ETA_LAMBDA if nested["eta_lambda"] is None else nested["eta_lambda"])
        out["lambda"] = None
    else:
        out["lambda"] = out["eta_lambda"] = None
    out["_resolved"] = True
    return out


def space_to_toml(space: Mapping) -> dict:
    """The resolved space back in the TOML form (for the resolved study written to disk)."""
    out = {k: v for k, v in space.items() if not k.startswith("_")}
    for key in ("learning_rate", "lambda", "eta_lambda"):
        dim = out.get(key)
        if dim is None:
            out.pop(key, None)
        elif dim["kind"] == "fixed":
            out[key] = dim["value"]
        elif dim["kind"] == "choice":
            out[key] = list(dim["values"])
        else:
            out[key] = {k: dim[k] for k in DIM_KEYS if dim.get(k) is not None}
    return out


def check_discrete(space: Mapping, prefix: str = "space") -> None:
    """Grid search needs every active dimension discrete (a list, or a range with a step)."""
    for key in ("learning_rate", "lambda", "eta_lambda"):
        dim = space[key]
        if dim is not None and _dim_values(dim) is None:
            raise ConfigError(
                f"Config key '{prefix}.{key}' is a continuous range, which grid search cannot "
                f"enumerate: give a list of values or a step. Received: {prefix}.{key}="
                f"{space_to_toml(space)[key]!r}")


def grid_size(space: Mapping) -> int | None:
    """Number of distinct points of the space (None when a dimension is continuous)."""
    lr = _dim_values(space["learning_rate"])
    lam_dim = space["eta_lambda"] if space["parametrization"] == "product" else space["lambda"]
    lam = _dim_values(lam_dim) if lam_dim is not None else [None]
    if lr is None or lam is None:
        return None
    per_norm = 0
    for mode in space["decay"]:
        per_norm += len(lr) * (len(lam) if DECAY_MODES[mode][0] else 1)
    return len(space["norms"]) * per_norm


def _declare_dim(hp, name, dim):
    if dim["kind"] == "fixed":
        return hp.Fixed(name, dim["value"])
    if dim["kind"] == "choice":
        return hp.Choice(name, dim["values"], ordered=True)
    return hp.Float(name, dim["min"], dim["max"], step=dim["step"], sampling=dim["sampling"])


def declare(hp, space: Mapping) -> dict:
    """Declare the space on a keras-tuner ``HyperParameters`` and return the trial's point.

    Hyperparameters: ``norm`` (choice), ``decay`` (choice), ``learning_rate``, and — only under
    the decay modes that use λ (a conditional scope on ``decay``) — ``lambda`` (independent)
    or ``eta_lambda`` (product). Returns :func:`decode` of the values.
    """
    space = resolve_space(space)
    norm = hp.Choice("norm", list(space["norms"])) if len(space["norms"]) > 1 else \
        hp.Fixed("norm", space["norms"][0])
    decay = hp.Choice("decay", list(space["decay"])) if len(space["decay"]) > 1 else \
        hp.Fixed("decay", space["decay"][0])
    lr = _declare_dim(hp, "learning_rate", space["learning_rate"])
    with_lambda = [m for m in space["decay"] if DECAY_MODES[m][0]]
    values = {"norm": norm, "decay": decay, "learning_rate": lr}
    if with_lambda:
        key = "eta_lambda" if space["parametrization"] == "product" else "lambda"
        with hp.conditional_scope("decay", with_lambda):
            values[key] = _declare_dim(hp, key, space[key])
    return decode(values, space)


def decode(values: Mapping, space: Mapping | None = None) -> dict:
    """``{"norm", "decay", "learning_rate", "lambda", "eta_lambda"}`` of a trial's values.

    In the product parametrization ``lambda = eta_lambda / learning_rate``; in the independent
    one ``eta_lambda = learning_rate · lambda`` (reported only). Both are None when the decay
    mode has no λ.
    """
    decay = values["decay"]
    lr = float(values["learning_rate"])
    out = {"norm": values["norm"], "decay": decay, "learning_rate": lr,
           "lambda": None, "eta_lambda": None}
    if DECAY_MODES[decay][0]:
        if values.get("eta_lambda") is not None:
            out["eta_lambda"] = float(values["eta_lambda"])
            out["lambda"] = out["eta_lambda"] / lr
        elif values.get("lambda") is not None:
            out["lambda"] = float(values["lambda"])
            out["eta_lambda"] = lr * out["lambda"]
        else:
            raise ValueError(f"Decay mode {decay!r} needs 'lambda' or 'eta_lambda'. "
                             f"Received: values={dict(values)!r}")
    return out


def trial_recipe(base: Mapping, point: Mapping, space: Mapping, name: str) -> dict:
    """The resolved recipe of one trial: ``base`` (a resolved recipe) with the point applied.

    See the module docstring for the mapping of each decay mode to recipe fields.
    """
    space = resolve_space(space)
    cfg = copy.deepcopy(dict(base))
    cfg["name"] = name
    family = space["optimizer"]
    decay, lam = point["decay"], point["lambda"]
    cfg["model"]["norm"] = point["norm"]
    opt = cfg["optimizer"]
    opt["learning_rate"] = float(point["learning_rate"])
    opt["weight_decay"] = 0.0
    opt["scale_invariant"] = "none"
    cfg["regularization"] = {"kind": "none", "l1": 0.0, "l2": 0.0, "targets": ["kernel"],
                             "skip_scale_invariant": True}
    if decay == "l2":
        opt["name"] = family
        cfg["regularization"].update(kind="l2", l2=lam / 2.0, skip_scale_invariant=False)
    elif decay == "decoupled":
        opt["name"] = family + "w"
        opt["weight_decay"] = float(lam)
        opt["decay_semantics"] = "lr"
    elif decay == "unit_norm":
        opt["name"] = family + "w"
        opt["scale_invariant"] = "sphere"
    else:
        opt["name"] = family
    return nr_config.resolve(nr_config.drop_none(cfg))
