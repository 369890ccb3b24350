"""Tabular tuning benchmark: search simulations against a table of real training results.

A *table* (written by ``bench_tuning.py --only table``) holds, for each decay mode, the best
validation accuracy of one real training run per point of a log-spaced grid: an
``η × λ`` grid for the modes with λ (``decoupled``, ``l2``), an ``η`` grid for ``unit_norm``.
Searches are then replayed against the table (cheap, so many seeds):

* **lookup** (:func:`lookup`): the score of a point is the table value at the *nearest grid
  point in log space*, per axis (the grids are regular in log, so this is the nearest point of
  the 2-D grid too); a point exactly half-way between two grid values takes the lower one;
  points outside the grid take the edge value. No interpolation: every score is a measured one.
* **arms** (:func:`arms_for`): ``naive`` = η and λ sampled log-uniformly over the box that
  covers the product box (``independent`` parametrization); ``product`` = η and ηλ sampled
  (λ = ηλ/η), the same table; ``unit_norm`` = η only, the unit-norm table (λ removed by the
  constraint).
* **volume fractions** (:func:`volume_scores`, :func:`fraction_reaching`): the share of a
  space's (log-uniform) volume whose score reaches a target, by the midpoint rule on an
  ``n``-point-per-axis grid of the space's own log coordinates (``n = 1000``: exact for the
  naive box up to the cell boundaries falling between nodes, < 0.2 % of its area). Random
  search reaches a target of volume fraction ``p`` after a geometric number of trials:
  mean ``1/p``, median ``ceil(ln 0.5 / ln(1 - p))``, miss probability ``(1-p)^B``.
* **targets** (:func:`targets_from_quantiles`): the score reached by the best ``q`` of the naive
  box's volume (the highest score ``t`` with ``fraction(score >= t) >= q``; ties can make the
  actual fraction larger than ``q``, so it is reported).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = ["log_grid", "nearest_index", "lookup", "table_objective", "arms_for",
           "volume_scores", "fraction_reaching", "targets_from_quantiles",
           "random_search_expectation", "summarize_counts", "bootstrap_ratio_ci", "simulate"]

LAMBDA_MODES = ("decoupled", "l2")


def log_grid(lo: float, hi: float, n: int) -> list[float]:
    """``n`` log-spaced values from ``lo`` to ``hi`` (both included)."""
    if not (0 < lo < hi) or not math.isfinite(hi):
        raise ValueError(f"Arguments `lo`, `hi` need 0 < lo < hi. Received: lo={lo!r}, hi={hi!r}")
    if int(n) != n or n < 2:
        raise ValueError(f"Argument `n` must be an integer >= 2. Received: n={n!r}")
    return [float(v) for v in np.logspace(math.log10(lo), math.log10(hi), int(n))]


def nearest_index(grid: Sequence[float], x) -> np.ndarray:
    """Index of the grid value nearest to ``x`` in log space (ties: the lower index; outside
    the grid: the edge). ``grid`` increasing and > 0; ``x`` a number or an array."""
    g = np.log(np.asarray(grid, dtype=float))
    if g.ndim != 1 or g.size < 1 or not np.all(np.isfinite(g)) or np.any(np.diff(g) <= 0):
        raise ValueError(f"Argument `grid` must be increasing values > 0. Received: grid={grid!r}")
    xa = np.asarray(x, dtype=float)
    if np.any(~np.isfinite(xa)) or np.any(xa <= 0):
        raise ValueError(f"Argument `x` must be finite values > 0. Received: x={x!r}")
    lx = np.log(xa)
    # the first grid value whose upper cell boundary (midpoint to the next one) is >= x
    mids = (g[1:] + g[:-1]) / 2
    return np.searchsorted(mids, lx, side="left")


def _check_entry(entry: Mapping) -> None:
    if "learning_rate" not in entry or "score" not in entry:
        raise ValueError("A table entry needs 'learning_rate' and 'score'. "
                         f"Received: keys={sorted(entry)!r}")
    score = np.asarray(entry["score"], dtype=float)
    shape = (len(entry["learning_rate"]),) + ((len(entry["lambda"]),)
                                              if entry.get("lambda") is not None else ())
    if score.shape != shape:
        raise ValueError(f"A table entry's 'score' must have shape {shape} (learning_rate x "
                         f"lambda). Received: shape={score.shape}")


def lookup(entry: Mapping, learning_rate, lam=None) -> np.ndarray:
    """Table value at the nearest grid point (log space) of ``(learning_rate, lam)``.

    ``entry``: ``{"learning_rate": [...], "lambda": [...] or None, "score": [[...]]}``
    (score indexed ``[i_eta][i_lambda]``, or ``[i_eta]`` without λ).
    """
    _check_entry(entry)
    score = np.asarray(entry["score"], dtype=float)
    i = nearest_index(entry["learning_rate"], learning_rate)
    if entry.get("lambda") is None:
        if lam is not None:
            raise ValueError(f"This table has no λ axis; pass lam=None. Received: lam={lam!r}")
        return score[i]
    if lam is None:
        raise ValueError("This table has a λ axis; pass `lam`. Received: lam=None")
    j = nearest_index(entry["lambda"], lam)
    return score[i, j]


def table_objective(entry: Mapping) -> Callable[[dict], float]:
    """``f(point) -> score`` for :func:`experiments.compare.search_scores`: the table
    value at the point's (η, λ) (λ = ηλ/η in the product parametrization, as decoded)."""
    _check_entry(entry)
    has_lambda = entry.get("lambda") is not None

    def f(point):
        if has_lambda:
            return float(lookup(entry, point["learning_rate"], point["lambda"]))
        return float(lookup(entry, point["learning_rate"]))

    return f


