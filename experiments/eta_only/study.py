"""The eta-only study's command: plan, run (the pilots, then every grid point on the worker
processes), write ``results.json`` and render the report. ``python -m experiments.eta_only``
and ``keras-normreg experiment eta-only`` call :func:`cli`."""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import platform
import sys
import time

import keras
import numpy as np

from keras_normreg._utils import environ, received

from .._report import parse_sets, study_command
from .report import render, short
from .runs import (
    ALL_ARMS,
    ARMS,
    DEFAULT_OUT,
    LETTERS,
    MEASURED_TIMING,
    REFERENCE,
    Settings,
    arm_grids,
    fit_rate,
    make_settings,
    train_one,
    worker_env,
)


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
                     f"η {short(etas)}" + (f", λ {short(lams)}" if lams else ""))
    return lines


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
    env = worker_env(s)
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
            f.write(json.dumps(rec, default=json_default) + "\n")
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
            f"; sphere η grid {short([p['eta'] for p in grids['sphere']])}")
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
        "versions": versions(s), "searches": searches,
        "timing": dict(MEASURED_TIMING)}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=json_default)
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
    with environ(worker_env(s)), concurrent.futures.ProcessPoolExecutor(
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


def json_default(x):
    """``json.dump``'s ``default`` for the records: NumPy scalars as Python numbers."""
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def versions(s):
    """The versions, the machine and the threads per worker, stored in ``results.json``."""
    out = {"python": platform.python_version(), "keras": keras.__version__,
           "numpy": np.__version__, "backend": s.backend, "machine": platform.machine(),
           "cpus": os.cpu_count()}
    with contextlib.suppress(Exception):
        import tensorflow as tf  # heavy external package: only for its version

        out["tensorflow"] = tf.__version__
    with contextlib.suppress(Exception):
        import jax  # heavy external package: only for its version

        out["jax"] = jax.__version__
    out["threads_per_worker"] = worker_env(s)["TF_NUM_INTRAOP_THREADS"]
    return out


# ------------------------------------------------------------------------------ command line
def cli(*, epochs=None, out=DEFAULT_OUT, which="eta-only", quick=False, workers=None,
        dry_run=False, render_only=False, calibrate_only=False, settings=None,
        command=None) -> int:
    """The study's command (``keras-normreg experiment eta-only`` and ``python -m
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
        command = f"keras-normreg experiment {which}" + ("" if epochs is None else
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
        description="The eta-only experiment: is tuning η alone enough with the "
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
    command = study_command("experiments.eta_only", args, DEFAULT_OUT, ("epochs", "workers"))
    return cli(epochs=args.epochs, out=args.out, which="eta_only", quick=args.quick,
               workers=args.workers, dry_run=args.dry_run, render_only=args.render,
               calibrate_only=args.calibrate, settings=extra, command=command)
