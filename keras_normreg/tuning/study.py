"""Run a study: keras-tuner over :class:`NormRegHyperModel`, progress, resume, reports, export.

``run_study(spec)`` builds the oracle of ``spec.tuner.kind`` and a tuner whose trials are
recipes (:func:`keras_normreg.tuning.space.trial_recipe`), searches, then writes the leaderboard
(Markdown + CSV) and the λ × normalization heatmap into ``<output.directory>/<name>/`` and
exports the best trial's model to ``<output.export_dir>/<export_name>/`` (``model.keras``,
``card.json`` with the test accuracy measured once, ``recipe.toml``).

Resume: the study lives in ``<directory>/<name>/`` (keras-tuner's project); running it again
with ``overwrite=False`` reloads the oracle, re-runs trials that were interrupted and continues
to the budget. A line per finished trial shows ``trial k/N done, best <objective> x, ETA ..``.

Distributed (keras-tuner's chief/worker protocol over gRPC): with ``role="chief"`` this process
serves the oracle on ``address`` until every worker has been told to stop, then writes the
reports; with ``role="worker"`` it asks the chief for trials and runs them. Workers must share
the study directory with the chief for the export (same machine, or a shared file system).
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Mapping

import keras_tuner as kt

from keras_normreg import _compat, distribute, saving
from keras_normreg import config as nr_config
from keras_normreg import data as nr_data
from keras_normreg.tuning import launcher, report
from keras_normreg.tuning import space as nr_space
from keras_normreg.tuning import spec as nr_spec
from keras_normreg.tuning.grid import EagerGridOracle
from keras_normreg.tuning.hypermodel import NormRegHyperModel

__all__ = ["ProgressDisplay", "budget", "export_best", "format_duration", "make_tuner",
           "progress_line", "run_study", "serve_oracle", "trials_done"]

# keras-tuner 1.4.8's Parent.to_proto prints its first value (a leftover debug print) every
# time a conditional hyperparameter crosses gRPC; a module global shadows the builtin there.
_compat.kt_silence_conditions()
# keras-tuner's distribution helpers (has_chief_oracle, is_chief_oracle)
kt_dist = _compat.kt_distribute()

RESULT_FILE = "result.json"
RECIPE_FILE = "recipe.toml"


def format_duration(seconds: float) -> str:
    """``45s``, ``1m20s``, ``2h05m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def progress_line(done: int, total: int | None, objective: str, best: float | None,
                  eta_seconds: float | None) -> str:
    """``trial 3/12 done, best val_accuracy 0.9300, ETA 1m20s``."""
    best_s = "n/a" if best is None else f"{best:.4f}"
    eta = "?" if eta_seconds is None else format_duration(eta_seconds)
    return f"trial {done}/{total if total is not None else '?'} done, best {objective} {best_s}, ETA {eta}"


def trials_done(oracle) -> int:
    """Trials that ended for good (completed or failed) — what the budget counts."""
    return len(set(oracle.end_order))


def _describe(values: Mapping) -> str:
    p = nr_space.decode(values)
    parts = [f"norm={p['norm']}", f"decay={p['decay']}", f"lr={p['learning_rate']:.3g}"]
    if p["lambda"] is not None:
        parts += [f"λ={p['lambda']:.3g}", f"ηλ={p['eta_lambda']:.3g}"]
    if "tuner/epochs" in values:
        parts.append(f"epochs={values['tuner/epochs']}")
    return " ".join(parts)


