"""The grokking study's statistics (pure NumPy, no Keras): the delay of one run from its
evaluation curves, the early-stop rule, per-arm summaries and the four claims' verdicts."""

from __future__ import annotations

import math

import numpy as np

from keras_normreg._utils import check_number, received

from .. import eta_only

#: Validation accuracy that counts as generalized, and the lower mark also reported.
VAL_HIGH, VAL_LOW = 0.99, 0.95
#: Training accuracy that counts as fitted (memorized).
TRAIN_HIGH = 0.99
#: Claim (2): the sphere's delay must be at least this many times shorter.
SPEEDUP = 10.0
#: Claim (4): the weight norm at generalization "concentrates" when its coefficient of
#: variation over the generalized runs of an arm is at most this, and below the one at 99%
#: training accuracy.
CONCENTRATED_CV = 0.10

search_trials = eta_only.search_trials  # the simulated random search, reused as is


def _final_stretch(steps, values, threshold):
    """First step of the last unbroken stretch of evaluations at or above ``threshold`` that
    runs to the last evaluation (None when the last one is below)."""
    start = None
    for s, v in zip(steps, values, strict=True):
        if v >= threshold:
            if start is None:
                start = s
        else:
            start = None
    return start


def _first(steps, values, threshold):
    return next((s for s, v in zip(steps, values, strict=True) if v >= threshold), None)


def delay_stats(steps, train_acc, val_acc, *, val_high=VAL_HIGH, val_low=VAL_LOW,
                train_high=TRAIN_HIGH) -> dict:
    """The grokking numbers of one run from its evaluation curves.

    ``steps`` are the evaluation steps (increasing), ``train_acc`` / ``val_acc`` the
    accuracies there. A threshold counts as *reached* at the first step of the final unbroken
    stretch of evaluations at or above it, running to the end of the run, so a run that
    crossed it and fell back is not counted as there (``lost``: crossed at some point, below it
    at the end). Returns ``{"t_train", "t_val_low", "t_val_high", "first_val_high", "delay",
    "generalized", "lost", "status"}``: ``t_*`` steps or None; ``delay = t_val_high −
    t_train`` (None unless generalized); ``generalized``: validation at or above ``val_high``
    at the end and training fitted (``t_train`` not None); ``status`` one of
    ``"generalized"``, ``"lost"`` (crossed ``val_high`` and fell back), ``"memorized"``
    (fitted, never generalized), ``"not_fit"`` (training accuracy never held ``train_high``).
    A run that never generalizes has no delay (None), never a delay of zero."""
    steps = [int(s) for s in steps]
    if not (len(steps) == len(train_acc) == len(val_acc)):
        raise ValueError(f"Arguments `steps`, `train_acc` and `val_acc` must be equally long. "
                         f"Received: steps={len(steps)} values, train_acc={len(train_acc)}, "
                         f"val_acc={len(val_acc)}")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"Argument `steps` must be increasing. {received('steps', steps)}")
    t_train = _final_stretch(steps, train_acc, train_high)
    t_low = _final_stretch(steps, val_acc, val_low)
    t_high = _final_stretch(steps, val_acc, val_high)
    first_high = _first(steps, val_acc, val_high)
    lost = first_high is not None and t_high is None
    generalized = t_high is not None and t_train is not None
    if generalized:
        status = "generalized"
    elif lost:
        status = "lost"
    elif t_train is not None:
        status = "memorized"
    else:
        status = "not_fit"
    return {"t_train": t_train, "t_val_low": t_low, "t_val_high": t_high,
            "first_val_high": first_high,
            "delay": (t_high - t_train) if generalized else None,
            "generalized": generalized, "lost": lost, "status": status}


def should_stop(val_acc, *, threshold=VAL_HIGH, patience=3) -> bool:
    """The early-stop rule: the last ``patience`` evaluations all at or above ``threshold``
    (the run has generalized and stayed there)."""
    check_number("patience", patience, low=1, integer=True)
    return len(val_acc) >= patience and all(v >= threshold for v in val_acc[-patience:])


def _median(values):
    """Median with misses as +inf (None where it is a miss); NaN for no values."""
    v = np.array([math.inf if x is None else float(x) for x in values])
    if v.size == 0:
        return math.nan
    m = float(np.quantile(v, 0.5, method="inverted_cdf"))
    return None if math.isinf(m) else m


