"""The grokking study's command: run (or plan, or re-render) and write results.json and the
report. ``python -m experiments.grokking`` and ``keras-normreg experiment grokking`` call
:func:`cli`."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time

from keras_normreg import data as nr_data

from .. import eta_only
from .._report import parse_sets, study_command
from . import runs as R
from .report import render

DEFAULT_OUT = os.path.join("docs", "study_grokking")


def plan_lines(s: R.Settings) -> list[str]:
    tr, va = s.splits()
    est = R.estimate_seconds(s)
    t = R.MEASURED_TIMING
    lines = [f"gpt_modular (1 block, width {s.width}, {s.heads} heads, causal) on modular "
             f"addition p = {s.p}: train {tr}, validation {va}; Adam(β = {s.beta_1}, "
             f"{s.beta_2}), batch {s.batch_size}, at most {s.max_steps} steps, evaluated every "
             f"{s.eval_every}, stopped after {s.patience} evaluations at >= 99% validation; "
             f"backend {s.backend}, {s.workers} worker(s)"]
    shared = sum(1 for v in s.lambdas if v == 0.0) * len(s.etas_2d)
    for arm, pts in R.grids(s).items():
        n = len(R.seeds_of(s, arm))
        etas = sorted({p["eta"] for p in pts})
        lams = sorted({p["lambda"] for p in pts if p["lambda"] is not None})
        note = (f" (λ = 0: arm (a)'s runs, {shared} point(s) not trained again)"
                if arm == "l2" and shared else "")
        lines.append(f"({R.LETTERS[arm]}) {arm}: {len(pts)} points × {n} seeds; η "
                     f"{_short(etas)}" + (f", λ {_short(lams)}" if lams else "") + note)
    lines.append(f"estimate (worst case, every run to {s.max_steps} steps): {est['runs']} runs"
                 f" × ({s.max_steps} steps × {t['s_per_step']} s + "
                 f"{-(-s.max_steps // s.eval_every)} evaluations × {t['s_per_eval']} s + "
                 f"{t['overhead_s']} s) = {est['per_run_s'] / 60:.1f} min per run, over "
                 f"{s.workers} worker(s): ~{est['worst_s'] / 60:.0f} min (timing: "
                 f"{t['measured']}); runs that generalize stop early")
    return lines


def _short(values):
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def run_study(s: R.Settings | None = None, out_dir=DEFAULT_OUT, *, command=None, verbose=1,
              searches=500) -> dict:
    """Run every task, write ``results.json`` and render the report; returns the results
    (``results["report"]``: the Markdown file's path)."""
    s = s or R.make_settings()
    out_dir = os.fspath(out_dir).rstrip("/\\")
    command = command or "python -m experiments.grokking" + (" --quick" if s.quick else "")

    def say(msg):
        if verbose:
            print(msg, flush=True)

    for line in plan_lines(s):
        say(line)
    os.makedirs(out_dir, exist_ok=True)
    t_start = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    task_list = R.tasks(s)
    partial = os.path.join(out_dir, "partial_runs.jsonl")
    with open(partial, "w"):
        pass
    done = [0]

    def on_done(rec):
        with open(partial, "a") as f:
            f.write(json.dumps(rec, default=eta_only._json_default) + "\n")
        done[0] += 1
        st = rec["stats"]
        lam = "" if rec["lambda"] is None else f" λ={rec['lambda']:g}"
        say(f"[{done[0]}/{len(task_list)}] ({R.LETTERS[rec['arm']]}) η={rec['eta']:.3g}{lam} "
            f"seed {rec['seed']}: {st['status']}, train 99% at {st['t_train']}, val 99% at "
            f"{st['t_val_high']}, {rec['steps']} steps ({rec['seconds']:.0f} s; "
            f"{(time.perf_counter() - t_start) / 60:.1f} min elapsed)")

    runs = R.run_all(s, task_list, on_done)
    runs += R.shared_runs(s, runs)
    order = {a: i for i, a in enumerate(R.ARMS)}
    tr, va = s.splits()
    results = {
        "command": command, "date": date,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "estimate": R.estimate_seconds(s), "timing": dict(R.MEASURED_TIMING),
        "settings": dataclasses.asdict(s), "grids": R.grids(s),
        "sizes": {"train": len(nr_data.arrays(s.dataset(), tr)[1]),
                  "validation": len(nr_data.arrays(s.dataset(), va)[1])},
        "runs": sorted(runs, key=lambda r: (order[r["arm"]], r["point"], r["seed"])),
        "versions": eta_only._versions(s), "searches": searches}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=None, default=eta_only._json_default)
    os.remove(partial)
    results["report"] = render(out_dir)
    say(f"report: {results['report']} ({results['total_seconds'] / 60:.1f} min)")
    return results


