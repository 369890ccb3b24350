"""The grokking study's report: figures and the Markdown page from ``results.json``."""

from __future__ import annotations

import math
import os
import string

from .._report import load_results, load_sections
from . import analysis as an
from .runs import ARMS, LETTERS, REFERENCE, SPHERE_ARMS, TITLES
from .runs import MEASURED_TIMING as R_TIMING

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(_HERE, "templates", "grokking.md")
SECTIONS = ("report", "quick_note", "arm_row", "point_row", "claim1_row", "claim1",
            "claim1_table",
            "claim2", "claim3", "claim4", "claim4_few", "verdict_holds", "verdict_partly", "verdict_fails",
            "verdict_untested", "limits")
FIGURES = ("curves", "delay_vs_lambda", "norm_at_generalization")


def load_template(path=TEMPLATE) -> dict[str, string.Template]:
    return load_sections(path, SECTIONS, "grokking")


def analyse_results(results) -> tuple[dict, dict]:
    """``(summary, analysis)`` of stored results (the analysis gets ``"norm"``: claim (4) per
    decayed arm)."""
    s = results["settings"]
    summary = an.summarize(results["runs"], ARMS)
    analysis = an.analyse(summary, ARMS, budget_steps=s["max_steps"],
                          searches=results.get("searches", 500), sphere_arms=SPHERE_ARMS,
                          reference=REFERENCE)
    analysis["claims"]["norm"] = [an.claim_norm_concentrates(results["runs"], a)
                                  for a in ("adamw", "l2")]
    return summary, analysis


def render(out_dir, template=None) -> str:
    """Write the figures and ``<out_dir>.md`` from ``<out_dir>/results.json``; return the
    report's path."""
    out_dir = os.fspath(out_dir).rstrip("/\\")
    results = load_results(out_dir)
    summary, analysis = analyse_results(results)
    plots(out_dir, results, summary)
    path = out_dir + ".md"
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_report(results, summary, analysis, out_dir, template=template))
    return path


# ------------------------------------------------------------------------------ figures
def _figure(ncols=1, nrows=1, size=(5.2, 4.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy external package
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=90)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(nrows, ncols, i + 1) for i in range(ncols * nrows)]


def plots(out_dir, results, summary):
    runs = results["runs"]
    # one panel per arm: training and validation accuracy of every run, seed 1 solid
    arms = [a for a in ARMS if summary.get(a)]
    fig, axes = _figure(len(arms), 1, size=(4.0, 3.4))
    for ax, arm in zip(axes, arms, strict=True):
        pts = summary[arm]
        for j, p in enumerate(pts):
            for r in (r for r in runs if r["arm"] == arm and r["point"] == p["point"]):
                c = r["curves"]
                ls = "-" if r["seed"] == min(p["seeds"]) else ":"
                ax.plot(c["step"], c["val_acc"], ls, color=f"C{j}", lw=1,
                        label=_label(arm, p) if ls == "-" else None)
                ax.plot(c["step"], c["train_acc"], ls, color=f"C{j}", lw=0.6, alpha=0.4)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"({LETTERS[arm]}) {arm}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("val. accuracy (train: thin)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "curves.png"), bbox_inches="tight")

    # the delay against λ for the two decayed arms (misses at the budget, hollow)
    fig, (ax,) = _figure(1, 1, size=(5.6, 4.0))
    budget = results["settings"]["max_steps"]
    for i, arm in enumerate(("adamw", "l2")):
        for p in summary.get(arm, []):
            x = p["lambda"] if p["lambda"] else 0.03
            for d in p["delay"]:
                ax.plot(x * (1.06 if i else 0.94), budget if d is None else max(d, 1),
                        "o", mfc="none" if d is None else f"C{i}", color=f"C{i}", ms=5)
        ax.plot([], [], "o", color=f"C{i}", label=f"({LETTERS[arm]}) {arm}")
    ax.plot([], [], "o", mfc="none", color="k", label="did not generalize (at the budget)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("λ (0 drawn at 0.03)")
    ax.set_ylabel("delay: steps from 99% train to 99% val.")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "delay_vs_lambda.png"), bbox_inches="tight")

    # the weight norm against the step, the moment of generalization marked
    fig, (ax,) = _figure(1, 1, size=(6.0, 4.0))
    for i, arm in enumerate(arms):
        for r in (r for r in runs if r["arm"] == arm):
            c = r["curves"]
            ax.plot(c["step"], c["norm"], color=f"C{i}", lw=0.6, alpha=0.6)
            t = r["stats"]["t_val_high"]
            if r["stats"]["generalized"] and t in c["step"]:
                ax.plot(t, c["norm"][c["step"].index(t)], "*", color=f"C{i}", ms=8)
        ax.plot([], [], color=f"C{i}", label=f"({LETTERS[arm]}) {arm}")
    ax.plot([], [], "*", color="k", label="99% val. reached (and held)")
    ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("‖w‖ of the matrices and embeddings")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "norm_at_generalization.png"), bbox_inches="tight")