class ProgressDisplay(_compat.kt_display_class()):
    """The oracle's display: one line when a trial starts and one when it ends, with the
    count against the budget, the best score so far and an ETA from this session's pace
    (trials finished per second since the session started, workers included)."""

    def __init__(self, oracle, total: int | None, out=None):
        super().__init__(oracle=oracle, verbose=1)
        self.total = total
        self.out = out
        self.session_start = time.monotonic()
        self.session_done = 0
        self._begun = {}

    def _print(self, text):
        print(text, file=self.out or sys.stdout, flush=True)

    def on_trial_begin(self, trial):
        if self.verbose < 1:
            return
        now = datetime.datetime.now()
        self.trial_start[trial.trial_id] = now
        if self.search_start is None:
            self.search_start = now
        self.trial_number[trial.trial_id] = len(self.oracle.trials)
        self._begun[trial.trial_id] = time.monotonic()
        who = [tid for tid, t in self.oracle.ongoing_trials.items()
               if t.trial_id == trial.trial_id]
        on = f" on {who[0]}" if who and kt_dist.has_chief_oracle() else ""
        self._print(f"trial {trial.trial_id} started{on}: {_describe(trial.hyperparameters.values)}")

    def eta(self, done: int) -> float | None:
        if self.total is None or self.session_done == 0:
            return None
        pace = (time.monotonic() - self.session_start) / self.session_done
        return pace * max(0, self.total - done)

    def on_trial_end(self, trial):
        if self.verbose < 1:
            return
        self.session_done += 1
        done = trials_done(self.oracle)
        best = [t for t in self.oracle.get_best_trials(1) if t.status == "COMPLETED"]
        best_score = best[0].score if best else None
        took = self._begun.pop(trial.trial_id, None)
        took_s = "" if took is None else f" in {format_duration(time.monotonic() - took)}"
        score = "failed" if trial.status != "COMPLETED" else \
            f"{self.oracle.objective.name} {trial.score:.4f}"
        line = progress_line(done, self.total, self.oracle.objective.name, best_score,
                             self.eta(done))
        self._print(f"{line}  [trial {trial.trial_id}: {score}{took_s}]")


class _StudyMixin:
    """Per-trial records (recipe.toml, result.json), seeds per execution, and a chief that
    polls for the end of the search every 0.5 s (keras-tuner's sleeps 20 s)."""

    study: dict

    def _init_study(self, study):
        self.study = study
        self._executions = collections.Counter()

    def search(self, *args, **kwargs):
        if kt_dist.is_chief_oracle():
            self.save()
            serve_oracle(self.oracle, os.environ["KERASTUNER_ORACLE_IP"],
                         int(os.environ["KERASTUNER_ORACLE_PORT"]))
            return
        return super().search(*args, **kwargs)

    def _build_hypermodel(self, hp):
        with warnings.catch_warnings():
            # Hyperband continues from an earlier trial's weights; its optimizer state is unused
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return super()._build_hypermodel(hp)

    def _build_and_fit_model(self, trial, *args, **kwargs):
        tid = trial.trial_id
        execution = self._executions[tid]
        self._executions[tid] += 1
        self.hypermodel.seed_offset = execution
        self.hypermodel.name = f"{self.study['name']}_trial_{tid}"
        start = time.perf_counter()
        results = super()._build_and_fit_model(trial, *args, **kwargs)
        seconds = time.perf_counter() - start
        self._record(trial, results, seconds, execution)
        return results

    def _record(self, trial, results, seconds, execution):
        trial_dir = self.get_trial_dir(trial.trial_id)
        cfg = self.hypermodel.recipe(trial.hyperparameters)
        nr_config.dump(cfg, os.path.join(trial_dir, RECIPE_FILE))
        history = getattr(results, "history", None)
        if history is None:
            history = {k: [v] for k, v in dict(results).items()}
        path = os.path.join(trial_dir, RESULT_FILE)
        runs = []
        if execution > 0 and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                runs = json.load(f).get("executions", [])
        runs.append({"seconds": round(seconds, 3), "seed": cfg["train"]["seed"],
                     "epochs": len(history.get("loss", [])),
                     "history": {k: [float(x) for x in v] for k, v in history.items()}})
        record = {"trial_id": trial.trial_id, "tuner_id": self.tuner_id,
                  "host": socket.gethostname(), "seconds": round(sum(r["seconds"] for r in runs), 3),
                  "point": nr_space.decode(trial.hyperparameters.values),
                  "executions": runs}
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, path)
        if kt_dist.has_chief_oracle():  # a worker: say what it did in its own log
            obj = self.oracle.objective.name
            val = history.get(obj, [float("nan")])
            best = max(val) if self.oracle.objective.direction == "max" else min(val)
            print(f"[{self.tuner_id}] trial {trial.trial_id} finished: {obj} {best:.4f} in "
                  f"{format_duration(seconds)} ({_describe(trial.hyperparameters.values)})",
                  flush=True)