def summarize(runs, arms) -> dict:
    """Per arm its grid points, each with its runs' numbers over seeds: ``{arm: [point]}``,
    ``point = {"point", "eta", "lambda", "seeds", "t_val_high", "delay", "t_train",
    "generalized", "median_t", "median_delay", "spread_t", "norm_at_gen"}``; medians count a
    run that did not generalize as longer than any (None when such runs are the median);
    ``spread_t``: the seed standard deviation (ddof=1) of the steps to ``VAL_HIGH``, over the
    seeds that generalized (NaN with fewer than two)."""
    out = {}
    for arm in arms:
        points = {}
        for r in runs:
            if r["arm"] == arm:
                points.setdefault(r["point"], []).append(r)
        rows = []
        for key in sorted(points):
            rs = sorted(points[key], key=lambda r: r["seed"])
            t = [r["stats"]["t_val_high"] if r["stats"]["generalized"] else None for r in rs]
            d = [r["stats"]["delay"] for r in rs]
            done = [x for x in t if x is not None]
            rows.append({
                "point": key, "eta": rs[0]["eta"], "lambda": rs[0]["lambda"],
                "seeds": [r["seed"] for r in rs], "t_val_high": t, "delay": d,
                "t_train": [r["stats"]["t_train"] for r in rs],
                "status": [r["stats"]["status"] for r in rs],
                "generalized": sum(x is not None for x in t),
                "median_t": _median(t), "median_delay": _median(d),
                "spread_t": float(np.std(done, ddof=1)) if len(done) > 1 else math.nan,
                "norm_at_gen": [r.get("norm_at_gen") for r in rs],
                "shared": any(r.get("shared") for r in rs)})
        out[arm] = rows
    return out


def best_point(points):
    """The point with the smallest median steps to generalize (None if no median is)."""
    ok = [p for p in points if p["median_t"] is not None and not math.isnan(p["median_t"])]
    return min(ok, key=lambda p: (p["median_t"], -p["generalized"])) if ok else None


def analyse(summary, arms, *, budget_steps, searches=500, seed=0, sphere_arms=(),
            adamw_arm="adamw", reference=None) -> dict:
    """Per arm: best point, share generalized, and trials a random search over the arm's
    points needs to reach the target ``best median of all arms + its seed spread`` (steps to
    ``VAL_HIGH``; a run that did not generalize never reaches it), replayed with
    :func:`search_trials` on the scores ``−steps``; plus the overall best."""
    compared = [a for a in arms if summary.get(a) and a != reference]
    best = {a: best_point(summary[a]) for a in arms if summary.get(a)}
    cands = [a for a in compared if best.get(a) is not None]
    out = {"arms": {}, "overall_arm": None, "target": None}
    if cands:
        top_arm = min(cands, key=lambda a: best[a]["median_t"])
        top = best[top_arm]
        spread = top["spread_t"] if math.isfinite(top["spread_t"]) else 0.0
        out.update(overall_arm=top_arm, target=top["median_t"] + spread,
                   best_median=top["median_t"], best_spread=spread)
    for i, a in enumerate(a for a in arms if summary.get(a)):
        pts = summary[a]
        n_runs = sum(len(p["seeds"]) for p in pts)
        n_gen = sum(p["generalized"] for p in pts)
        rec = {"best": best[a], "points": len(pts), "runs": n_runs, "generalized": n_gen,
               "share_generalized": n_gen / n_runs if n_runs else math.nan}
        if out["target"] is not None:
            scores = [[-(x if x is not None else math.inf) for x in p["t_val_high"]]
                      for p in pts]
            scores = [[s if math.isfinite(s) else -1e18 for s in row] for row in scores]
            st = search_trials(scores, -out["target"], budget=n_runs, searches=searches,
                               seed=seed + 7919 * i)
            st.pop("trials")
            rec["search"] = st
            rec["reaches_target"] = best[a] is not None and best[a]["median_t"] <= out["target"]
        out["arms"][a] = rec
    out["claims"] = claims(summary, out, budget_steps=budget_steps, sphere_arms=sphere_arms,
                           adamw_arm=adamw_arm)
    return out


def _kendall_tau(xs, ys):
    """Kendall's tau-a of two equally long sequences (ties count zero)."""
    n, s = len(xs), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += np.sign(xs[j] - xs[i]) * np.sign(ys[j] - ys[i])
    return float(s) / (n * (n - 1) / 2) if n > 1 else math.nan


def claim_delay_falls(points) -> dict:
    """Claim (1): under AdamW the delay falls as λ grows. Over the λ values (one η: the η with
    the most λ points that generalized; all points pooled per λ), the median delay, a run that
    did not generalize counting as longer than any; λ values whose runs mostly never fit the
    training set (too strong a decay) are left out and listed. ``holds``: the medians never
    rise with λ and the last is below the first; ``partly``: Kendall's tau < 0 without that."""
    by_eta = {}
    for p in points:
        by_eta.setdefault(p["eta"], []).append(p)
    if not by_eta:
        return {"verdict": "untested", "rows": [], "tau": math.nan, "eta": None, "unfit": []}
    eta = max(by_eta, key=lambda e: (sum(p["generalized"] for p in by_eta[e]), -e))
    rows, unfit = [], []
    for p in sorted(by_eta[eta], key=lambda p: p["lambda"]):
        fitted = sum(t is not None for t in p["t_train"])
        if fitted * 2 <= len(p["t_train"]):
            unfit.append(p["lambda"])
            continue
        med = p["median_delay"]
        rows.append({"lambda": p["lambda"], "median_delay": med, "generalized": p["generalized"],
                     "runs": len(p["seeds"])})
    vals = [math.inf if r["median_delay"] is None else r["median_delay"] for r in rows]
    if len(rows) < 2 or all(math.isinf(v) for v in vals):
        return {"verdict": "untested", "rows": rows, "tau": math.nan, "eta": eta,
                "unfit": unfit}
    lams = [r["lambda"] for r in rows]
    finite = [v if math.isfinite(v) else 1e30 for v in vals]
    tau = _kendall_tau(lams, finite)
    monotone = all(b <= a for a, b in zip(finite, finite[1:], strict=False)) and finite[-1] < finite[0]
    verdict = "holds" if monotone else ("partly" if tau < 0 else "fails")
    return {"verdict": verdict, "rows": rows, "tau": tau, "eta": eta, "unfit": unfit}