def arms_for(table: Mapping, *, lambda_mode: str = "decoupled") -> dict:
    """The searched spaces over a table: ``naive`` (independent η, λ box), ``product``
    (η, ηλ box), and ``unit_norm`` (η) when the table has that mode.

    The product box is η over the table's η range and ηλ over ``[λ_min η_max, λ_max η_min]``
    (so every λ = ηλ/η stays inside the λ grid); the naive box is the independent box that
    covers it (``compare.covering_space``: exactly the table's λ range).
    """
    grids = table["grids"]
    if lambda_mode not in grids:
        raise ValueError(f"Argument `lambda_mode` must be a mode of the table "
                         f"({sorted(grids)}). Received: lambda_mode={lambda_mode!r}")
    e = grids[lambda_mode]
    eta_lo, eta_hi = min(e["learning_rate"]), max(e["learning_rate"])
    lam_lo, lam_hi = min(e["lambda"]), max(e["lambda"])
    el_lo, el_hi = lam_lo * eta_hi, lam_hi * eta_lo
    if not el_lo < el_hi:
        raise ValueError(f"The table's λ range is too narrow for a product box: needs "
                         f"λ_min η_max < λ_max η_min. Received: eta=[{eta_lo}, {eta_hi}], "
                         f"lambda=[{lam_lo}, {lam_hi}]")
    lr = {"min": eta_lo, "max": eta_hi, "sampling": "log"}
    arms = {
        "naive": {"table": lambda_mode,
                  "space": {"parametrization": "independent", "norms": ["batch"],
                            "decay": [lambda_mode], "learning_rate": dict(lr),
                            "lambda": {"min": el_lo / eta_hi, "max": el_hi / eta_lo,
                                       "sampling": "log"}}},
        "product": {"table": lambda_mode,
                    "space": {"parametrization": "product", "norms": ["batch"],
                              "decay": [lambda_mode], "learning_rate": dict(lr),
                              "eta_lambda": {"min": el_lo, "max": el_hi, "sampling": "log"}}},
    }
    if "unit_norm" in grids:
        u = grids["unit_norm"]
        arms["unit_norm"] = {"table": "unit_norm",
                             "space": {"parametrization": "independent", "norms": ["batch"],
                                       "decay": ["unit_norm"],
                                       "learning_rate": {"min": min(u["learning_rate"]),
                                                         "max": max(u["learning_rate"]),
                                                         "sampling": "log"}}}
    return arms


def _midpoints(lo: float, hi: float, n: int) -> np.ndarray:
    a, b = math.log(lo), math.log(hi)
    return np.exp(a + (b - a) * (np.arange(n) + 0.5) / n)