# ------------------------------------------------------------------------------ text
def _label(arm, p):
    if p["lambda"] is None:
        return f"η = {p['eta']:.3g}"
    return f"η = {p['eta']:.3g}, λ = {p['lambda']:.3g}"


def _steps(v, budget=None):
    if v is None:
        return "never" if budget is None else f"> {budget}"
    if isinstance(v, float) and math.isnan(v):
        return "–"
    return f"{v:,.0f}"


def _spread(values):
    done = [v for v in values if v is not None]
    if not done:
        return "–"
    return f"{min(done):,.0f}–{max(done):,.0f}" if len(done) > 1 else f"{done[0]:,.0f}"


def _short(values):
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def _sphere_text(x):
    if x["sphere"] is None:
        return "no point generalized within the budget"
    return f"median delay {_steps(x['sphere']['median_delay'])} steps at η = " \
           f"{x['sphere']['eta']:.3g}"


def _adamw_text(x, budget):
    if x["adamw"] is not None:
        a = x["adamw"]
        return (f"the best AdamW point (η = {a['eta']:.3g}, λ = {a['lambda']:g}) has a median "
                f"delay of {_steps(a['median_delay'])} steps")
    if x["bound"]:
        return (f"no AdamW point generalized within {budget:,} steps, so its delay is only "
                f"known to exceed ~{x['ratio'] * max(x['sphere']['median_delay'], 1):,.0f} "
                f"steps")
    return "no AdamW point generalized either"


def _verdict(t, verdict, text):
    return t["verdict_" + verdict].substitute() + " " + text


