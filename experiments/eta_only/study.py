"""The ``eta-only`` study: with the normalized kernels on the sphere, is tuning η alone enough?

An experiment of the source checkout (issue 17, item 1), not part of the installed package. One
command runs it::

    python -m experiments.eta_only            # or: keras-normreg study eta-only

and writes ``docs/study_eta_only.md`` (the report, rendered from the results by
:func:`render` with the prose of ``experiments/templates/eta_only.md``) and, under
``docs/study_eta_only/``, ``results.json`` (settings, versions, date, command, every run),
``table.csv`` (one row per grid point) and the figures. ``--render`` re-renders the report and
the figures from an existing ``results.json``; ``--dry-run`` prints the plan and the time
estimate and stops; ``--calibrate`` times one full-length run per arm and extrapolates;
``--quick`` is a miniature (tiny grids, 2 epochs, 1 seed: ~2 min) for the tests; ``--set
NAME=VALUE`` changes any field of :class:`Settings`.

The setup: the zoo's ``cnn1d`` (4 × [Conv1D → BatchNorm → ReLU], global average pooling,
Dense) on MNIST-1D, trained on ``train[:3000]`` and scored on the held-out ``train[3000:]``
(1000 examples; the test split is not used), SGD with momentum α = 0.9 at a *constant*
learning rate (the equilibrium theory assumes one), every grid point with 3 training seeds
(initialization and data order). Four arms, each a grid over its own hyperparameters; the
recipes come from :func:`keras_normreg.tuning.space.trial_recipe`, i.e. the tuning space's
decay modes:

(a) ``decoupled``: the 2-D (η, λ) grid, ``sgdw`` with decoupled decay ``w ← w − ηλw`` (decay
    mode ``decoupled``; biases and normalization parameters not decayed);
(b) ``coupled``: the 2-D (η, λ) grid, plain SGD + the coupled penalty with the tuning space's
    convention (decay mode ``l2``): ``regularizers.L2(λ/2)`` = (λ/2)·Σw², whose gradient is λ·w
    (PyTorch's ``weight_decay=λ``);
(c) ``sphere``: the 1-D η grid, ``sgdw`` with ``scale_invariant="sphere"`` (the BN'd conv
    kernels retracted to unit norm per output unit after every step) and λ = 0 everywhere
    (decay mode ``unit_norm``): one hyperparameter;
(d) ``eta_lambda``: the 1-D ηλ grid at a fixed η (decoupled, like (a));
(e) ``none``, a reference outside the comparison: (a)'s η grid with no decay at all (decay
    mode ``none``; off equilibrium: the norms grow and the rotation slows down by itself).

By default (``decay_scope="scale_invariant"``) λ acts on the BN'd conv kernels only in (a), (b)
and (d): the classifier kernel is left out of the decay / penalty, as in (c), so that the arms
differ only in how the BN'd kernels' rotation is set (the λ values that reach equilibrium in
this budget would otherwise also be a strong L2 on the classifier, an effect of its own);
``decay_scope="all"`` decays every kernel, as the tuning space does.

Equilibrium (why the grids are where they are). For a scale-invariant kernel under decoupled
decay the squared norm relaxes with a time constant of ~1/(2ηλ) steps (it shrinks by a factor
(1 − ηλ)² per step), and once relaxed the kernel turns by a fixed angle per step,
``Δθ = sqrt(2ηλ(1−α)/(1+α))`` for this optimizer (decay applied outside the momentum,
:func:`keras_normreg.diagnostics.equilibrium_angular_update`; ``sqrt(2ηλ/(1+α))`` is the
coupled case, where the decay goes through the momentum). With ``T`` steps of training the
smallest ηλ of the grids is set so that ``T`` is ``n_tau`` = 3 time constants:
``ηλ_min = 3/(2T)`` (:func:`eta_lambda_floor`); the λ grid of (a) starts at ``ηλ_min/η_min``.
Arm (b)'s λ values are (a)'s times (1 − α): coupled decay goes through the momentum and is
amplified by 1/(1 − α), so (b) has the same relaxation time and the same equilibrium Δθ as (a)
point by point. Arm (d) spans (a)'s ηλ range at (a)'s middle η. Arm (c) has no λ: on the unit
sphere a unit turns by ``Δθ ≈ η·‖∇f(ŵ)‖`` per step (times the momentum's gain), so its η grid
is chosen to span (a)'s range of equilibrium Δθ and ``sphere_below`` = 16 times under it (the
small angles a decayed run reaches in this budget only off equilibrium, where the no-decay
reference ends), with the rate Δθ/η measured in three pilot runs on the sphere
(:class:`~keras_normreg.diagnostics.NormMonitor`'s ``unit_angular_update`` /
``unit_effective_lr``, the latter being η for unit-norm units), as long as the grid runs by
default (the gradient norm shrinks as the net fits, and the grid runs are measured in their
last epoch too), fitted as a power law ``Δθ = c·η^p`` (:func:`fit_rate`,
:func:`sphere_eta_grid`).

Each run trains ``epochs`` epochs in two phases: all but the last epoch with
``steps_per_execution`` steps per call (the model and data are tiny: the per-call overhead is
most of a step), then the last epoch recompiled with one step per call and a
``NormMonitor(every_n_steps=1, per_unit=True)`` that measures the angular update per step of
the BN'd conv kernels. The score of a run is its validation accuracy averaged over the last
``score_epochs`` epochs (a constant learning rate leaves the accuracy fluctuating from epoch to
epoch; a search would see this one number per trial). Runs are spread over ``workers``
processes with one thread each, on the JAX backend by default (jit-compiled; measured on the
shared 2-core CPU: ~0.35-0.45 s per epoch against TensorFlow's ~0.55, and 20-25 s per
20-epoch run on 2 workers against 30-35 s); each run seeds before building its data streams,
so its result does not depend on the runs before it in its worker.

Per arm the report gives the best mean score with its seed standard deviation, the trials used
(points × seeds) and the trials random search over the arm's grid needs to come within one
seed-standard-deviation of the best of all arms (:func:`search_trials`: many simulated
searches drawing grid points with replacement and seeing one seed's score per draw), and says
whether the claim (one hyperparameter suffices) holds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import dataclasses
import datetime
import functools
import json
import math
import multiprocessing
import os
import platform
import shlex
import string
import sys
import time

import keras
import numpy as np

from keras_normreg import config as nr_config
from keras_normreg import data as nr_data
from keras_normreg import selectors, zoo
from keras_normreg import train as nr_train
from keras_normreg._invariance import find_scale_invariant
from keras_normreg._utils import check_number, environ, received
from keras_normreg.data import splits as nr_splits
from keras_normreg.diagnostics.monitor import NormMonitor, equilibrium_angular_update
from keras_normreg.tuning import space as nr_space

from .._report import load_results, load_sections, parse_sets

__all__ = ["ALL_ARMS", "ARMS", "MEASURED_TIMING", "REFERENCE", "Settings", "arm_grids",
           "calibrate", "cli", "equilibrium_steps", "equilibrium_theta", "estimate_seconds",
           "eta_lambda_floor", "fit_rate", "geometric_quantile", "load_template", "log_grid",
           "main", "make_settings", "render", "render_report", "run_study", "search_trials",
           "sphere_eta_grid", "summarize"]

#: The arms, in report order: (a) decoupled 2-D, (b) coupled 2-D, (c) sphere η, (d) ηλ at fixed η.
ARMS = ("decoupled", "coupled", "sphere", "eta_lambda")
#: The reference outside the comparison: (e) no decay at all, η grid (off equilibrium: the
#: norms grow and the rotation slows down by itself). It does not set the target.
REFERENCE = "none"
ALL_ARMS = (*ARMS, REFERENCE)
LETTERS = {"decoupled": "a", "coupled": "b", "sphere": "c", "eta_lambda": "d", "none": "e"}
TITLES = {"decoupled": "(η, λ) grid, decoupled decay (sgdw)",
          "coupled": "(η, λ) grid, coupled L2 (SGD + L2(λ/2))",
          "sphere": "η grid, BN'd kernels on the unit sphere, λ = 0 (sgdw sphere mode)",
          "eta_lambda": "ηλ grid at a fixed η, decoupled decay (sgdw)",
          "none": "reference: η grid, no decay anywhere (SGD)"}
DECAY_MODE = {"decoupled": "decoupled", "coupled": "l2", "sphere": "unit_norm",
              "eta_lambda": "decoupled", "none": "none"}

#: Seconds per epoch and per-run overhead of one run (cnn1d, MNIST-1D ``train[:3000]``, batch
#: 30, JAX, one thread per worker, two workers side by side, the last epoch monitored every
#: step): the full study of 2026-11-30 took 1108 s for 225 runs of 20 epochs on the otherwise
#: idle 2-core machine, ~10 s per run and worker (at load 3-4 it was ~25 s). What the estimate
#: printed before a study starts uses (the report gives the study's own measured time).
MEASURED_TIMING = {"s_per_epoch": 0.35, "overhead_s": 3.0,
                   "measured": "2026-11-30, the full study on the idle 2-core CPU, 2 workers x 1 "
                               "thread, JAX"}

DECAY_SCOPES = ("scale_invariant", "all")
DEFAULT_OUT = os.path.join("docs", "study_eta_only")
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(_HERE, "templates", "eta_only.md")


# ------------------------------------------------------------------------------ settings
@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that defines a study (stored in ``results.json``).

    ``eta_grid``/``lambda_grid`` are arm (a)'s grid; the other grids are derived from it by
    :func:`arm_grids` (arm (c)'s also from the pilot)."""

    epochs: int = 20
    batch_size: int = 30
    momentum: float = 0.9
    # > 1: all but the last epoch with that many steps per call, the last one recompiled at one
    # step per call for the monitor (pays off on TensorFlow, whose per-call overhead is most of
    # a step here; JAX's is not: at 1 the last epoch reuses the compiled step)
    steps_per_execution: int = 1
    seeds: tuple = (1, 2, 3)
    score_epochs: int = 5
    n_tau: float = 3.0
    eta_grid: tuple = (0.025, 0.05, 0.1, 0.2, 0.4)
    lambda_factor: float = 2.0
    lambda_points: int = 5
    eta_lambda_eta: float = 0.1
    eta_lambda_points: int = 7
    sphere_points: int = 11
    # the sphere arm's Δθ range starts this factor below (a)'s smallest equilibrium Δθ: the
    # angles that the decayed arms reach only off equilibrium in this budget (their floor is
    # set by n_tau relaxation times) are in reach of the sphere at once. 16: the no-decay
    # reference ends its runs turning by ~0.001 rad/step, 1/9 of this budget's floor, and the
    # sphere's best η must lie inside its grid, not on its edge
    sphere_below: float = 16.0
    pilot_etas: tuple = (0.003, 0.03, 0.3)
    # None: as long as the grid runs, so that the pilot measures Δθ/η at the stage of training
    # where the grid runs are measured (the last epoch)
    pilot_epochs: int | None = None
    reference: bool = True
    train_split: str = "train[:3000]"
    validation_split: str = "train[3000:]"
    dataset: str = "mnist1d"
    arch: str = "cnn1d"
    norm: str = "batch"
    # which kernels λ acts on in arms (a), (b), (d): "scale_invariant" (the BN'd conv kernels
    # only; every arm leaves the classifier undecayed, as the sphere arm does) or "all" (every
    # kernel, the tuning space's own decay modes: λ then also regularizes the classifier)
    decay_scope: str = "scale_invariant"
    workers: int = 2
    backend: str = "jax"
    quick: bool = False

    def steps_per_epoch(self) -> int:
        n = nr_data.info(self.dataset).splits
        size = _split_size(self.train_split, n)
        return math.ceil(size / self.batch_size)

    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch()