def claim_sphere_speedup(summary, arm, adamw_arm, budget_steps, factor=SPEEDUP) -> dict:
    """Claim (2) for one sphere arm: its best point's median delay × ``factor`` at most the
    best AdamW λ's median delay, in the same step budget. When no AdamW point generalized, its
    delay is only known to exceed ``budget − t_train`` (a lower bound); when the sphere arm
    never generalized the claim fails (untested when no AdamW point did either)."""
    sph = [p for p in summary.get(arm, []) if p["median_delay"] is not None]
    ada = [p for p in summary.get(adamw_arm, []) if p["median_delay"] is not None]
    s_best = min(sph, key=lambda p: p["median_delay"]) if sph else None
    a_best = min(ada, key=lambda p: p["median_delay"]) if ada else None
    out = {"arm": arm, "sphere": s_best, "adamw": a_best, "factor": factor}
    if s_best is None:  # untested when AdamW did not generalize either: nothing to compare
        return {**out, "verdict": "fails" if a_best is not None else "untested",
                "ratio": None, "bound": False}
    if a_best is None:
        fits = [t for p in summary.get(adamw_arm, []) for t in p["t_train"] if t is not None]
        bound = budget_steps - (min(fits) if fits else 0)
        ratio = bound / max(s_best["median_delay"], 1.0)
        return {**out, "verdict": "holds" if ratio >= factor else "untested", "ratio": ratio,
                "bound": True}
    ratio = a_best["median_delay"] / max(s_best["median_delay"], 1.0)
    return {**out, "verdict": "holds" if ratio >= factor else "fails", "ratio": ratio,
            "bound": False}


def claim_eta_only(analysis, arm, two_d_arm) -> dict:
    """Claim (3) for one sphere arm: its best point reaches the target and random search over
    its η grid needs no more trials (median) than over the 2-D arm."""
    a, b = analysis["arms"].get(arm), analysis["arms"].get(two_d_arm)
    if a is None or "search" not in a:
        return {"arm": arm, "verdict": "untested"}
    m_a = a["search"]["median"]
    m_b = b["search"]["median"] if b and "search" in b else None
    ok = a["reaches_target"] and m_a is not None and (m_b is None or m_a <= m_b)
    return {"arm": arm, "verdict": "holds" if ok else "fails", "median": m_a,
            "median_2d": m_b, "reaches_target": a["reaches_target"],
            "budget": a["search"]["budget"],
            "budget_2d": b["search"]["budget"] if b and "search" in b else None}


def claim_norm_concentrates(runs, arm, cv_max=CONCENTRATED_CV) -> dict:
    """Claim (4): the weight norm (of the matrices and embeddings) at the moment of
    generalization, over the arm's generalized runs (every λ and seed): its median, its
    coefficient of variation (std/mean, ddof=1), against the same at 99% training accuracy.
    ``holds``: CV at generalization <= ``cv_max`` and below the CV at fitting."""
    gen = [r for r in runs if r["arm"] == arm and r["stats"]["generalized"]
           and r.get("norm_at_gen") is not None]
    if len(gen) < 3:
        return {"arm": arm, "verdict": "untested", "n": len(gen),
                "values": [float(r["norm_at_gen"]) for r in gen]}
    g = np.array([r["norm_at_gen"] for r in gen])
    f = np.array([r["norm_at_fit"] for r in gen if r.get("norm_at_fit") is not None])
    cv_g = float(np.std(g, ddof=1) / np.mean(g))
    cv_f = float(np.std(f, ddof=1) / np.mean(f)) if f.size > 1 else math.nan
    ok = cv_g <= cv_max and (not math.isfinite(cv_f) or cv_g < cv_f)
    return {"arm": arm, "verdict": "holds" if ok else "fails", "n": len(gen),
            "median": float(np.median(g)), "min": float(g.min()), "max": float(g.max()),
            "cv": cv_g, "cv_fit": cv_f, "median_fit": float(np.median(f)) if f.size else math.nan}


def claims(summary, analysis, *, budget_steps, sphere_arms, adamw_arm) -> dict:
    return {"delay_falls": claim_delay_falls(summary.get(adamw_arm, [])),
            "speedup": [claim_sphere_speedup(summary, a, adamw_arm, budget_steps)
                        for a in sphere_arms if summary.get(a)],
            "eta_only": [claim_eta_only(analysis, a, adamw_arm) for a in sphere_arms
                         if summary.get(a)]}