class StudyTuner(_StudyMixin, kt.Tuner):
    """keras-tuner ``Tuner`` for random, bayesian and grid studies."""

    def __init__(self, study, oracle, hypermodel, **kwargs):
        self._init_study(study)
        super().__init__(oracle=oracle, hypermodel=hypermodel, **kwargs)


class HyperbandStudyTuner(_StudyMixin, kt.Hyperband):
    """keras-tuner ``Hyperband`` (epochs per trial from the bracket, weights carried over)."""

    def __init__(self, study, oracle, hypermodel, **kwargs):
        self._init_study(study)
        # Hyperband.__init__ only builds its own oracle: skip to Tuner with ours.
        kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)


def make_oracle(spec: Mapping):
    t, b, o = spec["tuner"], spec["budget"], spec["objective"]
    common = {"objective": kt.Objective(o["name"], o["direction"]), "seed": t["seed"],
              "max_retries_per_trial": t["max_retries_per_trial"],
              "max_consecutive_failed_trials": t["max_consecutive_failed_trials"]}
    kind = t["kind"]
    if kind == "random":
        return kt.oracles.RandomSearchOracle(max_trials=b["max_trials"], **common)
    if kind == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(
            max_trials=b["max_trials"], num_initial_points=t["num_initial_points"], **common)
    if kind == "grid":
        # Not kt.oracles.GridSearchOracle: it serializes distributed workers (see grid.py).
        return EagerGridOracle(max_trials=b["max_trials"], **common)
    return kt.oracles.HyperbandOracle(max_epochs=b["max_epochs"], factor=t["factor"],
                                      hyperband_iterations=t["hyperband_iterations"], **common)


def budget(spec: Mapping, oracle=None) -> int | None:
    """Trials the study will run (hyperband: every bracket's rounds, times the iterations)."""
    n = nr_spec.study_budget(spec)
    if n is not None:
        return n
    oracle = oracle or make_oracle(spec)
    return _compat.hyperband_budget(oracle) * spec["tuner"]["hyperband_iterations"]


def _strategy(spec):
    strategy = distribute.resolve_strategy(spec["strategy"])
    import tensorflow as tf

    return None if strategy is tf.distribute.get_strategy() else strategy


def make_tuner(spec: Mapping, *, directory: str | None = None, overwrite: bool = False,
               out=None):
    """The keras-tuner tuner of a resolved study (reloads an existing project unless
    ``overwrite``)."""
    strategy = _strategy(spec)
    base = spec["base"]
    hypermodel = NormRegHyperModel(base["model"]["arch"], base["data"]["dataset"],
                                   spec["space"], base=base, strategy=strategy,
                                   name=f"{spec['name']}_trial")
    oracle = make_oracle(spec)
    _compat.set_oracle_display(oracle, ProgressDisplay(oracle, budget(spec, oracle), out=out))
    project = nr_spec.project_dir(spec, directory)
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
    is_worker = kt_dist.has_chief_oracle() and not kt_dist.is_chief_oracle()
    if not overwrite and not is_worker and \
            os.path.isfile(os.path.join(project, "oracle.json")) and \
            not os.path.isfile(os.path.join(project, f"{tuner_id}.json")):
        # The study ran under another tuner id before (one process <-> chief): keras-tuner
        # reloads the oracle only when this id's state file exists; its state is empty.
        with open(os.path.join(project, f"{tuner_id}.json"), "w", encoding="utf-8") as f:
            f.write("{}")
    cls = HyperbandStudyTuner if spec["tuner"]["kind"] == "hyperband" else StudyTuner
    return cls(dict(spec), oracle, hypermodel, directory=directory or spec["output"]["directory"],
               project_name=spec["name"], overwrite=overwrite, distribution_strategy=strategy,
               executions_per_trial=spec["budget"]["executions_per_trial"])