def _split_size(split, sizes):
    """Examples in a split string of the embedded set (``train[:3000]`` etc.)."""
    return sum(stop - start for _, start, stop in nr_splits.resolve(split, sizes))


def make_settings(*, quick=False, **overrides) -> Settings:
    """The full study's settings, or the miniature (``quick``: 2×2 grids, 2-point 1-D grids,
    2 epochs, 1 seed, 2 pilots of 1 epoch), with ``overrides`` (None values ignored)."""
    base = {}
    if quick:
        base = {"epochs": 2, "seeds": (1,), "score_epochs": 1, "eta_grid": (0.05, 0.2),
                "lambda_points": 2, "lambda_factor": 4.0, "eta_lambda_points": 2,
                "sphere_points": 2, "pilot_etas": (0.03, 0.3), "pilot_epochs": 1,
                "quick": True}
    base.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(base) - {f.name for f in dataclasses.fields(Settings)})
    if unknown:
        raise ValueError(f"Unknown study setting(s) {unknown}; valid: "
                         f"{[f.name for f in dataclasses.fields(Settings)]}. "
                         f"Received: overrides={ {k: base[k] for k in unknown} !r}")
    if base.get("pilot_epochs") is None:
        base["pilot_epochs"] = base.get("epochs", Settings.epochs)
    if "score_epochs" not in base and isinstance(base.get("epochs"), int):
        base["score_epochs"] = max(1, min(Settings.score_epochs, base["epochs"]))
    s = Settings(**base)
    check_number("epochs", s.epochs, low=1, integer=True)
    check_number("batch_size", s.batch_size, low=1, integer=True)
    check_number("momentum", s.momentum, low=0, high=1, high_inclusive=False)
    check_number("steps_per_execution", s.steps_per_execution, low=1, integer=True)
    check_number("score_epochs", s.score_epochs, low=1, high=s.epochs, integer=True)
    check_number("workers", s.workers, low=1, integer=True)
    check_number("pilot_epochs", s.pilot_epochs, low=1, integer=True)
    if not isinstance(s.reference, bool):
        raise ValueError(f"Argument `reference` must be True or False. "
                         f"{received('reference', s.reference)}")
    check_number("n_tau", s.n_tau, low=0, low_inclusive=False)
    check_number("lambda_factor", s.lambda_factor, low=1, low_inclusive=False)
    check_number("sphere_below", s.sphere_below, low=1)
    for name in ("lambda_points", "eta_lambda_points", "sphere_points"):
        check_number(name, getattr(s, name), low=1, integer=True)
    if not s.seeds or len(set(s.seeds)) != len(s.seeds) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in s.seeds):
        raise ValueError(f"Argument `seeds` must be a non-empty tuple of distinct ints. "
                         f"{received('seeds', s.seeds)}")
    for name in ("eta_grid", "pilot_etas"):
        values = getattr(s, name)
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 and math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"Argument `{name}` must be a non-empty tuple of numbers > 0. "
                             f"{received(name, values)}")
    if s.decay_scope not in DECAY_SCOPES:
        raise ValueError(f"Argument `decay_scope` must be one of {list(DECAY_SCOPES)}. "
                         f"{received('decay_scope', s.decay_scope)}")
    if s.backend not in ("tensorflow", "jax", "torch"):
        raise ValueError(f"Argument `backend` must be 'tensorflow', 'jax' or 'torch'. "
                         f"{received('backend', s.backend)}")
    return s


# ------------------------------------------------------------------------------ the theory
def eta_lambda_floor(total_steps, n_tau=3.0) -> float:
    """The smallest ηλ whose runs reach equilibrium: ``n_tau`` relaxation times ``1/(2ηλ)``
    in ``total_steps`` steps, i.e. ``ηλ = n_tau / (2·total_steps)``."""
    check_number("total_steps", total_steps, low=1)
    check_number("n_tau", n_tau, low=0, low_inclusive=False)
    return n_tau / (2.0 * total_steps)


def log_grid(low, high, n) -> list[float]:
    """``n`` log-spaced values from ``low`` to ``high`` (both included; ``[low]`` for n=1)."""
    check_number("low", low, low=0, low_inclusive=False)
    check_number("high", high, low=low)
    check_number("n", n, low=1, integer=True)
    if n == 1:
        return [float(low)]
    r = (high / low) ** (1.0 / (n - 1))
    return [float(low * r ** i) for i in range(n)]


def equilibrium_theta(arm, eta, lam, momentum) -> float:
    """The predicted equilibrium angular update per step (rad) of a BN'd kernel for an arm's
    point: decoupled arms ``sqrt(2ηλ(1−α)/(1+α))``, coupled ``sqrt(2ηλ/(1+α))`` (λ the
    PyTorch-style coefficient, penalty (λ/2)·Σw²); NaN for the sphere arm (no λ)."""
    if arm not in ALL_ARMS:
        raise ValueError(f"Argument `arm` must be one of {list(ALL_ARMS)}. "
                         f"{received('arm', arm)}")
    if arm in ("sphere", REFERENCE) or not lam:
        return float("nan")
    if arm == "coupled":
        return equilibrium_angular_update("sgd", learning_rate=eta, l2=lam / 2.0,
                                          momentum=momentum)
    return equilibrium_angular_update("sgd", learning_rate=eta, weight_decay=lam,
                                      momentum=momentum)


def fit_rate(etas, thetas) -> dict:
    """Fit ``Δθ = c·η^p`` through pilot measurements (``p = 1`` for a single one):
    ``{"c", "p"}``. The sphere theory says ``Δθ ≈ η·‖∇f(ŵ)‖·gain`` (p = 1 at a fixed gradient
    norm); the fitted p says how the gradient norm changes with η."""
    etas, thetas = [float(e) for e in etas], [float(t) for t in thetas]
    if not etas or len(etas) != len(thetas) or not all(
            math.isfinite(v) and v > 0 for v in etas + thetas):
        raise ValueError(f"Arguments `etas` and `thetas` must be equally long non-empty lists "
                         f"of numbers > 0. Received: etas={etas!r}, thetas={thetas!r}")
    if len(set(etas)) == 1:
        return {"c": float(np.mean(thetas)) / etas[0], "p": 1.0}
    p, log_c = np.polyfit(np.log(etas), np.log(thetas), 1)
    if not p > 0.2:  # a flat or inverted fit would blow the grid up: keep the theory's p = 1
        return {"c": float(np.exp(np.mean(np.log(thetas) - np.log(etas)))), "p": 1.0,
                "fitted_p": float(p)}
    return {"c": float(np.exp(log_c)), "p": float(p)}


