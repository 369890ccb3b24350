"""Invariance-aware search: how many trials each parametrization needs to reach a target.

:func:`compare_parametrizations` runs the same keras-tuner oracle (random or bayesian) with the
same budget and seeds over two versions of a space — ``independent`` (λ and η sampled) and
``product`` (ηλ and η sampled, λ = ηλ/η) — on any objective ``f(point) -> score`` and reports
the number of trials each needed to reach ``target``. The two spaces cover the same
configurations: given one, the other is derived by :func:`covering_space` (the independent box
``λ ∈ [ηλ_min/η_max, ηλ_max/η_min]`` contains every (η, ηλ) of the product box, and the product
box ``ηλ ∈ [λ_min η_min, λ_max η_max]`` every (η, λ) of the independent one).

Objectives: any callable of the decoded point (``norm``, ``decay``, ``learning_rate``,
``lambda``, ``eta_lambda``); :func:`training_objective` trains the study's model for a point
and returns its best validation score (what a benchmark uses).

A helper of the source checkout's benchmarks (``bench/bench_tuning.py``, ``bench/_tabular.py``),
not part of the installed package: ``from experiments import compare`` from the repository root.
"""

from __future__ import annotations

import math
import statistics
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence

import keras_tuner as kt

from keras_normreg.tuning import space as nr_space
from keras_normreg.tuning.hypermodel import NormRegHyperModel

__all__ = ["compare_parametrizations", "covering_space", "search_scores", "trials_to_target",
           "training_objective"]


def trials_to_target(scores: Sequence[float], target: float, direction: str = "max"):
    """1-based index of the first score reaching ``target`` (>= for max, <= for min);
    None if none does."""
    if direction not in ("max", "min"):
        raise ValueError(f"Argument `direction` must be 'max' or 'min'. "
                         f"Received: direction={direction!r}")
    for i, s in enumerate(scores, 1):
        if s is not None and math.isfinite(s) and (s >= target if direction == "max"
                                                   else s <= target):
            return i
    return None


def _range(dim):
    if dim["kind"] == "fixed":
        return dim["value"], dim["value"]
    if dim["kind"] == "choice":
        return min(dim["values"]), max(dim["values"])
    return dim["min"], dim["max"]


def covering_space(space: Mapping, parametrization: str) -> dict:
    """The space in ``parametrization`` whose λ (or ηλ) range covers every configuration of
    ``space`` (a log-uniform range; norms, decay modes and η unchanged)."""
    space = nr_space.resolve_space(space)
    if parametrization not in nr_space.PARAMETRIZATIONS:
        raise ValueError(f"Argument `parametrization` must be one of "
                         f"{list(nr_space.PARAMETRIZATIONS)}. "
                         f"Received: parametrization={parametrization!r}")
    raw = nr_space.space_to_toml(space)
    if space["parametrization"] == parametrization:
        return nr_space.resolve_space(raw)
    raw["parametrization"] = parametrization
    lr_lo, lr_hi = _range(space["learning_rate"])
    if parametrization == "product" and space["lambda"] is not None:
        lo, hi = _range(space["lambda"])
        raw.pop("lambda")
        raw["eta_lambda"] = {"min": lo * lr_lo, "max": hi * lr_hi, "sampling": "log"}
    elif parametrization == "independent" and space["eta_lambda"] is not None:
        lo, hi = _range(space["eta_lambda"])
        raw.pop("eta_lambda")
        raw["lambda"] = {"min": lo / lr_hi, "max": hi / lr_lo, "sampling": "log"}
    return nr_space.resolve_space(raw)


class _SpaceModel(kt.HyperModel):
    def __init__(self, space):
        super().__init__()
        self.space = space

    def build(self, hp):
        nr_space.declare(hp, self.space)
        return None