def calibrate(s: R.Settings, steps=300, verbose=1) -> dict:
    """Time one short run per arm (``steps`` steps, the middle point, the first seed) on the
    workers as the study runs them; per-step seconds after the first call (compile)."""
    short = dataclasses.replace(s, max_steps=steps)
    sdict = dataclasses.asdict(short)
    task_list = []
    for arm, pts in R.grids(short).items():
        gp = pts[len(pts) // 2]
        task_list.append({"settings": sdict, "arm": arm, "point": 0, "grid_point": gp,
                          "seed": short.seeds[0]})
    t0 = time.perf_counter()
    recs = R.run_all(short, task_list)
    wall = time.perf_counter() - t0
    per_step = sum(r["seconds"] for r in recs) / sum(r["steps"] for r in recs)
    if verbose:
        for r in recs:
            print(f"({R.LETTERS[r['arm']]}) {r['arm']}: {r['steps']} steps in {r['seconds']:.1f}"
                  f" s ({r['seconds'] / r['steps'] * 1000:.0f} ms/step incl. compile and "
                  f"evaluations)")
        est = R.estimate_seconds(s, dict(R.MEASURED_TIMING, s_per_step=per_step,
                                         s_per_eval=0.0, overhead_s=0.0))
        print(f"{len(recs)} runs in {wall:.0f} s on {s.workers} worker(s); "
              f"{per_step * 1000:.0f} ms/step all in, os.getloadavg() = {os.getloadavg()} -> "
              f"worst case ~{est['worst_s'] / 60:.0f} min")
    return {"runs": recs, "s_per_step": per_step, "wall_s": wall}


def cli(*, epochs=None, out=DEFAULT_OUT, which="grokking", quick=False, workers=None,
        dry_run=False, render_only=False, calibrate_only=False, settings=None,
        command=None) -> int:
    """The study's command; returns the exit code (2: bad arguments). ``epochs`` (the
    ``keras-normreg experiment`` option) does not apply: the budget is in steps (``--set
    max_steps=N``)."""
    if epochs is not None:
        print(f"{which}: error: the grokking study counts steps, not epochs: use "
              f"`python -m experiments.grokking --set max_steps=N`. Received: epochs={epochs}",
              file=sys.stderr)
        return 2
    try:
        s = R.make_settings(quick=quick, workers=workers, **(settings or {}))
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
    if dry_run:
        for line in plan_lines(s):
            print(line)
        return 0
    if calibrate_only:
        calibrate(s)
        return 0
    if command is None:
        command = f"keras-normreg experiment {which}" + ("" if out == DEFAULT_OUT else
                                                   f" --out {out}")
    run_study(s, out, command=command)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.grokking",
        description="The grokking study: does keeping weights on the sphere remove the "
                    "grokking delay and the decay hyperparameter? See experiments/grokking.")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="folder for results.json and figures; the report is <out>.md "
                        "(default docs/study_grokking)")
    p.add_argument("--workers", type=int, default=None, help="training processes (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="miniature for the tests: p = 11, width 16, 60 steps, one seed")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the estimate")
    p.add_argument("--calibrate", action="store_true",
                   help="time one short run per arm on the workers")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="any study setting (a field of experiments.grokking.Settings), e.g. "
                        "--set max_steps=20000 --set 'etas_2d=(1e-3, 3e-3)' "
                        "--set train_fraction=50")
    p.add_argument("--render", action="store_true",
                   help="only re-render the report and figures from <out>/results.json")
    args = p.parse_args(argv)
    extra = parse_sets(p, args.set)
    return cli(out=args.out, quick=args.quick, workers=args.workers, dry_run=args.dry_run,
               render_only=args.render, calibrate_only=args.calibrate, settings=extra,
               command=study_command("experiments.grokking", args, DEFAULT_OUT, ("workers",)))