def sphere_eta_grid(theta_min, theta_max, n, rate) -> list[float]:
    """The sphere arm's η grid: ``n`` log-spaced target angles from ``theta_min`` to
    ``theta_max``, each mapped back through ``rate`` (``{"c", "p"}`` of :func:`fit_rate`):
    ``η = (Δθ/c)^(1/p)``."""
    c, p = float(rate["c"]), float(rate["p"])
    check_number("rate['c']", c, low=0, low_inclusive=False)
    check_number("rate['p']", p, low=0, low_inclusive=False)
    return [float((t / c) ** (1.0 / p)) for t in log_grid(theta_min, theta_max, n)]


def arm_grids(settings: Settings, rate=None) -> dict:
    """``{arm: [point, ...]}``, a point being ``{"eta", "lambda", "eta_lambda",
    "theta_pred"}`` (λ None for the sphere arm); the sphere arm needs ``rate`` (else it is
    left out). Also returns the shared facts under ``"_facts"``."""
    s = settings
    etas = sorted(float(e) for e in s.eta_grid)
    floor = eta_lambda_floor(s.total_steps(), s.n_tau)
    lam_min = floor / etas[0]
    lams = [lam_min * s.lambda_factor ** i for i in range(s.lambda_points)]
    a = s.momentum

    def point(arm, eta, lam):
        return {"eta": eta, "lambda": lam, "eta_lambda": None if lam is None else eta * lam,
                "theta_pred": equilibrium_theta(arm, eta, lam, a)}

    grids = {"decoupled": [point("decoupled", e, lam) for e in etas for lam in lams],
             "coupled": [point("coupled", e, lam * (1 - a)) for e in etas for lam in lams]}
    el = [p["eta_lambda"] for p in grids["decoupled"]]
    e0 = float(s.eta_lambda_eta)
    grids["eta_lambda"] = [point("eta_lambda", e0, v / e0)
                           for v in log_grid(min(el), max(el), s.eta_lambda_points)]
    thetas = [p["theta_pred"] for p in grids["decoupled"]]
    theta_min, theta_max = min(thetas), max(thetas)
    sphere_lo = theta_min / float(s.sphere_below)
    if rate is not None:
        grids["sphere"] = [point("sphere", e, None)
                           for e in sphere_eta_grid(sphere_lo, theta_max, s.sphere_points, rate)]
        for p, t in zip(grids["sphere"], log_grid(sphere_lo, theta_max, s.sphere_points),
                        strict=True):
            p["theta_target"] = t
    if s.reference:
        grids[REFERENCE] = [point(REFERENCE, e, None) for e in etas]
    grids["_facts"] = {"eta_lambda_min": floor, "lambda_grid": lams,
                       "theta_min": theta_min, "theta_max": theta_max,
                       "sphere_theta_min": sphere_lo,
                       "total_steps": s.total_steps(), "steps_per_epoch": s.steps_per_epoch(),
                       "tau_steps_max": 1.0 / (2.0 * floor)}
    return grids


# ------------------------------------------------------------------------------ search statistic
def geometric_quantile(p, q):
    """Smallest k with ``1 − (1 − p)^k ≥ q``: the q-quantile of the trials a search needs when
    each draw reaches the target with probability ``p`` (None when p = 0)."""
    check_number("p", p, low=0, high=1)
    check_number("q", q, low=0, high=1, low_inclusive=False, high_inclusive=False)
    if p == 0:
        return None
    if p == 1:
        return 1
    return max(1, math.ceil(math.log(1 - q) / math.log(1 - p) - 1e-12))


def search_trials(scores_by_point, target, *, budget, searches=500, seed=0, replace=True):
    """Trials random search needs to reach ``target``, replayed against a table.

    Args:
        scores_by_point: one list of scores per grid point (one score per training seed).
        target: the score to reach (``>=``).
        budget: trials per search; a search that has not reached ``target`` by then missed.
        searches: how many searches.
        seed: of the NumPy generator.
        replace: True: each trial draws a grid point uniformly *with* replacement; False: the
            grid points in a random order (at most ``len(scores_by_point)`` trials). Either
            way the search sees the score of one training seed of the point, drawn uniformly.

    Returns:
        ``{"trials": [k or None per search], "median", "p90" (None: more than ``budget``),
        "missed" (fraction of searches that never reached it), "p_hit" (share of the
        point × seed scores that reach it), "budget", "searches"}``. The quantiles are the
        smallest k whose empirical CDF (misses counted as > budget) reaches 0.5 / 0.9.
    """
    pts = [np.asarray(s, float).ravel() for s in scores_by_point]
    if not pts or any(p.size == 0 for p in pts):
        raise ValueError(f"Argument `scores_by_point` must be a non-empty list of non-empty "
                         f"score lists. {received('scores_by_point', scores_by_point)}")
    check_number("target", target)
    check_number("budget", budget, low=1, integer=True)
    check_number("searches", searches, low=1, integer=True)
    if not replace and budget > len(pts):
        raise ValueError(f"Argument `budget` must be at most the {len(pts)} grid points "
                         f"without replacement. {received('budget', budget)}")
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(searches):
        idx = (rng.integers(len(pts), size=budget) if replace
               else rng.permutation(len(pts))[:budget])
        hit = None
        for k, i in enumerate(idx, 1):
            if pts[i][rng.integers(pts[i].size)] >= target:
                hit = k
                break
        trials.append(hit)
    censored = np.array([t if t is not None else math.inf for t in trials])
    quant = {}
    for name, q in (("median", 0.5), ("p90", 0.9)):
        v = float(np.quantile(censored, q, method="inverted_cdf"))
        quant[name] = int(v) if math.isfinite(v) else None
    allv = np.concatenate(pts)
    return {"trials": trials, **quant, "missed": float(np.mean(~np.isfinite(censored))),
            "p_hit": float(np.mean(allv >= target)), "budget": int(budget),
            "searches": int(searches)}


# ------------------------------------------------------------------------------ summary
def summarize(runs, arms=ALL_ARMS) -> dict:
    """Per arm, its grid points with their scores over seeds: ``{arm: [point, ...]}`` with
    ``point = {"eta", "lambda", "eta_lambda", "theta_pred", "theta_measured", "scores",
    "mean", "std", "diverged"}`` (std over seeds, ddof=1; 0 for one seed), in grid order."""
    out = {}
    for arm in arms:
        points = {}
        for r in runs:
            if r["arm"] != arm or r.get("pilot"):
                continue
            points.setdefault(r["point"], []).append(r)
        rows = []
        for key in sorted(points):
            rs = sorted(points[key], key=lambda r: r["seed"])
            scores = [r["score"] for r in rs]
            first = rs[0]
            meas = [r["theta_measured"] for r in rs if r.get("theta_measured") is not None
                    and math.isfinite(r["theta_measured"])]
            rows.append({"point": key, "eta": first["eta"], "lambda": first["lambda"],
                         "eta_lambda": first["eta_lambda"], "theta_pred": first["theta_pred"],
                         "theta_measured": float(np.mean(meas)) if meas else float("nan"),
                         "unit_norm": float(np.mean([r["unit_norm"] for r in rs])),
                         "scores": scores, "seeds": [r["seed"] for r in rs],
                         "mean": float(np.mean(scores)),
                         "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
                         "diverged": sum(bool(r["diverged"]) for r in rs)})
        out[arm] = rows
    return out


def analyse(summary, *, searches=500, seed=0) -> dict:
    """The per-arm verdict numbers: best point, trials used, and the search statistic against
    the target ``best of the four arms − its seed std`` (also against the pooled seed std);
    the reference arm gets the same numbers against the same target, and sets nothing."""
    arms = [a for a in ARMS if summary.get(a)]
    best = {a: max(summary[a], key=lambda p: p["mean"]) for a in ALL_ARMS if summary.get(a)}
    overall_arm = max(arms, key=lambda a: best[a]["mean"])
    top = best[overall_arm]
    variances = [p["std"] ** 2 for a in arms for p in summary[a] if len(p["scores"]) > 1]
    pooled = float(math.sqrt(np.mean(variances))) if variances else 0.0
    targets = {"best_std": top["mean"] - top["std"], "pooled_std": top["mean"] - pooled}
    out = {"overall_arm": overall_arm, "best_mean": top["mean"], "best_std": top["std"],
           "pooled_std": pooled, "targets": targets, "arms": {}}
    for a in (a for a in ALL_ARMS if summary.get(a)):
        pts = summary[a]
        budget = sum(len(p["scores"]) for p in pts)
        stats = {name: search_trials([p["scores"] for p in pts], t, budget=budget,
                                     searches=searches, seed=seed + 7919 * ALL_ARMS.index(a))
                 for name, t in targets.items()}
        for v in stats.values():
            v.pop("trials")
        b = best[a]
        out["arms"][a] = {"best": {k: b[k] for k in ("eta", "lambda", "eta_lambda", "mean",
                                                     "std", "scores", "theta_pred",
                                                     "theta_measured")},
                          "points": len(pts), "seeds": len(pts[0]["scores"]),
                          "trials_used": budget, "search": stats,
                          "reaches_target": b["mean"] >= targets["best_std"]}
    return out


