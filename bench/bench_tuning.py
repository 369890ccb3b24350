"""Tuning benchmarks: invariance-aware vs naive search (trials to target), and the wall-time
speedup of distributed tuning with 2 workers vs 1.

1. **Trials to target** (:func:`experiments.compare.compare_parametrizations`): the
   same random-search oracle, budget and seeds over the ``product`` space (η and ηλ sampled,
   λ = ηλ/η) and over the ``independent`` space that covers it (η and λ sampled,
   :func:`covering_space`); per seed, the 1-based index of the first trial reaching the target.
   Two objectives, reported separately:

   * ``real``: :func:`training_objective` — a real training run per trial of the tiny digits CNN
     (``tuning/tiny_digits.toml``: cnn_digits widths 8/16, batch norm, SGDW + momentum,
     decoupled decay) for ``--epochs`` epochs; the score is the best validation accuracy.
   * ``surrogate``: a cheap *synthetic* ridge ``1 - 0.5 (log10 ηλ + 3)^2 - 0.002 (log10 η + 1)^2``
     (the shape the theory predicts for a scale-invariant network: the score depends on ηλ, barely
     on η). It only checks the search machinery with many seeds; it is not evidence about
     training.

   Seeds are spaced ``SEED_STRIDE`` apart (see there). Misses (a search that never reaches the
   target within the budget) count as ``budget + 1`` in the median and the ratio (censored),
   and are reported.

2. **Distributed speedup**: wall time of one study (``--speedup-study``: the MNIST-1D demo
   study with its grid tuner by default, or tiny digits with random search; ``--trials``
   trials of ``--speedup-epochs`` epochs, no export) run with
   :func:`keras_normreg.tuning.launcher.run_local` and 1 worker, then 2 workers (a chief process
   plus N worker subprocesses each time, process start-up included), ``--speedup-repeats``
   times in alternating order, in two CPU modes (``--speedup-pin``): ``shared`` (every process
   floats over all the cores: 1 vs 2 workers on this one machine) and ``machines`` (the cores
   split into two equal shares, worker i always on share i and the chief on share 0, in both
   runs: 1 vs 2 equal machines, emulated). The subprocesses inherit
   ``TF_NUM_INTRAOP_THREADS=1``, ``TF_NUM_INTEROP_THREADS=1`` and ``OMP_NUM_THREADS=1``.
   Speedup = median t(1) / median t(2).

3. **Table** (``--only table``, explicit only: ~20 min): real training (the tiny digits CNN of
   ``tuning/tiny_digits.toml``, batch norm, SGD momentum 0.9, batch 64, ``--table-epochs``
   epochs, :func:`compare.training_objective`) at every point of log-spaced grids — η x λ for
   ``decoupled`` (and ``l2`` if asked), η alone for ``unit_norm`` — written with its provenance
   (command, grids, versions, machine, date, wall time) to ``--table`` (default
   ``bench/data/tiny_digits_grid.json``). Run it with one TensorFlow thread::

       TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1 \
           .venv/bin/python bench/bench_tuning.py --only table

4. **Tabular trials to target** (``--only tabular``): random and bayesian keras-tuner searches
   (:func:`compare.search_scores`, many seeds) replayed against that table (nearest grid point
   in log space, see ``bench/_tabular.py``): naive (η, λ) box vs invariance-aware (η, ηλ) box
   vs unit norm (η only), targets from the naive box's score distribution, plus the share of
   each space's volume that reaches each target.

Run: ``.venv/bin/python bench/bench_tuning.py`` (parts trials, speedup, tabular; ``--quick``:
tiny budgets, for the smoke test).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import pathlib
import statistics
import sys
import tempfile
import time

import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _tabular  # noqa: E402
import _timing  # noqa: E402

from keras_normreg._utils import environ  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
PARTS = ("trials", "speedup", "table", "tabular")
DEFAULT_PARTS = "trials,speedup,tabular"  # "table" (~20 min of training) only when asked
DEFAULT_TABLE = ROOT / "bench" / "data" / "tiny_digits_grid.json"
STUDY = ROOT / "tuning" / "tiny_digits.toml"
# The invariance-aware (product) space; the naive one is the independent space covering it.
PRODUCT_SPACE = {"parametrization": "product", "norms": ["batch"], "decay": ["decoupled"],
                 "learning_rate": {"min": 0.01, "max": 1.0},
                 "eta_lambda": {"min": 1e-6, "max": 1e-1}}
# keras-tuner's RandomSearchOracle samples hyperparameter k of a search with seed ``seed + k``, so
# searches with consecutive seeds replay shifted copies of one sequence; seeds this far apart
# give disjoint sample streams (a search of B trials over D dimensions uses B * D of them).
SEED_STRIDE = 100_003
THREAD_ENV = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
              "OMP_NUM_THREADS": "1"}


def surrogate(point) -> float:
    """Synthetic ridge (not training): best at ηλ = 1e-3, nearly flat in η."""
    return (1.0 - 0.5 * (math.log10(point["eta_lambda"]) + 3.0) ** 2
            - 0.002 * (math.log10(point["learning_rate"]) + 1.0) ** 2)


def _raw_study() -> dict:
    with open(STUDY, "rb") as f:
        return tomllib.load(f)


def trials_to_target(kind: str, *, budget: int, seeds: int, targets, epochs: int) -> dict:
    """Run every search once (:func:`compare.search_scores`), then count the trials to each
    of ``targets`` (:func:`compare.trials_to_target`); one summary per target."""
    from experiments import compare
    from keras_normreg.tuning import spec as nr_spec

    if kind == "surrogate":
        objective, space = surrogate, PRODUCT_SPACE
    else:
        raw = _raw_study()
        raw["base"]["train"]["epochs"] = epochs
        raw["space"] = copy.deepcopy(PRODUCT_SPACE)
        spec = nr_spec.resolve_study(raw)
        objective, space = compare.training_objective(spec), spec["space"]
    spaces = {"product": compare.covering_space(space, "product"),
              "independent": compare.covering_space(space, "independent")}
    seed_list = [SEED_STRIDE * i for i in range(seeds)]
    t0 = time.perf_counter()
    scores = {name: [compare.search_scores(objective, spaces[name], budget=budget, seed=s,
                                           tuner="random") for s in seed_list]
              for name in ("independent", "product")}
    seconds = time.perf_counter() - t0
    out = {"objective": kind, "seconds": seconds, "epochs": epochs if kind == "real" else None,
           "budget": budget, "seeds": seed_list, "scores": scores,
           "best": {n: [max(v) for v in scores[n]] for n in scores}, "targets": []}
    for target in targets:
        row = {"target": target, "budget": budget, "seeds": seed_list}
        for name in ("independent", "product"):
            counts = [compare.trials_to_target(v, target) for v in scores[name]]
            censored = [c if c is not None else budget + 1 for c in counts]
            row[name] = {"trials": counts, "reached": sum(c is not None for c in counts),
                         "median_censored": statistics.median(censored),
                         "mean_censored": sum(censored) / len(censored)}
        row["ratio"] = row["independent"]["median_censored"] / row["product"]["median_censored"]
        row["mean_ratio"] = row["independent"]["mean_censored"] / row["product"]["mean_censored"]
        out["targets"].append(row)
    print(f"[trials/{kind}] {seconds:.0f} s; best per search: independent "
          f"{[round(float(b), 3) for b in out['best']['independent']]}, product "
          f"{[round(float(b), 3) for b in out['best']['product']]}", file=sys.stderr, flush=True)
    return out


def _completed(project_dir: str) -> int:
    n = 0
    for path in pathlib.Path(project_dir).glob("trial_*/trial.json"):
        with open(path) as f:
            n += json.load(f).get("status") == "COMPLETED"
    return n


SPEEDUP_STUDIES = {"mnist1d": ROOT / "tuning" / "mnist1d_lambda_norm.toml",
                   "tiny_digits": STUDY}
# "shared": every process floats over all the cores (1 vs 2 workers on this one machine);
# "machines": the cores split into max(workers) equal shares, worker i always on share i and the
# chief on share 0, in both runs (1 vs 2 equal machines, emulated; memory bandwidth and caches
# stay shared, so this errs on the slow side).
PIN_MODES = {"no": ("shared",), "machines": ("machines",), "both": ("shared", "machines")}


def _speedup_study(name: str, trials: int, epochs: int) -> dict:
    """The study file of the speedup part: its own tuner (grid for mnist1d, random for tiny
    digits), ``trials`` trials of ``epochs`` epochs, no export."""
    with open(SPEEDUP_STUDIES[name], "rb") as f:
        raw = tomllib.load(f)
    raw["name"] = "bench_tuning"
    raw["base"]["train"]["epochs"] = epochs
    raw["budget"]["max_trials"] = trials
    raw["output"] = {"export": False}
    return raw


def speedup(*, trials: int, epochs: int, study: str = "mnist1d", pin: str = "both",
            workers=(1, 2), repeats: int = 1) -> dict:
    """Wall time of ``run_local`` with 1 and 2 workers for each CPU mode of ``PIN_MODES[pin]``,
    ``repeats`` times (the order of the worker counts alternates between repeats, so that a
    drift of the machine does not favour one); speedup = median t(1) / median t(2)."""
    import statistics

    import tomli_w

    from keras_normreg.tuning import launcher

    runs = []
    shares = max(workers)
    # run_local passes os.environ on to its subprocesses
    with environ(THREAD_ENV):
        with tempfile.TemporaryDirectory(prefix="knr-bench-tuning-") as tmp:
            path = os.path.join(tmp, "bench_tuning.toml")
            with open(path, "wb") as f:
                tomli_w.dump(_speedup_study(study, trials, epochs), f)
            for mode in PIN_MODES[pin]:
                pinned = mode == "machines"
                times = {n: [] for n in workers}
                done = {n: [] for n in workers}
                for r in range(repeats):
                    for n in (workers if r % 2 == 0 else workers[::-1]):
                        directory = os.path.join(tmp, f"w{n}-{mode}")
                        project = os.path.join(directory, "bench_tuning")
                        t0 = time.perf_counter()
                        with open(os.path.join(directory + ".log"), "w") as log:
                            rc = launcher.run_local(
                                path, n, project_dir=project, directory=directory,
                                overwrite=True, timeout=590, out=log, pin_cpus=pinned,
                                cpu_shares=shares if pinned else None)
                        times[n].append(time.perf_counter() - t0)
                        done[n].append(_completed(project))
                        print(f"[speedup] {mode}, repeat {r + 1}/{repeats}, {n} worker(s): "
                              f"{times[n][-1]:.1f} s, rc={rc}, {done[n][-1]}/{trials} trials "
                              "completed", file=sys.stderr, flush=True)
                        if rc != 0:
                            raise RuntimeError(f"run_local with {n} worker(s) exited with {rc}")
                median = {n: statistics.median(times[n]) for n in workers}
                base = workers[0]
                per_repeat = {n: [times[base][i] / times[n][i] for i in range(repeats)]
                              for n in workers}
                runs.append({
                    "mode": mode, "seconds": median, "all_seconds": times, "completed": done,
                    "speedup": {n: median[base] / median[n] for n in workers},
                    "speedup_range": {n: (min(v), max(v)) for n, v in per_repeat.items()},
                    "cpus": ({n: launcher.worker_cpus(n, shares=shares) for n in workers}
                             if pinned else None)})
    return {"study": study, "trials": trials, "epochs": epochs, "repeats": repeats,
            "runs": runs, "cores": os.cpu_count(), "thread_env": THREAD_ENV}


def _study_spec(mode: str, etas, lams, *, epochs: int, seed: int):
    """The resolved tiny digits study restricted to one decay mode (batch norm, independent
    parametrization over the grid's ranges)."""
    from keras_normreg.tuning import spec as nr_spec

    raw = _raw_study()
    raw["base"]["train"]["epochs"] = epochs
    raw["base"]["train"]["seed"] = seed
    space = {"parametrization": "independent", "norms": ["batch"], "decay": [mode],
             "learning_rate": {"min": min(etas), "max": max(etas)}}
    if lams is not None:
        space["lambda"] = {"min": min(lams), "max": max(lams)}
    raw["space"] = space
    return nr_spec.resolve_study(raw)


def make_table(path, *, epochs: int, seed: int, etas, lams, unit_etas, modes, command: str,
               log=None) -> dict:
    """Train the tiny digits CNN once per grid point (:func:`compare.training_objective`) and
    write the best validation accuracies, with their provenance, to ``path`` (rewritten after
    every point, ``"complete": false`` until the end)."""
    import keras
    import tensorflow as tf

    from experiments import compare
    from keras_normreg.tuning import space as nr_space

    for mode in modes:
        if mode not in nr_space.DECAY_MODES or mode == "none":
            raise ValueError(f"Argument `modes` must hold decay modes among "
                             f"['decoupled', 'l2', 'unit_norm']. Received: modes={list(modes)!r}")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = _study_spec(modes[0], etas, lams, epochs=epochs, seed=seed)
    base = first["base"]
    out = {
        "description": "Best validation accuracy of one real training run per grid point "
                       "(tabular tuning benchmark; bench/bench_tuning.py --only table).",
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _timing.machine(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                     "python": sys.version.split()[0]},
        "thread_env": {k: os.environ.get(k) for k in THREAD_ENV},
        "tf_threads": {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
                       "inter": tf.config.threading.get_inter_op_parallelism_threads()},
        "study": str(STUDY.relative_to(ROOT)),
        "model": {"arch": base["model"]["arch"], "overrides": base["model"]["overrides"],
                  "norm": "batch", "dataset": base["data"]["dataset"],
                  "train_split": base["data"]["train_split"],
                  "validation_split": base["data"]["validation_split"],
                  "batch_size": base["data"]["batch_size"],
                  "optimizer": "sgd family (sgd for l2, sgdw for decoupled/unit_norm), "
                               f"momentum {base['optimizer']['momentum']}, "
                               f"schedule {base['schedule']['kind']}",
                  "epochs": epochs, "seed": seed},
        "score": "best val_accuracy over the epochs (compare.training_objective)",
        "lookup": "nearest grid point in (log eta, log lambda); see bench/_tabular.py",
        "grids": {}, "complete": False, "wall_seconds": None,
    }
    t_all = time.perf_counter()
    for mode in modes:
        with_lambda = nr_space.DECAY_MODES[mode][0]
        mode_etas = list(etas) if with_lambda else list(unit_etas)
        mode_lams = list(lams) if with_lambda else None
        spec = _study_spec(mode, mode_etas, mode_lams, epochs=epochs, seed=seed)
        objective = compare.training_objective(spec)
        n_lam = len(mode_lams) if with_lambda else 1
        score = [[None] * n_lam for _ in mode_etas]
        secs = [[None] * n_lam for _ in mode_etas]
        entry = {"decay": mode, "learning_rate": mode_etas, "lambda": mode_lams,
                 "score": score if with_lambda else None, "seconds": secs, "wall_seconds": None}
        out["grids"][mode] = entry
        t_mode = time.perf_counter()
        for i, eta in enumerate(mode_etas):
            for j in range(n_lam):
                lam = mode_lams[j] if with_lambda else None
                point = {"norm": "batch", "decay": mode, "learning_rate": eta, "lambda": lam,
                         "eta_lambda": None if lam is None else eta * lam}
                keras.backend.clear_session()
                t0 = time.perf_counter()
                score[i][j] = objective(point)
                secs[i][j] = round(time.perf_counter() - t0, 2)
                if log is not None:
                    log(f"[table/{mode}] eta={eta:.4g} lambda={lam if lam is None else f'{lam:.3g}'}"
                        f": {score[i][j]:.4f} ({secs[i][j]:.1f} s)")
                if not with_lambda:
                    entry["score"] = [row[0] for row in score]
                _write_json(path, out)
        if not with_lambda:
            entry["score"] = [row[0] for row in score]
            entry["seconds"] = [row[0] for row in secs]
        entry["wall_seconds"] = round(time.perf_counter() - t_mode, 1)
    out["wall_seconds"] = round(time.perf_counter() - t_all, 1)
    out["complete"] = True
    _write_json(path, out)
    return out


def _write_json(path, data) -> None:
    tmp = pathlib.Path(str(path) + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


def tabular(table_path, *, seeds: int, budget: int, tuners, quantiles, n_volume: int = 1000,
            log=None) -> dict:
    """Trials to target of searches replayed against a table (see ``bench/_tabular.py``),
    per λ-mode of the table (naive / product arms; the unit-norm arm with ``decoupled``)."""
    from experiments import compare

    with open(table_path) as f:
        table = json.load(f)
    if not table.get("complete"):
        raise ValueError(f"The table is incomplete (its generation did not finish). "
                         f"Received: table={str(table_path)!r}")
    seed_list = list(range(seeds))
    out = {"table": str(table_path), "table_command": table.get("command"),
           "table_model": table.get("model"), "budget": budget, "seeds": seed_list,
           "tuners": list(tuners), "quantiles": list(quantiles), "modes": {}}
    t_all = time.perf_counter()
    for mode in [m for m in _tabular.LAMBDA_MODES if m in table["grids"]]:
        arms = _tabular.arms_for(table, lambda_mode=mode)
        if mode != "decoupled":
            arms.pop("unit_norm", None)
        volume = {a: _tabular.volume_scores(table, arms[a], n_volume) for a in arms}
        # accuracies are quantized (1/n_val): several quantiles can give one target; keep it once
        picked: dict = {}
        for q, t in zip(quantiles, _tabular.targets_from_quantiles(volume["naive"], quantiles),
                        strict=True):
            picked.setdefault(t, []).append(q)
        res = {"arms": {a: arms[a]["space"] for a in arms},
               "best_in_space": {a: float(volume[a].max()) for a in arms},
               "targets": [], "searches": {}}
        for t, qs in picked.items():
            fr = {a: _tabular.fraction_reaching(volume[a], t) for a in arms}
            res["targets"].append({
                "quantile": qs[0], "quantiles": qs, "target": t, "volume_fraction": fr,
                "random_expectation": {a: _tabular.random_search_expectation(fr[a], budget)
                                       for a in arms}})
        for tuner in tuners:
            t0 = time.perf_counter()
            scores = _tabular.simulate(table, arms, tuner=tuner, budget=budget, seeds=seed_list,
                                       log=log)
            rows = []
            for row in res["targets"]:
                t = row["target"]
                summ = {a: _tabular.summarize_counts(
                    [compare.trials_to_target(v, t) for v in scores[a]], budget) for a in arms}
                cens = {a: [c if c is not None else budget + 1 for c in summ[a]["trials"]]
                        for a in arms}
                ratio = {a: summ["naive"]["median_censored"] / summ[a]["median_censored"]
                         for a in arms if a != "naive"}
                ci = {a: _tabular.bootstrap_ratio_ci(cens["naive"], cens[a]) for a in ratio}
                rows.append({"quantile": row["quantile"], "target": t, "arms": summ,
                             "ratio": ratio, "ratio_ci95": ci})
            res["searches"][tuner] = {"seconds": time.perf_counter() - t0, "rows": rows,
                                      "scores": scores,
                                      "trials_run": {a: [len(v) for v in scores[a]]
                                                     for a in arms}}
        out["modes"][mode] = res
    out["seconds"] = time.perf_counter() - t_all
    return out


def _print_tabular(res) -> None:
    print(f"table: {res['table']} ({res['table_model']['epochs']} epochs, seed "
          f"{res['table_model']['seed']}); {len(res['seeds'])} searches per arm and tuner, "
          f"budget {res['budget']}; misses count as budget + 1\n")
    for mode, m in res["modes"].items():
        arms = list(m["arms"])
        print(f"### decay={mode}: share of each space's volume reaching the target "
              "(random search: mean trials = 1/share)\n")
        print("| target (best q of naive box) | " + " | ".join(arms) + " |")
        print("|---|" + "---:|" * len(arms))
        for row in m["targets"]:
            cells = [f"{row['volume_fraction'][a]:.3f} (1/p = "
                     f"{row['random_expectation'][a]['mean']:.1f})" for a in arms]
            qs = "/".join(str(q) for q in row["quantiles"])
            print(f"| {row['target']:.4f} (q={qs}) | " + " | ".join(cells) + " |")
        print("best in space: " + ", ".join(f"{a} {m['best_in_space'][a]:.4f}" for a in arms))
        print()
        others = [a for a in arms if a != "naive"]
        print("| tuner | target | " + " | ".join(f"{a}: median trials (reached)" for a in arms)
              + " | " + " | ".join(f"naive / {a} [95% CI]" for a in others)
              + " | met (>= 2)? |")
        print("|---|---|" + "---:|" * len(arms) + "---:|" * len(others) + "---|")
        for tuner, s in m["searches"].items():
            for r in s["rows"]:
                cells = [f"{r['arms'][a]['median_censored']:g} "
                         f"({r['arms'][a]['reached']}/{r['arms'][a]['searches']})" for a in arms]
                rat = [f"{r['ratio'][a]:.2f} [{r['ratio_ci95'][a][0]:.2f}-"
                       f"{r['ratio_ci95'][a][1]:.2f}]" for a in others]
                met = ", ".join(f"{a}: {'yes' if r['ratio'][a] >= 2 else 'NO'}" for a in others)
                print(f"| {tuner} | {r['target']:.4f} (q={r['quantile']}) | "
                      + " | ".join(cells) + " | " + " | ".join(rat) + f" | {met} |")
        print()


def _fmt_trials(summary) -> str:
    return ", ".join("-" if c is None else str(c) for c in summary["trials"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: tiny budgets, 1 epoch (for tests, not for numbers)")
    _timing.add_only(p, PARTS, "parts")
    p.set_defaults(only=DEFAULT_PARTS)
    p.add_argument("--budget", type=int, default=None, help="trials per search (real objective)")
    p.add_argument("--seeds", type=int, default=None, help="searches per parametrization (real)")
    p.add_argument("--targets", default="0.9,0.95,0.97",
                   help="comma-separated validation accuracies to reach (real objective)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (real objective)")
    p.add_argument("--surrogate-seeds", type=int, default=None)
    p.add_argument("--trials", type=int, default=None, help="trials of the speedup study")
    p.add_argument("--speedup-epochs", type=int, default=None, help="epochs per speedup trial")
    p.add_argument("--speedup-study", choices=sorted(SPEEDUP_STUDIES), default=None,
                   help="study of the speedup part (default mnist1d, its grid tuner; "
                        "--quick: tiny_digits)")
    p.add_argument("--speedup-pin", choices=sorted(PIN_MODES), default="both",
                   help="processes share every core (no), one emulated machine per worker "
                        "(machines: max(workers) equal CPU shares, the chief on worker 0's), "
                        "or both")
    p.add_argument("--speedup-repeats", type=int, default=None,
                   help="runs of each (mode, workers) pair; medians are reported (default 3, "
                        "--quick 1)")
    p.add_argument("--table", default=None,
                   help=f"table JSON written by part table / read by part tabular (default "
                        f"{DEFAULT_TABLE.relative_to(ROOT)}; --quick writes a temporary one)")
    p.add_argument("--table-epochs", type=int, default=None, help="epochs per table point")
    p.add_argument("--table-seed", type=int, default=7, help="train.seed of every table point")
    p.add_argument("--eta-points", type=int, default=None,
                   help="η grid points over [0.01, 1] (decoupled/l2 tables)")
    p.add_argument("--lambda-points", type=int, default=None,
                   help="λ grid points over [1e-6, 10]")
    p.add_argument("--unit-norm-points", type=int, default=None,
                   help="η grid points of the unit_norm table")
    p.add_argument("--table-modes", default="decoupled,unit_norm",
                   help="decay modes of the table, among decoupled, unit_norm, l2")
    p.add_argument("--sim-seeds", type=int, default=None, help="searches per arm (tabular)")
    p.add_argument("--sim-budget", type=int, default=None, help="trials per search (tabular)")
    p.add_argument("--tuners", default="random,bayesian", help="tuners of part tabular")
    p.add_argument("--quantiles", default="0.25,0.1,0.05,0.02",
                   help="targets of part tabular: the score of the best q of the naive box")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)
    only = set(_timing.parse_only(p, args.only, PARTS, "parts"))
    q = args.quick
    budget = args.budget or (2 if q else 12)
    seeds = args.seeds or (1 if q else 5)
    epochs = args.epochs or (1 if q else 10)
    s_seeds = args.surrogate_seeds or (3 if q else 30)
    s_study = args.speedup_study or ("tiny_digits" if q else "mnist1d")
    trials = args.trials or (2 if q else 16)
    s_epochs = args.speedup_epochs or (1 if q else 10)
    if args.speedup_repeats is not None and args.speedup_repeats < 1:
        p.error(f"--speedup-repeats must be >= 1. Received: speedup_repeats="
                f"{args.speedup_repeats!r}")
    s_repeats = args.speedup_repeats or (1 if q else 3)
    targets = [float(t) for t in args.targets.split(",")]
    quantiles = [float(t) for t in args.quantiles.split(",")]
    tuners = [t.strip() for t in args.tuners.split(",") if t.strip()]
    bad = [t for t in tuners if t not in ("random", "bayesian")]
    if bad or not tuners:
        p.error(f"--tuners must list 'random' and/or 'bayesian'. Received: tuners={args.tuners!r}")
    modes = [m.strip() for m in args.table_modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("decoupled", "unit_norm", "l2")]
    if bad or not modes:
        p.error("--table-modes must list decay modes among decoupled, unit_norm, l2. "
                f"Received: table_modes={args.table_modes!r}")
    if args.table is not None:
        table_path = pathlib.Path(args.table)
    elif q and "table" in only:
        table_path = pathlib.Path(tempfile.gettempdir()) / "knr_bench_tuning_quick_table.json"
    else:
        table_path = DEFAULT_TABLE
    _timing.setup(0)

    results: dict = {}
    if "trials" in only:
        results["surrogate"] = trials_to_target("surrogate", budget=40, seeds=s_seeds,
                                                targets=[0.99], epochs=0)
        results["real"] = trials_to_target("real", budget=budget, seeds=seeds, targets=targets,
                                           epochs=epochs)
    if "speedup" in only:
        results["speedup"] = speedup(trials=trials, epochs=s_epochs, study=s_study,
                                     pin=args.speedup_pin, repeats=s_repeats)
    cmd = _timing.command([os.path.join(ROOT, "bench", "bench_tuning.py"), *args._argv])
    if "table" in only:
        env = " ".join(f"{k}={os.environ[k]}" for k in THREAD_ENV if k in os.environ)
        n_eta = args.eta_points or (2 if q else 9)
        n_lam = args.lambda_points or (2 if q else 15)
        n_unit = args.unit_norm_points or (2 if q else 15)
        results["table"] = make_table(
            table_path, epochs=args.table_epochs or (1 if q else 20), seed=args.table_seed,
            etas=_tabular.log_grid(0.01, 1.0, n_eta), lams=_tabular.log_grid(1e-6, 10.0, n_lam),
            unit_etas=_tabular.log_grid(0.01, 1.0, n_unit), modes=modes,
            command=f"{env} {cmd}".strip(),
            log=lambda m: print(m, file=sys.stderr, flush=True))
    if "tabular" in only:
        results["tabular"] = tabular(
            table_path, seeds=args.sim_seeds or (2 if q else 50),
            budget=args.sim_budget or (4 if q else 30), tuners=tuners, quantiles=quantiles,
            n_volume=100 if q else 1000, log=lambda m: print(m, file=sys.stderr, flush=True))

    print("\n## Tuning benchmarks\n")
    print(f"machine: {_timing.machine()}")
    print(f"command: {cmd}\n")
    if "trials" in only:
        print("| objective | budget x seeds | target | naive (independent) trials to target | "
              "invariance-aware (product) | median naive / product | target | met? |")
        print("|---|---|---|---|---|---:|---|---|")
        for kind in ("real", "surrogate"):
            res = results[kind]
            label = (f"real: tiny digits CNN + BN, SGDW, {res['epochs']} epochs, best "
                     "val_accuracy" if kind == "real" else
                     "SURROGATE (synthetic ridge, not training)")
            for r in res["targets"]:
                met = "yes" if r["ratio"] >= 2.0 else "NO"
                ind, prod = r["independent"], r["product"]
                print(f"| {label} | {r['budget']} x {len(r['seeds'])} | {r['target']} "
                      f"| {_fmt_trials(ind)} (median {ind['median_censored']}, "
                      f"{ind['reached']} reached) | {_fmt_trials(prod)} (median "
                      f"{prod['median_censored']}, {prod['reached']} reached) "
                      f"| {r['ratio']:.2f} | >= 2 | {met} |")
        print("('-' = not reached within the budget; counted as budget + 1 in the median)\n")
    if "speedup" in only:
        s = results["speedup"]
        tuner = "grid" if s["study"] == "mnist1d" else "random"
        print("| study | CPUs | 1 worker s | 2 workers s | speedup [range] | target | met? |")
        print("|---|---|---:|---:|---|---|---|")
        for run in s["runs"]:
            t1, t2 = run["seconds"][1], run["seconds"][2]
            lo, hi = run["speedup_range"][2]
            met = "yes" if run["speedup"][2] >= 1.7 else "NO"
            cpus = (f"one emulated machine per worker (worker CPUs {run['cpus'][2]}, chief "
                    "with worker 0)" if run["mode"] == "machines"
                    else f"shared ({s['cores']} cores)")
            print(f"| {s['study']}, {s['trials']} {tuner} trials x {s['epochs']} epochs, "
                  f"no export | {cpus} | {t1:.1f} | {t2:.1f} | {run['speedup'][2]:.2f} "
                  f"[{lo:.2f}-{hi:.2f}] | >= 1.7 | {met} |")
        print(f"(wall time of run_local: chief + N worker processes, start-up included; median "
              f"of {s['repeats']} run(s) each, [min-max] of the per-repeat ratios; "
              "subprocesses with TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 "
              "OMP_NUM_THREADS=1)")
    if "table" in only:
        t = results["table"]
        print(f"table written: {table_path} ({', '.join(t['grids'])}; "
              f"{t['model']['epochs']} epochs; {t['wall_seconds']:.0f} s wall)\n")
    if "tabular" in only:
        _print_tabular(results["tabular"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": _timing.machine(), "command": cmd, **results}, f, indent=2,
                      default=str)
    return results


if __name__ == "__main__":
    main()