def render_report(results, summary, analysis, out_dir, template=None) -> str:
    t = template or load_template()
    s = results["settings"]
    base = os.path.basename(os.fspath(out_dir).rstrip("/\\"))
    budget = s["max_steps"]
    target = analysis.get("target")
    rows = []
    for a in (a for a in ARMS if a in analysis["arms"]):
        r = analysis["arms"][a]
        b = r["best"]
        st = r.get("search")
        rows.append(t["arm_row"].substitute(
            letter=LETTERS[a], title=TITLES[a], best="–" if b is None else _label(a, b),
            median_t=_steps(None if b is None else b["median_t"], budget),
            median_delay=_steps(None if b is None else b["median_delay"], budget),
            spread="–" if b is None else _spread(b["t_val_high"]),
            generalized=f"{r['generalized']}/{r['runs']}",
            share=f"{100 * r['share_generalized']:.0f}",
            median_trials="–" if st is None else _steps(st["median"], st["budget"]),
            p90="–" if st is None else _steps(st["p90"], st["budget"]),
            missed="–" if st is None else f"{100 * st['missed']:.0f}"))
    point_rows = []
    for a in (a for a in ARMS if summary.get(a)):
        for p in summary[a]:
            point_rows.append(t["point_row"].substitute(
                letter=LETTERS[a], point=_label(a, p) + (" (shared with (a))" if p["shared"]
                                                         else ""),
                seeds=len(p["seeds"]), status=", ".join(p["status"]),
                t_train=", ".join(_steps(v) for v in p["t_train"]),
                t_val=", ".join(_steps(v) for v in p["t_val_high"]),
                delay=", ".join(_steps(v) for v in p["delay"]),
                median=_steps(p["median_delay"], budget),
                norm=", ".join("–" if v is None else f"{v:.1f}" for v in p["norm_at_gen"])))
    c = analysis["claims"]
    c1 = c["delay_falls"]
    c1_rows = "\n".join(t["claim1_row"].substitute(
        lam=f"{r['lambda']:g}", median=_steps(r["median_delay"], budget),
        gen=f"{r['generalized']}/{r['runs']}") for r in c1["rows"])
    claim1 = _verdict(t, c1["verdict"], t["claim1"].substitute(
        eta="–" if c1["eta"] is None else f"{c1['eta']:.3g}",
        table=t["claim1_table"].substitute(rows=c1_rows) if c1_rows else "",
        tau="–" if not math.isfinite(c1["tau"]) else f"{c1['tau']:.2f}",
        unfit=("λ left out (their runs mostly never held 99% training accuracy): "
               + ", ".join(f"{v:g}" for v in c1["unfit"]) + ".") if c1["unfit"] else ""))
    claim2 = " ".join(_verdict(t, x["verdict"], t["claim2"].substitute(
        letter=LETTERS[x["arm"]], arm=x["arm"], sphere=_sphere_text(x), adamw=_adamw_text(
            x, budget), ratio="–" if x["ratio"] is None else
        ("≥ " if x["bound"] else "") + f"{x['ratio']:.1f}", factor=f"{x['factor']:g}"))
        for x in c["speedup"]) or t["verdict_untested"].substitute()
    claim3 = " ".join(_verdict(t, x["verdict"], t["claim3"].substitute(
        letter=LETTERS[x["arm"]], arm=x["arm"],
        reaches="reaches" if x.get("reaches_target") else "does not reach",
        median=_steps(x.get("median"), x.get("budget")),
        median_2d=_steps(x.get("median_2d"), x.get("budget_2d")),
        target="–" if target is None else _steps(target)))
        for x in c["eta_only"]) or t["verdict_untested"].substitute()
    claim4 = " ".join(_verdict(t, x["verdict"], t["claim4_few"].substitute(
        letter=LETTERS[x["arm"]], arm=x["arm"], n=x["n"],
        values=", ".join(_num(v) for v in x.get("values", ())) or "–"))
        if x["verdict"] == "untested" else _verdict(t, x["verdict"], t["claim4"].substitute(
        letter=LETTERS[x["arm"]], arm=x["arm"], n=x["n"],
        median=_num(x.get("median")), range=f"{_num(x.get('min'))}..{_num(x.get('max'))}",
        cv=_num(x.get("cv"), 2), cv_fit=_num(x.get("cv_fit"), 2),
        median_fit=_num(x.get("median_fit")), cv_max=f"{an.CONCENTRATED_CV:g}"))
        for x in c["norm"])
    v = results["versions"]
    est = results.get("estimate", {})
    timing = results.get("timing") or R_TIMING
    return t["report"].substitute(
        command=results["command"], date=results["date"],
        minutes=f"{results['total_seconds'] / 60:.1f}",
        estimate=f"{est.get('worst_s', math.nan) / 60:.1f}",
        quick_note=t["quick_note"].substitute() + "\n\n" if s.get("quick") else "",
        backend=v["backend"], keras=v["keras"], python=v["python"], jax=v.get("jax", "–"),
        workers=s["workers"], p=s["p"], fraction=s["train_fraction"],
        n_train=results["sizes"]["train"], n_val=results["sizes"]["validation"],
        width=s["width"], heads=s["heads"], batch_size=s["batch_size"],
        max_steps=f"{budget:,}", eval_every=s["eval_every"], patience=s["patience"],
        beta_1=s["beta_1"], beta_2=s["beta_2"], lambdas=_short(s["lambdas"]),
        etas_2d=_short(s["etas_2d"]), etas_sphere=_short(s["etas_sphere"]),
        etas_ngpt=_short(s["etas_ngpt"]), etas_none=_short(s["etas_none"]),
        seeds=len(s["seeds"]), seeds_l2=len(s["seeds_l2"]), seeds_none=len(s["seeds_none"]),
        n_runs=len(results["runs"]), rows="\n".join(rows), point_rows="\n".join(point_rows),
        target="–" if target is None else _steps(target), best_arm="–" if analysis["overall_arm"] is None else
        f"({LETTERS[analysis['overall_arm']]}) {analysis['overall_arm']}",
        searches=results.get("searches", 500), claim1=claim1, claim2=claim2, claim3=claim3,
        claim4=claim4, limits=t["limits"].substitute(max_steps=f"{budget:,}",
                                                batch_size=s["batch_size"]),
        s_per_step=f"{timing['s_per_step']:g}", s_per_eval=f"{timing['s_per_eval']:g}",
        overhead_s=f"{timing['overhead_s']:g}",
        per_run=f"{est.get('per_run_s', math.nan) / 60:.1f}", n_tasks=est.get("runs", "–"),
        data_dir=base, **{f"fig_{k}": f"{base}/{k}.png" for k in FIGURES}) + "\n"


def _num(x, digits=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"