# ------------------------------------------------------------------------------ one run
def _recipe(settings: Settings, arm, point, seed, epochs, name="eta_only"):
    s = settings
    base = nr_config.resolve({
        "name": name,
        "model": {"arch": s.arch, "norm": s.norm},
        "data": {"dataset": s.dataset, "batch_size": s.batch_size,
                 "train_split": s.train_split, "validation_split": s.validation_split},
        "optimizer": {"learning_rate": point["eta"], "momentum": s.momentum},
        "schedule": {"kind": "constant"},
        "train": {"epochs": epochs, "seed": seed, "verbose": 0}})
    decay = DECAY_MODE[arm]
    raw_space = {"norms": [s.norm], "decay": [decay], "learning_rate": point["eta"]}
    if nr_space.DECAY_MODES[decay][0]:
        raw_space["lambda"] = point["lambda"]
    space = nr_space.resolve_space(raw_space)
    trial = {"norm": s.norm, "decay": decay, "learning_rate": point["eta"],
             "lambda": point["lambda"] if nr_space.DECAY_MODES[decay][0] else None}
    cfg = nr_space.trial_recipe(base, trial, space, name)
    if s.decay_scope == "scale_invariant" and decay in ("decoupled", "l2"):
        invariant, others = kernel_paths(s.arch, s.norm)
        if decay == "decoupled":  # the other kernels join the exclusion rules
            cfg["optimizer"]["exclude"] = [*cfg["optimizer"]["exclude"],
                                           *(selectors.exact_path(p) for p in others)]
        else:  # the penalty on the scale-invariant kernels only
            cfg["regularization"]["targets"] = [selectors.exact_path(p) for p in invariant]
        cfg = nr_config.resolve(nr_config.drop_none(cfg))
    return cfg


@functools.lru_cache(maxsize=8)
def kernel_paths(arch, norm):
    """``(scale-invariant kernels, other kernels)`` of the zoo model: variable paths."""
    model = zoo.create(arch, norm=norm)
    found = {p for p, v in find_scale_invariant(model).items() if v.invariant}
    kernels = [v.path for v in model.trainable_variables if v.path.endswith("/kernel")]
    return (tuple(p for p in kernels if p in found), tuple(p for p in kernels if p not in found))


class _ValScore(keras.callbacks.Callback):
    """Validation accuracy and loss at the end of the chosen epochs (one forward pass over the
    held-out arrays, no compiled evaluate function)."""

    def __init__(self, x, y, epochs):
        super().__init__()
        self.x, self.y, self.epochs, self.values = x, y, set(epochs), {}

    def measure(self):
        logits = keras.ops.convert_to_numpy(self.model(self.x, training=False))
        logits = logits.astype(np.float64)
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        acc = float(np.mean(np.argmax(logits, axis=1) == self.y))
        loss = float(-np.mean(logp[np.arange(len(self.y)), self.y]))
        return acc, loss

    def on_epoch_end(self, epoch, logs=None):
        if epoch in self.epochs:
            self.values[epoch] = self.measure()


def _compile(model, cfg, steps, spe, optimizer=None):
    optimizer = optimizer or nr_train.build_optimizer(cfg, steps, model)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], steps_per_execution=spe)
    return model


def _conv_means(monitor):
    """Means over the last epoch's monitored steps and over the tracked (BN'd conv) kernels."""
    out = {}
    for metric in ("unit_angular_update", "unit_norm", "unit_effective_lr", "angular_update",
                   "predicted_angular_update"):
        vals = []
        for h in monitor.history.values():
            if metric in h and len(h[metric]):
                last = h["epoch"] == np.max(h["epoch"])
                vals.append(float(np.mean(np.asarray(h[metric])[last])))
        out[metric] = float(np.mean(vals)) if vals else float("nan")
    return out


def train_one(task) -> dict:
    """One training run (in a worker process): ``task`` = ``{"settings": dict, "arm", "point"
    (its index), "grid_point" (η, λ, ...), "seed", "epochs", "pilot"}``; returns its record."""
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v
                    for k, v in task["settings"].items()})
    arm, gp, seed, epochs = task["arm"], task["grid_point"], task["seed"], task["epochs"]
    t0 = time.perf_counter()
    keras.backend.clear_session()
    cfg = _recipe(s, arm, gp, seed, epochs)
    # TensorFlow combines the global seed with tf.data's op seeds: set it before building the
    # data streams, so that a run's batches do not depend on the runs before it in this worker
    keras.utils.set_random_seed(seed)
    data = nr_train.prepare_data(cfg)
    xv, yv = _validation_arrays(s.dataset, s.validation_split)
    keras.utils.set_random_seed(seed)
    model = nr_train.build_model(cfg)
    _compile(model, cfg, data.steps, s.steps_per_execution)
    treated = _treatment(model)
    score_epochs = range(epochs - s.score_epochs, epochs)
    val = _ValScore(xv, yv, score_epochs)
    nan = keras.callbacks.TerminateOnNaN()
    monitor = NormMonitor(every_n_steps=1, layers="scale_invariant", per_unit=True, warn=False)
    losses = []
    if epochs > 1:
        hist = model.fit(data.train, epochs=epochs - 1, steps_per_epoch=data.steps,
                         callbacks=[val, nan], shuffle=False, verbose=0)
        losses += hist.history["loss"]
    if not _bad(losses):
        # the last epoch one step per call, monitored: same optimizer (its state kept), the
        # data stream from that epoch on
        last = nr_train.prepare_data(cfg, start_epoch=epochs - 1)
        if s.steps_per_execution > 1:
            _compile(model, cfg, data.steps, 1, optimizer=model.optimizer)
        hist = model.fit(last.train, initial_epoch=epochs - 1, epochs=epochs,
                         steps_per_epoch=data.steps, callbacks=[val, nan, monitor],
                         shuffle=False, verbose=0)
        losses += hist.history["loss"]
    diverged = _bad(losses)
    if diverged or not val.values:
        acc, vloss = val.measure()
        scores = [acc]
    else:
        scores = [val.values[e][0] for e in sorted(val.values)]
        vloss = val.values[max(val.values)][1]
    means = _conv_means(monitor) if monitor.history else {}
    rec = {"arm": arm, "point": task["point"], "seed": seed, "pilot": bool(task.get("pilot")),
           "eta": gp["eta"], "lambda": gp["lambda"], "eta_lambda": gp["eta_lambda"],
           "theta_pred": gp["theta_pred"], "epochs": epochs,
           "score": float(np.mean(scores)), "val_accuracy_last": scores,
           "val_loss": vloss, "train_loss": float(losses[-1]) if losses else float("nan"),
           "diverged": bool(diverged),
           "theta_measured": means.get("unit_angular_update", float("nan")),
           "theta_whole_kernel": means.get("angular_update", float("nan")),
           "theta_pred_monitor": means.get("predicted_angular_update", float("nan")),
           "unit_norm": means.get("unit_norm", float("nan")),
           "unit_effective_lr": means.get("unit_effective_lr", float("nan")),
           "treatment": treated, "seconds": round(time.perf_counter() - t0, 2),
           "worker": os.getpid(), "rss_mb": _rss_mb()}
    keras.backend.clear_session()
    return rec