def serve_oracle(oracle, host: str, port: int, poll: float = 0.5) -> None:
    """Serve ``oracle`` to workers over gRPC until the search has ended: some worker was told
    to stop, no trial is running and every worker that asked for trials has been told to stop.
    """
    from concurrent import futures

    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer, add_to_server, exit_chief = _compat.oracle_servicer(oracle)
    add_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as e:
        bound = 0
        cause = e
    else:
        cause = None
    if not bound:
        raise OSError(f"The chief could not listen on {host}:{port} (address in use or not "
                      f"this machine's). Received: oracle='{host}:{port}'") from cause
    server.start()
    try:
        while not (servicer.stop_triggered and exit_chief(oracle)):
            time.sleep(poll)
    finally:
        server.stop(grace=2)


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def export_best(tuner, spec: Mapping, *, command: str | None = None, out=None) -> dict | None:
    """Evaluate the best trial's model on the test split once and save it with a card.

    The weights are those of the trial's best epoch (by the objective). Returns
    ``{"path", "trial_id", "metrics"}`` or None when there is nothing to export.
    """
    out = out or sys.stdout
    best = [t for t in tuner.oracle.get_best_trials(1) if t.status == "COMPLETED"]
    if not best:
        print("no completed trial: nothing to export", file=out)
        return None
    trial = best[0]
    ckpt = _compat.tuner_checkpoint_path(tuner, trial.trial_id)
    if not os.path.isfile(ckpt):
        print(f"best trial {trial.trial_id}: no checkpoint at {ckpt} (workers on other machines "
              "need a shared --directory); export skipped", file=out)
        return None
    name = spec["output"]["export_name"]
    tuner.hypermodel.seed_offset = 0
    with warnings.catch_warnings():
        # the checkpoint holds the optimizer state too; only the weights matter here
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model = tuner.load_model(trial)
    # saved with a built (zero) optimizer state, so that loading it matches variable for variable
    model.optimizer.build(model.trainable_variables)
    trial_dir = tuner.get_trial_dir(trial.trial_id)
    recipe_path = os.path.join(trial_dir, RECIPE_FILE)
    cfg = (nr_config.load_recipe(recipe_path) if os.path.isfile(recipe_path)
           else tuner.hypermodel.recipe(trial.hyperparameters))
    cfg["name"] = name
    obj = spec["objective"]["name"]
    cfg["description"] = (f"Best trial {trial.trial_id} of study {spec['name']!r} "
                          f"({obj} {trial.score:.4f}). {spec['description']}").strip()
    d = cfg["data"]
    test = nr_data.load(d["dataset"], d["test_split"], d["batch_size"], data_dir=d["data_dir"],
                        download=d["download"], autotune=d["autotune"])
    metrics = saving.evaluate_model(model, test)
    result_path = os.path.join(trial_dir, RESULT_FILE)
    result = _read_json(result_path) if os.path.isfile(result_path) else {}
    runs = result.get("executions") or [{}]
    import tensorflow as tf

    strategy = tuner.distribution_strategy or tf.distribute.get_strategy()
    out_dir = os.path.join(spec["output"]["export_dir"], name)
    tuning = {
        "study": spec["name"], "trial_id": trial.trial_id, "objective": obj,
        "score": trial.score, "best_epoch": trial.best_step,
        "weights": "best epoch of the trial by the objective",
        "point": nr_space.decode(trial.hyperparameters.values),
        "study_dir": tuner.project_dir,
    }
    saving.save_entry(model, cfg, metrics, result.get("seconds", 0.0), strategy, out_dir,
                      command=command, history=runs[-1].get("history", {}), tuning=tuning)
    return {"path": out_dir, "trial_id": trial.trial_id, "metrics": metrics}