class _FunctionTuner(kt.engine.base_tuner.BaseTuner):
    def __init__(self, fn, space, **kwargs):
        self.fn = fn
        self.space = space
        super().__init__(hypermodel=_SpaceModel(space), **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        point = nr_space.decode(trial.hyperparameters.values, self.space)
        return {"score": float(self.fn(point))}


# Far apart from each other compared with any budget (keras-tuner uses seed + trial index).
SEED_STRIDE = 100_003


def search_scores(objective: Callable[[dict], float], space: Mapping, *, budget: int,
                  seed: int, tuner: str = "random", direction: str = "max") -> list[float]:
    """Scores of ``budget`` trials of one search (in trial order).

    keras-tuner's oracles seed their k-th sample with ``seed + k``, so consecutive user seeds
    would replay shifted copies of one sample sequence: each user seed is spread to
    ``seed * SEED_STRIDE + 1`` to keep searches independent.
    """
    space = nr_space.resolve_space(space)
    seed = seed * SEED_STRIDE
    obj = kt.Objective("score", direction)
    if tuner == "random":
        oracle = kt.oracles.RandomSearchOracle(objective=obj, max_trials=budget, seed=seed + 1)
    elif tuner == "bayesian":
        oracle = kt.oracles.BayesianOptimizationOracle(objective=obj, max_trials=budget,
                                                       seed=seed + 1)
    else:
        raise ValueError(f"Argument `tuner` must be 'random' or 'bayesian'. "
                         f"Received: tuner={tuner!r}")
    oracle.verbose = 0
    with tempfile.TemporaryDirectory(prefix="knr-compare-") as tmp:
        t = _FunctionTuner(objective, space, oracle=oracle, directory=tmp, project_name="p",
                           overwrite=True)
        t.oracle.verbose = 0
        t.search()
        trials = t.oracle.trials
        return [trials[i].score for i in t.oracle.start_order]


def compare_parametrizations(objective: Callable[[dict], float], space: Mapping, *,
                             target: float, budget: int, seeds: Iterable[int] = range(5),
                             tuner: str = "random", direction: str = "max",
                             other: Mapping | None = None) -> dict:
    """Trials needed to reach ``target`` with each parametrization, same budget and seeds.

    Args:
        objective: ``f(point) -> score``; ``point`` as :func:`keras_normreg.tuning.space.decode`
            returns it.
        space: a space (either parametrization).
        target: the score to reach.
        budget: trials per search.
        seeds: one search per seed and parametrization.
        tuner: ``"random"`` or ``"bayesian"``.
        other: the space of the other parametrization (default: :func:`covering_space`).

    Returns:
        ``{"independent": summary, "product": summary, "target", "budget"}`` with
        ``summary = {"trials": [n or None per seed], "reached": k, "median": m or None,
        "mean_censored": mean with misses counted as budget + 1, "space": resolved space}``.
    """
    space = nr_space.resolve_space(space)
    if space["lambda"] is None and space["eta_lambda"] is None:
        raise ValueError("compare_parametrizations needs a decay mode with λ (l2 or decoupled) "
                         f"in space.decay. Received: decay={list(space['decay'])!r}")
    mine = space["parametrization"]
    theirs = "product" if mine == "independent" else "independent"
    spaces = {mine: space,
              theirs: nr_space.resolve_space(other) if other is not None
              else covering_space(space, theirs)}
    if spaces[theirs]["parametrization"] != theirs:
        raise ValueError(f"Argument `other` must use parametrization={theirs!r}. "
                         f"Received: parametrization={spaces[theirs]['parametrization']!r}")
    seeds = list(seeds)
    out: dict = {"target": target, "budget": budget, "seeds": seeds}
    for name in ("independent", "product"):
        counts = [trials_to_target(search_scores(objective, spaces[name], budget=budget,
                                                 seed=s, tuner=tuner, direction=direction),
                                   target, direction) for s in seeds]
        reached = [c for c in counts if c is not None]
        censored = [c if c is not None else budget + 1 for c in counts]
        med = statistics.median(censored)
        out[name] = {"trials": counts, "reached": len(reached),
                     "median": med if med <= budget else None,
                     "mean_censored": sum(censored) / len(censored),
                     "space": spaces[name]}
    return out


def training_objective(spec: Mapping) -> Callable[[dict], float]:
    """``f(point) -> best objective`` training the study's model (a resolved study spec) once
    per call, in this process (for benchmarks of :func:`compare_parametrizations`)."""
    base = spec["base"]
    obj, direction = spec["objective"]["name"], spec["objective"]["direction"]

    def f(point):
        hm = NormRegHyperModel(base["model"]["arch"], base["data"]["dataset"], spec["space"],
                               base=base, name=f"{spec['name']}_compare")
        hp = kt.HyperParameters()
        hp.values.update({k: point[k] for k in ("norm", "decay", "learning_rate")})
        key = "eta_lambda" if spec["space"]["parametrization"] == "product" else "lambda"
        if point.get(key) is not None:
            hp.values[key] = point[key]
        model = hm.build(hp)
        result = hm.fit(hp, model)
        history = getattr(result, "history", None)
        if history is None:
            return float(result[obj])
        values = history[obj]
        return float(max(values) if direction == "max" else min(values))

    return f