def _rss_mb():
    """This process's resident memory in MiB (None where /proc is not there)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    return None


def _treatment(model) -> dict:
    """What λ acts on: ``{"decay": [...], "sphere": [...], "penalty": [...]}`` (variable
    paths decayed by the decoupled optimizer, kept on the sphere, or carrying a
    regularizer)."""
    out = {"decay": [], "sphere": [], "penalty": []}
    plan = getattr(model.optimizer, "decay_plan", None)
    if plan is not None:
        decays = float(getattr(model.optimizer, "weight_decay", 0.0) or 0.0) > 0
        for path, kind in plan(model.trainable_variables).items():
            if kind == "sphere" or (kind == "decay" and decays):
                out[kind].append(path)
    out["penalty"] = [v.path for v in model.trainable_variables
                      if getattr(v, "regularizer", None) is not None]
    return out


@functools.lru_cache(maxsize=4)
def _validation_arrays(dataset, split):
    """The held-out examples, read once per worker process."""
    return nr_data.arrays(dataset, split)


def _bad(losses):
    return any(not math.isfinite(v) for v in losses)


# ------------------------------------------------------------------------------ the study
def estimate_seconds(n_runs, epochs, *, workers, s_per_epoch=None, overhead_s=None,
                     extra_runs=0, extra_epochs=0) -> float:
    """Wall time estimate: ``(n_runs × (epochs × s/epoch + overhead) + extra) / workers``."""
    spe = MEASURED_TIMING["s_per_epoch"] if s_per_epoch is None else s_per_epoch
    ovh = MEASURED_TIMING["overhead_s"] if overhead_s is None else overhead_s
    work = n_runs * (epochs * spe + ovh) + extra_runs * (extra_epochs * spe + ovh)
    return work / workers


def _plan_lines(settings, grids) -> list[str]:
    s = settings
    f = grids["_facts"]
    lines = [f"cnn1d + {s.norm} norm on {s.dataset}: train {s.train_split}, validation "
             f"{s.validation_split}; batch {s.batch_size}, {f['steps_per_epoch']} steps/epoch, "
             f"{s.epochs} epochs = {f['total_steps']} steps; SGD momentum {s.momentum}, "
             f"constant η; seeds {list(s.seeds)}; backend {s.backend}, {s.workers} worker(s)",
             f"equilibrium: ηλ >= {f['eta_lambda_min']:.3g} (= {s.n_tau:g}/(2·{f['total_steps']}"
             f")); Δθ range {f['theta_min']:.3g}..{f['theta_max']:.3g} rad/step"]
    for arm in ALL_ARMS:
        pts = grids.get(arm)
        if arm == REFERENCE and pts is None:
            continue
        if pts is None:
            lines.append(f"({LETTERS[arm]}) {arm}: {s.sphere_points} η points × "
                         f"{len(s.seeds)} seeds after the pilot (η = {list(s.pilot_etas)}, "
                         f"{s.pilot_epochs} epochs), aimed at Δθ "
                         f"{f['sphere_theta_min']:.3g}..{f['theta_max']:.3g} rad/step")
            continue
        etas = sorted({p["eta"] for p in pts})
        lams = sorted({p["lambda"] for p in pts if p["lambda"] is not None})
        lines.append(f"({LETTERS[arm]}) {arm}: {len(pts)} points × {len(s.seeds)} seeds; "
                     f"η {_short(etas)}" + (f", λ {_short(lams)}" if lams else ""))
    return lines


def _short(values):
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def _n_runs(settings):
    """Training runs of the grids (the pilots not counted)."""
    s = settings
    n_2d = len(s.eta_grid) * s.lambda_points
    n_ref = len(s.eta_grid) if s.reference else 0
    return (2 * n_2d + s.eta_lambda_points + s.sphere_points + n_ref) * len(s.seeds)


def run_study(settings: Settings | None = None, out_dir=DEFAULT_OUT, *, command=None,
              verbose=1, searches=500) -> dict:
    """Run the study, write ``results.json`` and render the report (:func:`render`).

    Returns the results dict (``results["report"]`` is the Markdown file's path)."""
    s = settings or make_settings()
    if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir).strip():
        raise ValueError(f"Argument `out_dir` must be a path. {received('out_dir', out_dir)}")
    out_dir = os.fspath(out_dir).rstrip("/\\")
    command = command or "python -m experiments.eta_only" + (" --quick" if s.quick else "")
    grids = arm_grids(s)
    n_runs = _n_runs(s)
    est = estimate_seconds(n_runs, s.epochs, workers=s.workers,
                           extra_runs=len(s.pilot_etas), extra_epochs=s.pilot_epochs)

    def say(msg):
        if verbose:
            print(msg, flush=True)

    for line in _plan_lines(s, grids):
        say(line)
    say(f"estimate: {n_runs} runs × {s.epochs} epochs × {MEASURED_TIMING['s_per_epoch']} s/epoch"
        f" + {n_runs} × {MEASURED_TIMING['overhead_s']} s overhead, + {len(s.pilot_etas)} "
        f"pilot runs, over {s.workers} worker(s): ~{est / 60:.1f} min "
        f"(timing measured {MEASURED_TIMING['measured']})")
    os.makedirs(out_dir, exist_ok=True)
    t_start = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sdict = dataclasses.asdict(s)
    env = _worker_env(s)
    runs, done = [], [0]
    total = n_runs + len(s.pilot_etas)
    # every finished run, as it finishes (for a look during the study, or after a crash; the
    # study does not read it back: a new study starts from nothing); removed at the end
    partial = os.path.join(out_dir, "partial_runs.jsonl")
    with open(partial, "w"):
        pass

    def collect(fut):
        rec = fut.result()
        runs.append(rec)
        with open(partial, "a") as f:
            f.write(json.dumps(rec, default=_json_default) + "\n")
        done[0] += 1
        elapsed = time.perf_counter() - t_start
        lam = "" if rec["lambda"] is None else f" λ={rec['lambda']:.3g}"
        tag = "pilot" if rec["pilot"] else f"({LETTERS[rec['arm']]})"
        say(f"[{done[0]}/{total}] {tag} η={rec['eta']:.3g}{lam} seed {rec['seed']}: "
            f"val {rec['score']:.4f}, Δθ {rec['theta_measured']:.3g}"
            f"{' DIVERGED' if rec['diverged'] else ''} ({rec['seconds']:.0f} s; "
            f"{elapsed / 60:.1f} min elapsed)")
        return rec

    def tasks_for(arm, points):
        return [{"settings": sdict, "arm": arm, "point": i, "grid_point": gp, "seed": seed,
                 "epochs": s.epochs} for i, gp in enumerate(points) for seed in s.seeds]

    ctx = multiprocessing.get_context("spawn")
    with environ(env), concurrent.futures.ProcessPoolExecutor(
            max_workers=s.workers, mp_context=ctx) as pool:
        pilots = [pool.submit(train_one, {
            "settings": sdict, "arm": "sphere", "point": -1 - i, "seed": s.seeds[0],
            "epochs": s.pilot_epochs, "pilot": True,
            "grid_point": {"eta": float(e), "lambda": None, "eta_lambda": None,
                           "theta_pred": float("nan")}}) for i, e in enumerate(s.pilot_etas)]
        futures = [pool.submit(train_one, t)
                   for arm in ("decoupled", "eta_lambda", "coupled", REFERENCE)
                   if arm in grids for t in tasks_for(arm, grids[arm])]
        pilot_recs = [collect(f) for f in pilots]
        usable = [r for r in pilot_recs if not r["diverged"] and math.isfinite(
            r["theta_measured"]) and r["theta_measured"] > 0]
        if not usable:
            raise RuntimeError(f"Every sphere pilot run diverged or did not turn (η = "
                               f"{list(s.pilot_etas)}): choose smaller pilot_etas. Received: "
                               f"pilot_etas={s.pilot_etas!r}")
        rate = fit_rate([r["eta"] for r in usable], [r["theta_measured"] for r in usable])
        grids = arm_grids(s, rate)
        say(f"pilot: Δθ/η = {[round(r['theta_measured'] / r['eta'], 4) for r in pilot_recs]} "
            f"at η = {[r['eta'] for r in pilot_recs]} -> Δθ = {rate['c']:.4g}·η^{rate['p']:.3g}"
            f"; sphere η grid {_short([p['eta'] for p in grids['sphere']])}")
        futures += [pool.submit(train_one, t) for t in tasks_for("sphere", grids["sphere"])]
        for f in concurrent.futures.as_completed(futures):
            collect(f)
    results = {
        "command": command, "date": date, "total_seconds": round(time.perf_counter() - t_start, 1),
        "estimate_seconds": round(est, 1), "settings": sdict,
        "grids": {a: grids[a] for a in ALL_ARMS if a in grids}, "facts": grids["_facts"],
        "pilot": {"runs": pilot_recs, "rate": rate}, "runs": sorted(
            (r for r in runs if not r["pilot"]),
            key=lambda r: (ALL_ARMS.index(r["arm"]), r["point"], r["seed"])),
        "versions": _versions(s), "searches": searches,
        "timing": dict(MEASURED_TIMING)}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=_json_default)
    os.remove(partial)
    report = render(out_dir)
    results["report"] = report
    say(f"report: {report} ({results['total_seconds'] / 60:.1f} min)")
    return results