def run_study(study, *, directory: str | None = None, overwrite: bool = False,
              max_trials: int | None = None, export: bool | None = None,
              role: str | None = None, oracle: str | None = None,
              worker_id: str | None = None, command: str | None = None, out=None) -> dict:
    """Run (or resume) a study; see the module docstring.

    Args:
        study: a path to a study TOML or a resolved spec (:func:`spec.load_study`).
        directory: overrides ``output.directory``.
        overwrite: start over (delete ``<directory>/<name>/``); never done by a worker.
        max_trials: overrides ``budget.max_trials``.
        export: overrides ``output.export``.
        role: None (one process), ``"chief"`` or ``"worker"``.
        oracle: ``HOST:PORT`` of the chief (with ``role``).
        worker_id: a worker's stable id (a restarted worker must reuse it to resume its trial).
        command: the command line recorded in the leaderboard and the model card.
        out: where progress goes (default stdout).

    Returns:
        ``{"project_dir", "done", "budget", "role", "reports", "export", "best"}``.
    """
    out = out or sys.stdout
    if isinstance(study, (str, os.PathLike)):
        spec = nr_spec.load_study(study, max_trials=max_trials)
    else:
        spec = nr_spec.with_max_trials(study, max_trials)
    if role is not None:
        launcher.check_distributed_dependencies()
    if role == "worker" and overwrite:
        raise ValueError("A worker never overwrites the study (the chief or the launcher does). "
                         "Received: overwrite=True")
    command = command or f"keras-normreg tune {spec.get('_path', spec['name'])}"
    project = nr_spec.project_dir(spec, directory)
    with launcher.tuner_environment(role, oracle, worker_id):
        if overwrite and os.path.isdir(project):
            shutil.rmtree(project)
        tuner = make_tuner(spec, directory=directory, overwrite=False, out=out)
        total = _compat.oracle_display(tuner.oracle).total if role != "worker" else None
        if role != "worker":
            done = trials_done(tuner.oracle)
            where = f" (resuming {project})" if done else f" -> {project}"
            print(f"study {spec['name']}: {done}/{total} trials done, tuner "
                  f"{spec['tuner']['kind']}, objective {spec['objective']['name']}{where}",
                  file=out, flush=True)
            with open(os.path.join(tuner.project_dir, "study.toml"), "w", encoding="utf-8") as f:
                f.write(nr_spec.study_to_toml(spec))
        tuner.search()
        if role == "worker":
            return {"project_dir": project, "role": "worker", "done": None, "budget": None,
                    "reports": None, "export": None, "best": None}
        done = trials_done(tuner.oracle)
        reports = report.write_reports(tuner.project_dir, spec, command=command, budget=total)
        print(f"study {spec['name']}: {done}/{total} trials done", file=out)
        print(report.format_console(reports["rows"], spec, top=spec["output"]["top"]), file=out)
        print(f"leaderboard: {reports['markdown']} (+ {os.path.basename(reports['csv'])})",
              file=out)
        print(f"heatmap: {reports['heatmap']}", file=out, flush=True)
        exported = None
        if spec["output"]["export"] if export is None else export:
            exported = export_best(tuner, spec, command=command, out=out)
            if exported:
                m = exported["metrics"]
                print(f"best trial {exported['trial_id']}: test accuracy "
                      f"{m['test_accuracy']:.4f} ({m['test_correct']}/{m['test_examples']}), "
                      f"test loss {m['test_loss']:.4f} -> {exported['path']}/model.keras "
                      "(+ card.json, recipe.toml)", file=out, flush=True)
        best_rows = [r for r in reports["rows"] if r["status"] == "COMPLETED"]
        return {"project_dir": project, "role": role or "single", "done": done,
                "budget": total, "reports": reports, "export": exported,
                "best": best_rows[0] if best_rows else None}