def volume_scores(table: Mapping, arm: Mapping, n: int = 1000) -> np.ndarray:
    """Scores at the midpoint-rule nodes of the arm's space (``n`` per axis, log-uniform
    coordinates of the space: η and λ, η and ηλ, or η): equal weights, so the share of them
    reaching a target is the share of the space's volume that does."""
    if int(n) != n or n < 1:
        raise ValueError(f"Argument `n` must be an integer >= 1. Received: n={n!r}")
    entry = table["grids"][arm["table"]]
    space = arm["space"]
    eta = _midpoints(space["learning_rate"]["min"], space["learning_rate"]["max"], n)
    if entry.get("lambda") is None:
        return np.asarray(lookup(entry, eta), dtype=float)
    key = "eta_lambda" if space["parametrization"] == "product" else "lambda"
    second = _midpoints(space[key]["min"], space[key]["max"], n)
    e2, s2 = np.meshgrid(eta, second, indexing="ij")
    lam = s2 / e2 if key == "eta_lambda" else s2
    return np.asarray(lookup(entry, e2.ravel(), lam.ravel()), dtype=float)


def fraction_reaching(scores, target: float) -> float:
    """Share of ``scores`` (equal weights) that are ``>= target``."""
    s = np.asarray(scores, dtype=float)
    if s.size == 0:
        raise ValueError("Argument `scores` must not be empty. Received: scores=[]")
    return float(np.mean(s >= target))


def targets_from_quantiles(scores, quantiles: Sequence[float]) -> list[float]:
    """Per ``q``: the highest score ``t`` with ``fraction_reaching(scores, t) >= q``."""
    s = np.sort(np.asarray(scores, dtype=float))[::-1]
    out = []
    for q in quantiles:
        if not 0 < q <= 1:
            raise ValueError(f"Argument `quantiles` must hold values in (0, 1]. "
                             f"Received: quantiles={list(quantiles)!r}")
        out.append(float(s[max(math.ceil(q * s.size - 1e-9), 1) - 1]))
    return out


def random_search_expectation(p: float, budget: int) -> dict:
    """Trials to a target of volume fraction ``p`` under random search (geometric law)."""
    if not 0 <= p <= 1:
        raise ValueError(f"Argument `p` must be in [0, 1]. Received: p={p!r}")
    if p == 0:
        return {"mean": math.inf, "median": math.inf, "p_miss": 1.0}
    if p == 1:
        return {"mean": 1.0, "median": 1, "p_miss": 0.0}
    return {"mean": 1.0 / p, "median": math.ceil(math.log(0.5) / math.log1p(-p)),
            "p_miss": (1.0 - p) ** budget}


def summarize_counts(counts: Sequence[int | None], budget: int) -> dict:
    """Trials-to-target of many searches: misses (None) counted as ``budget + 1``."""
    censored = [c if c is not None else budget + 1 for c in counts]
    return {"trials": list(counts), "reached": sum(c is not None for c in counts),
            "searches": len(counts), "median_censored": statistics.median(censored),
            "mean_censored": sum(censored) / len(censored)}


def bootstrap_ratio_ci(a: Sequence[float], b: Sequence[float], *, n: int = 2000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``median(a) / median(b)`` (a, b resampled
    independently)."""
    rng = random.Random(seed)
    ratios = []
    for _ in range(n):
        ra = statistics.median(rng.choices(a, k=len(a)))
        rb = statistics.median(rng.choices(b, k=len(b)))
        ratios.append(ra / rb)
    ratios.sort()
    lo = ratios[int(math.floor((1 - level) / 2 * (n - 1)))]
    hi = ratios[int(math.ceil((1 + level) / 2 * (n - 1)))]
    return lo, hi


def simulate(table: Mapping, arms: Mapping, *, tuner: str, budget: int, seeds: Sequence[int],
             log: Callable[[str], None] | None = None) -> dict:
    """Scores of one search per (arm, seed) through ``compare.search_scores`` with the table
    objective; ``{arm: [[score per trial] per seed]}``."""
    from experiments import compare

    out = {}
    for name, arm in arms.items():
        f = table_objective(table["grids"][arm["table"]])
        out[name] = [compare.search_scores(f, arm["space"], budget=budget, seed=s, tuner=tuner)
                     for s in seeds]
        if log is not None:
            log(f"[tabular/{tuner}] {name}: {len(seeds)} searches x {budget} trials")
    return out