def calibrate(settings: Settings | None = None, *, verbose=1) -> dict:
    """Time one full-length run per arm (the middle grid point, the first seed; the sphere arm
    at η = the fixed η of arm (d)) on ``settings.workers`` workers, as the study runs them, and
    extrapolate the study's wall time: ``{"runs": [record, ...], "s_per_run", "estimate_s"}``."""
    s = settings or make_settings()
    grids = arm_grids(s)
    sdict = dataclasses.asdict(s)
    e0 = float(s.eta_lambda_eta)
    points = {a: grids[a][len(grids[a]) // 2] for a in ("decoupled", "coupled", "eta_lambda")}
    points["sphere"] = {"eta": e0, "lambda": None, "eta_lambda": None,
                        "theta_pred": float("nan")}
    tasks = [{"settings": sdict, "arm": a, "point": 0, "grid_point": points[a],
              "seed": s.seeds[0], "epochs": s.epochs} for a in ARMS]
    t0 = time.perf_counter()
    with environ(_worker_env(s)), concurrent.futures.ProcessPoolExecutor(
            max_workers=s.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        recs = list(pool.map(train_one, tasks))
    wall = time.perf_counter() - t0
    # a worker's first run also pays for the backend's start-up (once per worker)
    firsts, later, seen = [], [], set()
    for r in recs:
        (later if r["worker"] in seen else firsts).append(r["seconds"])
        seen.add(r["worker"])
    later = later or firsts
    per_run = float(np.mean(later))
    startup = max(0.0, float(np.mean(firsts)) - per_run)
    n = _n_runs(s)
    est = (n + len(s.pilot_etas)) * per_run / s.workers + startup
    if verbose:
        for r in recs:
            lam = "" if r["lambda"] is None else f", λ={r['lambda']:.3g}"
            print(f"({LETTERS[r['arm']]}) {r['arm']}: η={r['eta']:.3g}{lam}, {r['epochs']} epochs:"
                  f" {r['seconds']:.1f} s (val {r['score']:.4f}, Δθ {r['theta_measured']:.3g})")
        print(f"{len(recs)} runs on {s.workers} worker(s) in {wall:.0f} s; {per_run:.1f} s per "
              f"run after a worker's first (+{startup:.0f} s start-up) -> the study's {n} runs + "
              f"{len(s.pilot_etas)} pilots: ~{est / 60:.1f} min")
    return {"runs": recs, "s_per_run": per_run, "startup_s": startup, "wall_s": wall,
            "estimate_s": est}


def _worker_env(s):
    """The workers' environment: the backend, and the cores shared out as TF/OpenMP threads."""
    threads = max(1, (os.cpu_count() or 1) // s.workers)
    env = {"KERAS_BACKEND": s.backend, "TF_NUM_INTRAOP_THREADS": threads,
           "TF_NUM_INTEROP_THREADS": 1, "OMP_NUM_THREADS": threads, "TF_CPP_MIN_LOG_LEVEL": 2}
    if threads == 1:  # XLA's CPU client (JAX) on one thread too
        env["XLA_FLAGS"] = " ".join(filter(None, (
            os.environ.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false",
            "intra_op_parallelism_threads=1")))
    return env


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def _versions(s):
    out = {"python": platform.python_version(), "keras": keras.__version__,
           "numpy": np.__version__, "backend": s.backend, "machine": platform.machine(),
           "cpus": os.cpu_count()}
    with contextlib.suppress(Exception):
        import tensorflow as tf  # heavy external package: only for its version

        out["tensorflow"] = tf.__version__
    with contextlib.suppress(Exception):
        import jax  # heavy external package: only for its version

        out["jax"] = jax.__version__
    out["threads_per_worker"] = _worker_env(s)["TF_NUM_INTRAOP_THREADS"]
    return out


# ------------------------------------------------------------------------------ outputs
def render(out_dir=DEFAULT_OUT, template=None) -> str:
    """Write ``table.csv``, the figures and ``<out_dir>.md`` from ``<out_dir>/results.json``;
    return the report's path."""
    out_dir = os.fspath(out_dir).rstrip("/\\")
    results = load_results(out_dir)
    summary = summarize(results["runs"])
    analysis = analyse(summary, searches=results.get("searches", 500))
    _write_table(os.path.join(out_dir, "table.csv"), summary)
    _plots(out_dir, results, summary, analysis)
    path = out_dir + ".md"
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_report(results, summary, analysis, out_dir, template=template))
    return path


def _write_table(path, summary):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "eta", "lambda", "eta_lambda", "theta_pred", "theta_measured",
                     "unit_norm", "mean", "std", "diverged", "scores"])
        for arm in ALL_ARMS:
            for p in summary.get(arm, []):
                w.writerow([arm, _g(p["eta"]), _g(p["lambda"]), _g(p["eta_lambda"]),
                            _g(p["theta_pred"]), _g(p["theta_measured"]), _g(p["unit_norm"]),
                            f"{p['mean']:.4f}", f"{p['std']:.4f}", p["diverged"],
                            " ".join(f"{v:.4f}" for v in p["scores"])])


def _g(x, digits=4):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.{digits}g}"


FIGURES = ("heatmaps", "accuracy_vs_theta", "search")
#: rad/step: a grid point whose units turned by less than this in the last epoch has stopped
#: (a collapsed net: its gradients vanished); the accuracy-vs-angle figure leaves it out
STILL = 1e-5


def _stopped(point) -> bool:
    """Whether a grid point stopped turning (measured Δθ < :data:`STILL`)."""
    return math.isfinite(point["theta_measured"]) and point["theta_measured"] < STILL


def _still_points(summary) -> list[str]:
    """Labels of the grid points that stopped turning."""
    return [f"({LETTERS[a]}) {_point_label(a, p)}" for a in ALL_ARMS for p in summary.get(a, [])
            if _stopped(p)]


def _figure(ncols=1, nrows=1, size=(5.2, 4.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy external package
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=90)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(nrows, ncols, i + 1) for i in range(ncols * nrows)]


def _plots(out_dir, results, summary, analysis):
    # (a), (b): heatmaps of the mean score over the (η, λ) grid
    fig, axes = _figure(2, 1, size=(5.4, 4.4))
    for ax, arm in zip(axes, ("decoupled", "coupled"), strict=True):
        pts = summary.get(arm, [])
        etas = sorted({p["eta"] for p in pts})
        lams = sorted({p["lambda"] for p in pts})
        grid = np.full((len(lams), len(etas)), np.nan)
        for p in pts:
            grid[lams.index(p["lambda"]), etas.index(p["eta"])] = p["mean"]
        im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto",
                       vmin=np.nanmin(grid) if pts else 0, vmax=np.nanmax(grid) if pts else 1)
        for i in range(len(lams)):
            for j in range(len(etas)):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=7,
                        color="w" if grid[i, j] < np.nanmean(grid) else "k")
        ax.set_xticks(range(len(etas)), [f"{e:.3g}" for e in etas])
        ax.set_yticks(range(len(lams)), [f"{v:.3g}" for v in lams])
        ax.set_xlabel("η")
        ax.set_ylabel("λ")
        ax.set_title(f"({LETTERS[arm]}) {arm}: mean val. accuracy", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "heatmaps.png"), bbox_inches="tight")

    # every arm: mean score against the measured angular update of the last epoch
    fig, (ax,) = _figure(1, 1, size=(6.6, 4.4))
    markers = {"decoupled": "o", "coupled": "s", "sphere": "D", "eta_lambda": "^", "none": "x"}
    for i, arm in enumerate(ALL_ARMS):
        pts = [p for p in summary.get(arm, []) if math.isfinite(p["theta_measured"])
               and not _stopped(p)]
        if not pts:
            continue
        ax.errorbar([p["theta_measured"] for p in pts], [p["mean"] for p in pts],
                    yerr=[p["std"] for p in pts], fmt=markers[arm], color=f"C{i}",
                    linestyle="-" if arm in ("sphere", "eta_lambda", REFERENCE) else "none",
                    markersize=5, capsize=2, label=f"({LETTERS[arm]}) {arm}")
    target = analysis["targets"]["best_std"]
    ax.axhline(target, color="k", linestyle=":", linewidth=1,
               label="target: best − its seed std")
    _finish_log_x(fig, ax, "measured angular update of the BN'd conv units, last epoch "
                  "(rad/step)", "val. accuracy (mean over seeds)",
                  os.path.join(out_dir, "accuracy_vs_theta.png"))

    # the search statistic: CDF of the trials to target per arm
    fig, (ax,) = _figure(1, 1, size=(6.2, 4.0))
    for i, arm in enumerate(ALL_ARMS):
        pts = summary.get(arm)
        if not pts:
            continue
        budget = sum(len(p["scores"]) for p in pts)
        st = search_trials([p["scores"] for p in pts], target, budget=budget,
                           searches=results.get("searches", 500), seed=7919 * i)
        ks = np.arange(1, budget + 1)
        hits = np.array([t for t in st["trials"] if t is not None])
        cdf = [(hits <= k).sum() / len(st["trials"]) for k in ks]
        ax.step(ks, cdf, where="post", color=f"C{i}", label=f"({LETTERS[arm]}) {arm}")
    _finish_log_x(fig, ax, "trials (random search, one seed's score per trial)",
                  "share of searches at the target", os.path.join(out_dir, "search.png"))


