"""The eta-only study's statistics: the random-search statistic (:func:`search_trials`),
the per-point summary over seeds and the per-arm verdict numbers."""

from __future__ import annotations

import math

import numpy as np

from keras_normreg._utils import check_number, received

from .runs import ALL_ARMS, ARMS


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
