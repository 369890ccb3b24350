"""The eta-only study's outputs: ``table.csv``, the figures and the Markdown report, rendered
from ``results.json`` with the prose of ``experiments/templates/eta_only.md``."""

from __future__ import annotations

import csv
import math
import os
import string

import numpy as np

from .._report import load_results, load_sections
from .analysis import analyse, search_trials, summarize
from .runs import ALL_ARMS, DEFAULT_OUT, LETTERS, REFERENCE, TITLES, equilibrium_steps

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(_HERE, "templates", "eta_only.md")


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
        eta_grid=short(s["eta_grid"]), lambda_grid=short(facts["lambda_grid"]),
        lambda_grid_b=short([x * (1 - s["momentum"]) for x in facts["lambda_grid"]]),
        eta_lambda_eta=f"{s['eta_lambda_eta']:g}",
        eta_lambda_grid=short([p["eta_lambda"] for p in results["grids"]["eta_lambda"]]),
        eta_lambda_max=f"{max(p['eta_lambda'] for p in results['grids']['eta_lambda']):.3g}",
        theta_min=f"{facts['theta_min']:.3g}", theta_max=f"{facts['theta_max']:.3g}",
        theta_targets=short([p.get("theta_target", float("nan")) for p in sphere_grid]),
        sphere_below=f"{s.get('sphere_below', 1.0):g}",
        sphere_theta_min=f"{facts.get('sphere_theta_min', facts['theta_min']):.3g}",
        n_pilots=_count_word(len(pilot["runs"])),
        pilot_etas=short([r["eta"] for r in pilot["runs"]]),
        pilot_epochs=s["pilot_epochs"],
        pilot_length=t["pilot_full"].substitute() if s["pilot_epochs"] == s["epochs"] else "",
        pilot_thetas=short([r["theta_measured"] for r in pilot["runs"]]),
        pilot_rates=short([r["theta_measured"] / r["eta"] for r in pilot["runs"]]),
        rate_c=f"{rate['c']:.4g}", rate_p=f"{rate['p']:.3g}",
        sphere_grid=short([p["eta"] for p in sphere_grid]),
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
        reference_arm=t["reference_arm"].substitute(eta_grid=short(s["eta_grid"]))
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


def short(values):
    """Numbers as the report and the plan print them: ``[0.025, 0.05]`` (3 significant digits)."""
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"