def _finish_log_x(fig, ax, xlabel, ylabel, path):
    """A log-x line plot's axes, grid and legend, saved to ``path``."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")


# ------------------------------------------------------------------------------ the report
SECTIONS = ("report", "arm_row", "grid_row", "verdict_holds", "verdict_fails",
            "verdict_no_sphere", "search_faster", "search_slower", "search_same",
            "eta_lambda_reaches", "eta_lambda_misses", "diverged_note", "quick_note",
            "duplicate_note", "duplicate_part", "reference_better", "reference_within",
            "reference_arm", "scope_note_invariant", "scope_note_all", "reference_slower",
            "pilot_full", "equilibrium_cost", "cost_beyond", "cost_within", "still_note",
            "limits")


def load_template(path=TEMPLATE) -> dict[str, string.Template]:
    """``{name: string.Template}`` of the ``<!-- @section name -->`` blocks of ``path``."""
    return load_sections(path, SECTIONS, "eta-only")


def _trials(v, budget):
    return f"> {budget}" if v is None else str(v)


def _point_label(arm, p):
    if arm in ("sphere", REFERENCE):
        return f"η = {p['eta']:.3g}"
    if arm == "eta_lambda":
        return f"ηλ = {p['eta_lambda']:.3g} (η = {p['eta']:.3g}, λ = {p['lambda']:.3g})"
    return f"η = {p['eta']:.3g}, λ = {p['lambda']:.3g}"


def render_report(results, summary, analysis, out_dir, template=None) -> str:
    """The Markdown report (what :func:`render` writes to ``<out_dir>.md``)."""
    t = template or load_template()
    s = results["settings"]
    facts = results["facts"]
    base = os.path.basename(os.fspath(out_dir).rstrip("/\\"))
    arms = [a for a in ALL_ARMS if summary.get(a)]
    target = analysis["targets"]["best_std"]
    rows = []
    for a in arms:
        r = analysis["arms"][a]
        st, st2 = r["search"]["best_std"], r["search"]["pooled_std"]
        b = r["best"]
        rows.append(t["arm_row"].substitute(
            letter=LETTERS[a], arm=a, title=TITLES[a], best=_point_label(a, b),
            mean=f"{b['mean']:.4f}", std=f"{b['std']:.4f}", points=r["points"],
            seeds=r["seeds"], trials=r["trials_used"], p_hit=f"{100 * st['p_hit']:.0f}",
            median=_trials(st["median"], st["budget"]), p90=_trials(st["p90"], st["budget"]),
            missed=f"{100 * st['missed']:.0f}", median2=_trials(st2["median"], st2["budget"]),
            missed2=f"{100 * st2['missed']:.0f}"))
    grid_rows = []
    for a in arms:
        for p in summary[a]:
            grid_rows.append(t["grid_row"].substitute(
                letter=LETTERS[a], point=_point_label(a, p), theta_pred=_fmt(p["theta_pred"]),
                theta_measured=_fmt(p["theta_measured"]), unit_norm=_fmt(p["unit_norm"]),
                mean=f"{p['mean']:.4f}", std=f"{p['std']:.4f}",
                scores=", ".join(f"{v:.3f}" for v in p["scores"])))
    verdict = _verdict(t, analysis)
    diverged = sum(p["diverged"] for a in arms for p in summary[a])
    reference = ""
    if REFERENCE in analysis["arms"]:
        ref = analysis["arms"][REFERENCE]["best"]
        facts_ref = {"mean": f"{ref['mean']:.4f}", "std": f"{ref['std']:.4f}",
                     "eta": f"{ref['eta']:.3g}", "theta": _fmt(ref["theta_measured"]),
                     "best_mean": f"{analysis['best_mean']:.4f}",
                     "theta_min": f"{facts['theta_min']:.3g}", "total_steps":
                         facts["total_steps"], "target": f"{target:.4f}"}
        below = math.isfinite(ref["theta_measured"]) and ref["theta_measured"] < facts[
            "theta_min"]
        facts_ref["relation"] = "below" if below else "not below"
        if ref["mean"] - ref["std"] > analysis["best_mean"]:
            reference = "\n\n" + t["reference_better"].substitute(**facts_ref)
            if below:
                reference += " " + t["reference_slower"].substitute()
        else:
            reference = "\n\n" + t["reference_within"].substitute(**facts_ref)
    pilot = results["pilot"]
    rate = pilot["rate"]
    sphere_grid = results["grids"].get("sphere") or []
    ratios = _theta_ratios(summary)
    v = results["versions"]
    return t["report"].substitute(
        command=results["command"], date=results["date"],
        minutes=f"{results['total_seconds'] / 60:.1f}",
        estimate=f"{results['estimate_seconds'] / 60:.1f}",
        quick_note=t["quick_note"].substitute() + "\n\n" if s.get("quick") else "",
        keras=v["keras"], tensorflow=v.get("tensorflow", "?"), backend=v["backend"],
        python=v["python"], workers=s["workers"],
        train_split=s["train_split"], validation_split=s["validation_split"],
        batch_size=s["batch_size"], momentum=f"{s['momentum']:g}", epochs=s["epochs"],
        steps_per_epoch=facts["steps_per_epoch"], total_steps=facts["total_steps"],
        spe=s["steps_per_execution"], seeds=", ".join(str(x) for x in s["seeds"]),
        n_seeds=len(s["seeds"]), score_epochs=s["score_epochs"], n_tau=f"{s['n_tau']:g}",
        eta_lambda_min=f"{facts['eta_lambda_min']:.3g}",
        tau_max=f"{facts['tau_steps_max']:.0f}",
        lambda_min=f"{facts['lambda_grid'][0]:.3g}",
        eta_grid=_short(s["eta_grid"]), lambda_grid=_short(facts["lambda_grid"]),
        lambda_grid_b=_short([x * (1 - s["momentum"]) for x in facts["lambda_grid"]]),
        eta_lambda_eta=f"{s['eta_lambda_eta']:g}",
        eta_lambda_grid=_short([p["eta_lambda"] for p in results["grids"]["eta_lambda"]]),
        eta_lambda_max=f"{max(p['eta_lambda'] for p in results['grids']['eta_lambda']):.3g}",
        theta_min=f"{facts['theta_min']:.3g}", theta_max=f"{facts['theta_max']:.3g}",
        theta_targets=_short([p.get("theta_target", float("nan")) for p in sphere_grid]),
        sphere_below=f"{s.get('sphere_below', 1.0):g}",
        sphere_theta_min=f"{facts.get('sphere_theta_min', facts['theta_min']):.3g}",
        n_pilots=_count_word(len(pilot["runs"])),
        pilot_etas=_short([r["eta"] for r in pilot["runs"]]),
        pilot_epochs=s["pilot_epochs"],
        pilot_length=t["pilot_full"].substitute() if s["pilot_epochs"] == s["epochs"] else "",
        pilot_thetas=_short([r["theta_measured"] for r in pilot["runs"]]),
        pilot_rates=_short([r["theta_measured"] / r["eta"] for r in pilot["runs"]]),
        rate_c=f"{rate['c']:.4g}", rate_p=f"{rate['p']:.3g}",
        sphere_grid=_short([p["eta"] for p in sphere_grid]),
        ratio_decoupled=_fmt(ratios.get("decoupled")), ratio_coupled=_fmt(ratios.get("coupled")),
        ratio_eta_lambda=_fmt(ratios.get("eta_lambda")),
        sphere_theta_range=_theta_range(summary.get("sphere", [])),
        decoupled_theta_range=_theta_range(summary.get("decoupled", [])),
        rows="\n".join(rows), grid_rows="\n".join(grid_rows),
        best_arm=f"({LETTERS[analysis['overall_arm']]}) {analysis['overall_arm']}",
        best_mean=f"{analysis['best_mean']:.4f}", best_std=f"{analysis['best_std']:.4f}",
        target=f"{target:.4f}", pooled_std=f"{analysis['pooled_std']:.4f}",
        target2=f"{analysis['targets']['pooled_std']:.4f}", searches=results.get("searches", 500),
        verdict=verdict, reference_note=reference, limits=t["limits"].substitute(),
        equilibrium_cost=_equilibrium_cost(t, analysis, s, facts),
        still_note=t["still_note"].substitute(points="; ".join(still), still=f"{STILL:g}")
        if (still := _still_points(summary)) else "",
        reference_arm=t["reference_arm"].substitute(eta_grid=_short(s["eta_grid"]))
        if REFERENCE in summary and summary[REFERENCE] else "",
        scope_note="\n" + t["scope_note_" + ("invariant" if s.get("decay_scope", "all") ==
                                             "scale_invariant" else "all")].substitute(),
        diverged_note=" " + t["diverged_note"].substitute(n=diverged) if diverged else "",
        duplicate_note=_duplicates(t, summary),
        data_dir=base, **{f"fig_{k}": f"{base}/{k}.png" for k in FIGURES}) + "\n"


def _duplicates(t, summary) -> str:
    """Points of arm (d) that are also points of arm (a) (same η and λ): both were trained
    (nothing is reused); the sentence compares their results."""
    parts = []
    for d in summary.get("eta_lambda", []):
        for a in summary.get("decoupled", []):
            if math.isclose(d["eta"], a["eta"], rel_tol=1e-9) and math.isclose(
                    d["lambda"], a["lambda"], rel_tol=1e-9):
                parts.append(t["duplicate_part"].substitute(
                    eta=f"{a['eta']:.3g}", lam=f"{a['lambda']:.3g}",
                    scores_a=", ".join(f"{v:.4f}" for v in a["scores"]),
                    scores_d=", ".join(f"{v:.4f}" for v in d["scores"])))
    if not parts:
        return ""
    return " " + t["duplicate_note"].substitute(parts="; ".join(parts))


def equilibrium_steps(theta, momentum, n_tau) -> dict:
    """What decoupled decay needs to settle a scale-invariant kernel at the angle ``theta``
    per step: ``ηλ = Δθ²(1+α)/(2(1−α))`` (the inverse of the equilibrium formula), its
    relaxation time ``τ = 1/(2ηλ)`` and ``n_tau·τ`` steps."""
    check_number("theta", theta, low=0, low_inclusive=False)
    check_number("momentum", momentum, low=0, high=1, high_inclusive=False)
    check_number("n_tau", n_tau, low=0, low_inclusive=False)
    el = theta ** 2 * (1 + momentum) / (2 * (1 - momentum))
    tau = 1.0 / (2.0 * el)
    return {"eta_lambda": el, "tau": tau, "steps": n_tau * tau}


def _equilibrium_cost(t, analysis, s, facts) -> str:
    """The sentence on what reaching the sphere's best angle at equilibrium would cost a
    decayed run ('' without a measured sphere angle)."""
    if "sphere" not in analysis["arms"]:
        return ""
    best = analysis["arms"]["sphere"]["best"]
    theta = best["theta_measured"]
    if not (isinstance(theta, float) and math.isfinite(theta) and theta > 0):
        return ""
    need = equilibrium_steps(theta, s["momentum"], s["n_tau"])
    return "\n\n" + t["equilibrium_cost"].substitute(
        theta=f"{theta:.3g}", eta=f"{best['eta']:.3g}", eta_lambda=f"{need['eta_lambda']:.3g}",
        tau=f"{need['tau']:,.0f}", n_tau=f"{s['n_tau']:g}", steps=f"{need['steps']:,.0f}",
        ratio=f"{need['steps'] / facts['total_steps']:.0f}", total_steps=facts["total_steps"],
        epochs=f"{need['steps'] / facts['steps_per_epoch']:,.0f}",
        consequence=t["cost_beyond" if need["steps"] > facts["total_steps"]
                      else "cost_within"].substitute())


def _count_word(n):
    return {1: "One", 2: "Two", 3: "Three", 4: "Four"}.get(n, str(n))


def _theta_ratios(summary):
    """Median over an arm's points of measured / predicted angular update."""
    out = {}
    for a in ("decoupled", "coupled", "eta_lambda"):
        r = [p["theta_measured"] / p["theta_pred"] for p in summary.get(a, [])
             if math.isfinite(p["theta_measured"]) and p["theta_pred"]
             and math.isfinite(p["theta_pred"])]
        if r:
            out[a] = float(np.median(r))
    return out


def _theta_range(points):
    vals = [p["theta_measured"] for p in points if math.isfinite(p["theta_measured"])]
    if not vals:
        return "–"
    return f"{min(vals):.3g}..{max(vals):.3g}"


def _fmt(x, digits=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def _verdict(t, analysis) -> str:
    arms = analysis["arms"]
    target = analysis["targets"]["best_std"]
    parts = []
    if "sphere" not in arms:
        return t["verdict_no_sphere"].substitute()
    sph = arms["sphere"]
    best2d = max((a for a in ("decoupled", "coupled") if a in arms),
                 key=lambda a: arms[a]["best"]["mean"], default=None)
    facts = {"sphere_mean": f"{sph['best']['mean']:.4f}", "sphere_std": f"{sph['best']['std']:.4f}",
             "target": f"{target:.4f}", "best_mean": f"{analysis['best_mean']:.4f}",
             "best_arm": f"({LETTERS[analysis['overall_arm']]}) {analysis['overall_arm']}",
             "gap": f"{100 * (analysis['best_mean'] - sph['best']['mean']):.1f}",
             "sphere_eta": f"{sph['best']['eta']:.3g}"}
    key = "verdict_holds" if sph["reaches_target"] else "verdict_fails"
    parts.append(t[key].substitute(**facts))
    if best2d is not None and sph["reaches_target"]:
        m_s = sph["search"]["best_std"]["median"]
        m_2 = arms[best2d]["search"]["best_std"]["median"]
        d = {"arm2d": f"({LETTERS[best2d]}) {best2d}",
             "sphere_median": _trials(m_s, sph["trials_used"]),
             "median2d": _trials(m_2, arms[best2d]["trials_used"])}
        if m_s is not None and (m_2 is None or m_s < m_2):
            parts.append(t["search_faster"].substitute(**d))
        elif m_s is not None and m_2 is not None and m_s == m_2:
            parts.append(t["search_same"].substitute(**d))
        else:
            parts.append(t["search_slower"].substitute(**d))
    if "eta_lambda" in arms:
        el = arms["eta_lambda"]
        key = "eta_lambda_reaches" if el["reaches_target"] else "eta_lambda_misses"
        parts.append(t[key].substitute(mean=f"{el['best']['mean']:.4f}",
                                       eta=f"{el['best']['eta']:.3g}",
                                       eta_lambda=f"{el['best']['eta_lambda']:.3g}",
                                       target=f"{target:.4f}"))
    return " ".join(parts)


# ------------------------------------------------------------------------------ command line
def cli(*, epochs=None, out=DEFAULT_OUT, which="eta-only", quick=False, workers=None,
        dry_run=False, render_only=False, calibrate_only=False, settings=None,
        command=None) -> int:
    """The study's command (``keras-normreg study eta-only`` and ``python -m
    experiments.eta_only`` call it); returns the exit code (2: bad arguments). ``settings``:
    more :class:`Settings` fields (``--set name=value``)."""
    try:
        s = make_settings(quick=quick, epochs=epochs, workers=workers, **(settings or {}))
    except ValueError as e:
        print(f"{which}: error: {e}", file=sys.stderr)
        return 2
    if render_only:
        try:
            path = render(out)
        except ValueError as e:
            print(f"{which}: error: {e}", file=sys.stderr)
            return 2
        print(f"report: {path}")
        return 0
    if command is None:
        command = f"keras-normreg study {which}" + ("" if epochs is None else
                                                   f" --epochs {epochs}") + (
            "" if out == DEFAULT_OUT else f" --out {out}")
    if calibrate_only:
        calibrate(s)
        return 0
    if dry_run:
        grids = arm_grids(s)
        for line in _plan_lines(s, grids):
            print(line)
        n = _n_runs(s)
        est = estimate_seconds(n, s.epochs, workers=s.workers, extra_runs=len(s.pilot_etas),
                               extra_epochs=s.pilot_epochs)
        print(f"estimate: {n} runs × {s.epochs} epochs × {MEASURED_TIMING['s_per_epoch']} "
              f"s/epoch + {n} × {MEASURED_TIMING['overhead_s']} s overhead, + "
              f"{len(s.pilot_etas)} pilot runs, over {s.workers} worker(s): ~{est / 60:.1f} min")
        return 0
    run_study(s, out, command=command)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.eta_only",
        description="The eta-only study (issue 17): is tuning η alone enough with the "
                    "BN'd kernels on the sphere? Four arms on MNIST-1D, see the module "
                    "docstring.")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="folder for results.json, table.csv and figures; the report is "
                        "<out>.md (default docs/study_eta_only)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 20)")
    p.add_argument("--workers", type=int, default=None,
                   help="training processes, one TF thread each when 2 on 2 cores (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="miniature: 2x2 / 2-point grids, 2 epochs, 1 seed (~1-2 min)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the estimate")
    p.add_argument("--calibrate", action="store_true",
                   help="time one full-length run per arm on the workers and extrapolate")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="any other study setting (a field of experiments.eta_only.Settings), "
                        "e.g. --set n_tau=2 --set 'eta_grid=(0.05, 0.1, 0.2)' --set "
                        "decay_scope=all --set reference=False")
    p.add_argument("--render", action="store_true",
                   help="only re-render the report and figures from <out>/results.json")
    args = p.parse_args(argv)
    extra = parse_sets(p, args.set)
    parts = ["python -m experiments.eta_only"]
    if args.quick:
        parts.append("--quick")
    if args.epochs is not None:
        parts.append(f"--epochs {args.epochs}")
    if args.workers is not None:
        parts.append(f"--workers {args.workers}")
    if args.out != DEFAULT_OUT:
        parts.append(f"--out {args.out}")
    parts += [f"--set {shlex.quote(item)}" for item in args.set]
    return cli(epochs=args.epochs, out=args.out, which="eta_only", quick=args.quick,
               workers=args.workers, dry_run=args.dry_run, render_only=args.render,
               calibrate_only=args.calibrate, settings=extra, command=" ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
