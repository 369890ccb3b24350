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
Every call carries the study's secret (:func:`launcher.oracle_security`), which the chief's
server checks before keras-tuner's servicer sees the call (:class:`_SecretCheck`); the workers'
keras-tuner client is given a channel that adds it (:func:`oracle_channel`), over TLS when the
chief has a certificate.

Faults: the oracle (:class:`_StudyOracle`) saves its state atomically and after each
trial has left ``ongoing_trials``, so a finished study reruns nothing; a worker sends a
heartbeat while it trains, and one silent for ``distributed.worker_timeout`` seconds loses its
trial to another worker (its late reports, tagged with its id, are ignored); checkpoints are
written through a temporary file; the export waits until no trial runs. The chief and a
one-process run hold the study lock (:func:`launcher.study_lock`) and end cleanly on SIGTERM.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import datetime
import hmac
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Mapping

import grpc  # a requirement of keras-tuner
import keras
import keras_tuner as kt
from keras_tuner.engine.trial import Trial as KTTrial

from keras_normreg import _atomic, _compat, distribute, saving
from keras_normreg import config as nr_config
from keras_normreg.tuning import launcher, report
from keras_normreg.tuning import space as nr_space
from keras_normreg.tuning import spec as nr_spec
from keras_normreg.tuning.grid import EagerGridOracle
from keras_normreg.tuning.hypermodel import NormRegHyperModel

__all__ = ["ProgressDisplay", "budget", "export_best", "format_duration", "make_tuner",
           "oracle_channel", "progress_line", "run_study", "serve_oracle", "start_oracle_server",
           "study_finished", "trials_done"]

# keras-tuner 1.4.8's Parent.to_proto prints its first value (a leftover debug print) every
# time a conditional hyperparameter crosses gRPC; a module global shadows the builtin there.
_compat.kt_silence_conditions()
# trial.json, build_config.json: written atomically (keras-tuner writes them in place)
_compat.install_atomic_kt_json(lambda path, text: _atomic.write_text(
    path, text, prefix=".kt-", suffix=".tmp", durable=False))
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


# ------------------------------------------------------------------- the study's oracle
#: a worker tags the trial ids of its reports with its id: ``"03@tuner1"`` (the chief strips it)
TAG = "@"
#: seconds a worker waits between two requests when the chief has no trial for it yet
IDLE_WAIT = 1.0
_STATUS = _compat.kt_trial_status()


def _split_tag(trial_id):
    """``"03@tuner1"`` -> ``("03", "tuner1")``; an untagged id -> ``(id, None)``."""
    if isinstance(trial_id, str) and TAG in trial_id:
        tid, _, who = trial_id.partition(TAG)
        return tid, who or None
    return trial_id, None


class _StudyOracle:
    """What every study oracle adds to keras-tuner's (a mixin before the keras-tuner class).

    * State saved consistently: atomically (temp file + rename), and once more after
      ``end_trial`` has dropped the trial from ``ongoing_trials`` (keras-tuner saves before),
      so a finished study reloads with nothing to re-run; :meth:`reload` also drops from the
      retry queue any trial that already ended (state written by an older version).
    * Worker timeout (chief): a worker that has not been heard from (a request, or a
      heartbeat while it trains) for ``worker_timeout`` seconds loses its trial, which goes
      back to the retry queue for another worker (not counted as a failure), and no longer
      holds up the end of the study (:meth:`expire_silent_workers`, called by
      :func:`serve_oracle`).
    * Stale reports ignored: a worker tags its reports with its id; a report on a trial the
      worker no longer holds (handed to another after a timeout) or on a trial that has
      already ended is dropped, so no trial is counted twice.
    * A worker with nothing to do while other workers still run trials waits (IDLE, one
      request a second) instead of exiting: a trial handed back still finds a worker.
    """

    def __init__(self, *args, worker_timeout: float = launcher.DEFAULT_WORKER_TIMEOUT,
                 out=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.worker_timeout = launcher.check_worker_timeout(worker_timeout)
        self.serving = False  # set by serve_oracle: requests come from workers over gRPC
        self.out = out
        self._last_seen: dict[str, float] = {}

    def _say(self, text):
        print(text, file=self.out or sys.stdout, flush=True)

    def _touch(self, tuner_id):
        if tuner_id is not None:
            self._last_seen[tuner_id] = time.monotonic()

    def _holder(self, trial_id):
        for tuner_id, trial in self.ongoing_trials.items():
            if trial.trial_id == trial_id:
                return tuner_id
        return None

    def save(self):
        # consistency, not durability: the chief saves it after every change
        _atomic.write_json(_compat.oracle_state_path(self), self.get_state(), prefix=".oracle-",
                           suffix=".tmp", durable=False)

    def reload(self):
        super().reload()
        queue = _compat.oracle_retry_queue(self)
        ended = set(self.end_order)
        queue[:] = [tid for tid in dict.fromkeys(queue) if tid not in ended]

    def create_trial(self, tuner_id):
        trial = self._create_trial(tuner_id)
        if trial.status == _STATUS.IDLE and self.serving:
            time.sleep(IDLE_WAIT)  # outside the lock: the worker asks again at once
        return trial

    @kt.synchronized
    def _create_trial(self, tuner_id):
        self._touch(tuner_id)
        trial = super().create_trial(tuner_id)
        if trial.status == _STATUS.STOPPED and self.serving and self.ongoing_trials:
            # the budget is spent but other workers still run trials, which may come back
            # (worker timeout): keep this worker until they end
            self.tuner_ids.add(tuner_id)
            trial.status = _STATUS.IDLE
        return trial

    def _ignore(self, trial_id, tuner_id, what):
        holder = self._holder(trial_id)
        why = ("it has already ended" if trial_id in self.end_order else
               f"it was handed to {holder}" if holder else "it was handed back for a retry")
        self._say(f"ignored {what} of trial {trial_id} from {tuner_id or 'a worker'}: {why}")

    def _stale(self, trial_id, tuner_id) -> bool:
        """A report on ``trial_id`` that must not count: the trial has ended, or is not (or
        no longer) held by ``tuner_id`` (any tuner, when the report is untagged)."""
        if trial_id in self.end_order:
            return True
        holder = self._holder(trial_id)
        return holder is None or (tuner_id is not None and holder != tuner_id)

    @kt.synchronized
    def update_trial(self, trial_id, metrics, step=0):
        trial_id, tuner_id = _split_tag(trial_id)
        if self._stale(trial_id, tuner_id):
            self._ignore(trial_id, tuner_id, "the metrics")
            return self.trials[trial_id]
        self._touch(tuner_id or self._holder(trial_id))
        return super().update_trial(trial_id, metrics, step=step)

    @kt.synchronized
    def end_trial(self, trial):
        trial_id, tuner_id = _split_tag(trial.trial_id)
        trial.trial_id = trial_id
        if self._stale(trial_id, tuner_id):
            self._ignore(trial_id, tuner_id, "the end")
            return
        self._touch(tuner_id or self._holder(trial_id))
        super().end_trial(trial)
        self.save()  # keras-tuner saved before dropping the trial from ongoing_trials

    @kt.synchronized
    def get_trial(self, trial_id):
        trial_id, tuner_id = _split_tag(trial_id)
        trial = self.trials[trial_id]
        if tuner_id is None:
            return trial
        # a worker's heartbeat: STOPPED tells it the trial is not its own any more
        if self._stale(trial_id, tuner_id):
            return KTTrial(self.get_space(), trial_id=trial_id,
                           status=_STATUS.STOPPED)
        self._touch(tuner_id)
        return trial

    @kt.synchronized
    def expire_silent_workers(self, now: float | None = None) -> list[tuple[str, str | None]]:
        """Forget the workers not heard from for ``worker_timeout`` seconds; their trials go
        back to the retry queue. Returns ``[(tuner_id, trial_id or None), ...]``."""
        now = time.monotonic() if now is None else now
        expired = []
        for tuner_id, seen in list(self._last_seen.items()):
            if now - seen <= self.worker_timeout:
                continue
            del self._last_seen[tuner_id]
            registered = tuner_id in self.tuner_ids
            self.tuner_ids.discard(tuner_id)
            trial = self.ongoing_trials.pop(tuner_id, None)
            if trial is None:
                if registered:
                    self._say(f"worker {tuner_id} silent for {now - seen:.0f} s: no longer "
                              "waited for")
                    expired.append((tuner_id, None))
                continue
            _compat.oracle_retry_queue(self).append(trial.trial_id)
            self.save()
            self._say(f"worker {tuner_id} silent for {now - seen:.0f} s (worker_timeout "
                      f"{self.worker_timeout:g} s): trial {trial.trial_id} handed back, another "
                      "worker will run it")
            expired.append((tuner_id, trial.trial_id))
        return expired

    @kt.synchronized
    def save_now(self):
        self.save()


class RandomStudyOracle(_StudyOracle, kt.oracles.RandomSearchOracle):
    pass


class BayesianStudyOracle(_StudyOracle, kt.oracles.BayesianOptimizationOracle):
    pass


class GridStudyOracle(_StudyOracle, EagerGridOracle):
    pass


class HyperbandStudyOracle(_StudyOracle, kt.oracles.HyperbandOracle):
    pass


class _WorkerOracle:
    """A worker's view of the chief's oracle: keras-tuner's gRPC client, whose reports carry
    this worker's id (``"<trial_id>@<tuner_id>"``, see :class:`_StudyOracle`) and which can
    send a heartbeat."""

    def __init__(self, client, tuner_id: str):
        self._client = client
        self._tuner_id = tuner_id

    def __getattr__(self, name):
        return getattr(self._client, name)

    def _tag(self, trial_id):
        return f"{trial_id}{TAG}{self._tuner_id}"

    def update_trial(self, trial_id, metrics, step=0):
        return self._client.update_trial(self._tag(trial_id), metrics, step=step)

    def end_trial(self, trial):
        tagged = copy.copy(trial)
        tagged.trial_id = self._tag(trial.trial_id)
        self._client.end_trial(tagged)

    def heartbeat(self, trial_id) -> bool:
        """Tell the chief this worker is alive; False when the trial is no longer its own."""
        return self._client.get_trial(self._tag(trial_id)).status != _STATUS.STOPPED


class _Heartbeat(threading.Thread):
    """A worker's heartbeat while it runs a trial (a daemon thread)."""

    def __init__(self, oracle: _WorkerOracle, trial_id, interval: float):
        super().__init__(daemon=True, name=f"heartbeat-{trial_id}")
        self.oracle, self.trial_id, self.interval = oracle, trial_id, interval
        self.revoked = False
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.wait(self.interval):
            try:
                if not self.oracle.heartbeat(self.trial_id):
                    self.revoked = True
                    return
            except Exception:  # noqa: BLE001 - the chief is gone or busy: try again later
                continue

    def stop(self):
        self._stop_event.set()


class _StopIfRevoked(keras.callbacks.Callback):
    """Stops training when the chief has handed this worker's trial to another worker."""

    def __init__(self, heartbeat: _Heartbeat):
        super().__init__()
        self.heartbeat = heartbeat

    def on_train_batch_end(self, batch, logs=None):
        if self.heartbeat.revoked:
            self.model.stop_training = True


def _atomic_save_weights(model, path):
    """``model.save_weights(path)`` through a temporary file and a rename: a reader (the
    export) never sees a half-written checkpoint."""
    _atomic.replace_via_temp(path, lambda tmp: model.save_weights(tmp, overwrite=True),
                             suffix="-" + os.path.basename(path), durable=False)


class _StudyMixin:
    """Per-trial records (recipe.toml, result.json), seeds per execution, and a chief that
    polls for the end of the search every 0.5 s (keras-tuner's sleeps 20 s)."""

    study: dict

    def _init_study(self, study, security=None):
        self.study = study
        self._executions = collections.Counter()
        self._heartbeat = None
        self._security = security

    def _oracle_security(self) -> launcher.OracleSecurity:
        """The secret and TLS files given to :func:`make_tuner`, else the environment's."""
        if self._security is None:
            self._security = launcher.oracle_security()
        return self._security

    def _wrap_worker_oracle(self):
        """On a worker, send keras-tuner's calls over :func:`oracle_channel` (the secret on
        every call, TLS) and tag the reports with this worker's id (:class:`_WorkerOracle`)."""
        if kt_dist.has_chief_oracle() and not kt_dist.is_chief_oracle():
            address = (f"{os.environ['KERASTUNER_ORACLE_IP']}:"
                       f"{os.environ['KERASTUNER_ORACLE_PORT']}")
            _compat.set_oracle_client_channel(
                self.oracle, oracle_channel(address, self._oracle_security()))
            self.oracle = _WorkerOracle(self.oracle, self.tuner_id)

    def search(self, *args, **kwargs):
        if kt_dist.is_chief_oracle():
            self.save()
            try:
                serve_oracle(self.oracle, os.environ["KERASTUNER_ORACLE_IP"],
                             int(os.environ["KERASTUNER_ORACLE_PORT"]),
                             security=self._oracle_security())
            finally:
                self.save()  # once more at exit: the state every worker left
            return
        return super().search(*args, **kwargs)

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        if isinstance(self.oracle, _WorkerOracle):
            timeout = self.study.get("distributed", {}).get(
                "worker_timeout", launcher.DEFAULT_WORKER_TIMEOUT)
            self._heartbeat = _Heartbeat(self.oracle, trial.trial_id,
                                         launcher.heartbeat_interval(timeout))
            self._heartbeat.start()

    def on_trial_end(self, trial):
        beat, self._heartbeat = self._heartbeat, None
        if beat is not None:
            beat.stop()
            if beat.revoked:
                print(f"[{self.tuner_id}] trial {trial.trial_id} was handed to another worker "
                      "(this one was silent too long): its result is discarded", flush=True)
        super().on_trial_end(trial)

    def _revoked(self, trial_id=None) -> bool:
        """Whether the chief has handed this worker's trial to another worker (with
        ``trial_id``: ask the chief now, before writing the trial's files)."""
        beat = self._heartbeat
        if beat is None:
            return False
        if not beat.revoked and trial_id is not None:
            with contextlib.suppress(Exception):
                beat.revoked = not self.oracle.heartbeat(trial_id)
        return beat.revoked

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
        callbacks = list(kwargs.get("callbacks") or [])
        for cb in callbacks:
            if isinstance(cb, _compat.kt_save_best_epoch_class()):
                _compat.set_checkpoint_writer(cb, _atomic_save_weights)
        if self._heartbeat is not None:
            callbacks.append(_StopIfRevoked(self._heartbeat))
        kwargs["callbacks"] = callbacks
        start = time.perf_counter()
        results = super()._build_and_fit_model(trial, *args, **kwargs)
        seconds = time.perf_counter() - start
        self._record(trial, results, seconds, execution)
        return results

    def _record(self, trial, results, seconds, execution):
        if self._revoked(trial.trial_id):  # another worker has it now: leave its files alone
            return
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
        _atomic.write_json(path, record, indent=1)
        if kt_dist.has_chief_oracle():  # a worker: say what it did in its own log
            obj = self.oracle.objective.name
            val = history.get(obj, [float("nan")])
            best = max(val) if self.oracle.objective.direction == "max" else min(val)
            print(f"[{self.tuner_id}] trial {trial.trial_id} finished: {obj} {best:.4f} in "
                  f"{format_duration(seconds)} ({_describe(trial.hyperparameters.values)})",
                  flush=True)


class StudyTuner(_StudyMixin, kt.Tuner):
    """keras-tuner ``Tuner`` for random, bayesian and grid studies."""

    def __init__(self, study, oracle, hypermodel, security=None, **kwargs):
        self._init_study(study, security)
        super().__init__(oracle=oracle, hypermodel=hypermodel, **kwargs)
        self._wrap_worker_oracle()


class HyperbandStudyTuner(_StudyMixin, kt.Hyperband):
    """keras-tuner ``Hyperband`` (epochs per trial from the bracket, weights carried over)."""

    def __init__(self, study, oracle, hypermodel, security=None, **kwargs):
        self._init_study(study, security)
        # Hyperband.__init__ only builds its own oracle: skip to Tuner with ours.
        kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)
        self._wrap_worker_oracle()


def make_oracle(spec: Mapping, out=None):
    """The study's oracle (a :class:`_StudyOracle` over keras-tuner's oracle of
    ``tuner.kind``)."""
    t, b, o = spec["tuner"], spec["budget"], spec["objective"]
    common = {"objective": kt.Objective(o["name"], o["direction"]), "seed": t["seed"],
              "max_retries_per_trial": t["max_retries_per_trial"],
              "max_consecutive_failed_trials": t["max_consecutive_failed_trials"],
              "worker_timeout": spec.get("distributed", {}).get(
                  "worker_timeout", launcher.DEFAULT_WORKER_TIMEOUT),
              "out": out}
    kind = t["kind"]
    if kind == "random":
        return RandomStudyOracle(max_trials=b["max_trials"], **common)
    if kind == "bayesian":
        return BayesianStudyOracle(
            max_trials=b["max_trials"], num_initial_points=t["num_initial_points"], **common)
    if kind == "grid":
        # Not kt.oracles.GridSearchOracle: it serializes distributed workers (see grid.py).
        return GridStudyOracle(max_trials=b["max_trials"], **common)
    return HyperbandStudyOracle(max_epochs=b["max_epochs"], factor=t["factor"],
                                hyperband_iterations=t["hyperband_iterations"], **common)


def budget(spec: Mapping, oracle=None) -> int | None:
    """Trials the study will run (hyperband: every bracket's rounds, times the iterations)."""
    n = nr_spec.study_budget(spec)
    if n is not None:
        return n
    oracle = oracle or make_oracle(spec)
    return _compat.hyperband_budget(oracle) * spec["tuner"]["hyperband_iterations"]


def _strategy(spec):
    """The trials' distribution: a tf.distribute strategy on TensorFlow (None for the default
    one); on JAX/PyTorch a :class:`keras_normreg.distribute.KerasDistribution`, whose Keras
    distribution (JAX data parallelism over several devices) is set for the whole study."""
    strategy = distribute.resolve(spec["strategy"])
    if keras.backend.backend() != "tensorflow":
        if strategy.distribution is not None:
            keras.distribution.set_distribution(strategy.distribution)
        return strategy
    import tensorflow as tf

    return None if strategy is tf.distribute.get_strategy() else strategy


def make_tuner(spec: Mapping, *, directory: str | None = None, overwrite: bool = False,
               out=None, security: launcher.OracleSecurity | None = None):
    """The keras-tuner tuner of a resolved study (reloads an existing project unless
    ``overwrite``); ``security`` protects the oracle of a chief or a worker (default: from
    the environment, :func:`launcher.oracle_security`)."""
    strategy = _strategy(spec)
    # keras-tuner enters a tf.distribute strategy's scope around each build; on JAX the Keras
    # distribution is already set globally (see _strategy)
    tuner_strategy = strategy if keras.backend.backend() == "tensorflow" else None
    base = spec["base"]
    hypermodel = NormRegHyperModel(base["model"]["arch"], base["data"]["dataset"],
                                   spec["space"], base=base, strategy=strategy,
                                   name=f"{spec['name']}_trial")
    oracle = make_oracle(spec, out=out)
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
    return cls(dict(spec), oracle, hypermodel, security=security,
               directory=directory or spec["output"]["directory"],
               project_name=spec["name"], overwrite=overwrite, distribution_strategy=tuner_strategy,
               executions_per_trial=spec["budget"]["executions_per_trial"])


# ------------------------------------------------------------ who may use the oracle (gRPC)
class _SecretCheck(grpc.ServerInterceptor):
    """The chief's gate: a call whose metadata does not carry ``secret`` under
    :data:`launcher.SECRET_METADATA_KEY` (exactly once) is refused with ``UNAUTHENTICATED``
    before keras-tuner's servicer sees it; the first refusals are reported on ``err``."""

    SHOWN = 5  # refusals reported one by one; the later ones are only counted

    def __init__(self, secret: str, err=None):
        self._expected = secret.encode("ascii")
        self._err = err
        self._lock = threading.Lock()
        self.refused = 0
        self._refuse = grpc.unary_unary_rpc_method_handler(self._deny)

    def _deny(self, request, context):
        with self._lock:
            self.refused += 1
            n = self.refused
        if n <= self.SHOWN:
            more = " (further refusals are not shown)" if n == self.SHOWN else ""
            print(f"tune: refused a call from {context.peer()}: missing or wrong oracle "
                  f"secret{more}", file=self._err or sys.stderr, flush=True)
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      "missing or wrong oracle secret (the chief's KERAS_NORMREG_ORACLE_SECRET "
                      "or --oracle-secret-file)")

    def intercept_service(self, continuation, handler_call_details):
        given = [value for key, value in (handler_call_details.invocation_metadata or ())
                 if key == launcher.SECRET_METADATA_KEY]
        if len(given) == 1 and isinstance(given[0], str) and \
                hmac.compare_digest(given[0].encode("ascii", "replace"), self._expected):
            return continuation(handler_call_details)
        return self._refuse


class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                         "compression")), grpc.ClientCallDetails):
    """A client call's details with other metadata (gRPC's own class is private)."""


class _SecretMetadata(grpc.UnaryUnaryClientInterceptor):
    """A worker's side: every (unary) call carries ``secret`` in its metadata."""

    def __init__(self, secret: str):
        self._entry = (launcher.SECRET_METADATA_KEY, secret)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        d = client_call_details
        details = _CallDetails(d.method, d.timeout, [*(d.metadata or ()), self._entry],
                               d.credentials, getattr(d, "wait_for_ready", None),
                               getattr(d, "compression", None))
        return continuation(details, request)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def oracle_channel(address: str, security: launcher.OracleSecurity | None = None):
    """A gRPC channel to the chief at ``address`` (``HOST:PORT``) as a worker talks to it:
    TLS when ``security`` has a CA (or the chief's certificate), and the secret on every
    call when it has one."""
    security = security or launcher.OracleSecurity()
    if security.client_tls:
        root = _read_bytes(security.tls_ca or security.tls_cert)
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=root))
    else:
        channel = grpc.insecure_channel(address)
    if security.secret is not None:
        channel = grpc.intercept_channel(channel, _SecretMetadata(security.secret))
    return channel


def start_oracle_server(oracle, host: str, port: int, *,
                        security: launcher.OracleSecurity | None = None, err=None):
    """Start serving ``oracle`` on ``host:port`` as a chief does; returns ``(server,
    servicer, exit_chief)`` (see :func:`_compat.oracle_servicer`); the caller stops the
    server. With a secret in ``security`` every call without it is refused
    (``UNAUTHENTICATED``); with a certificate and key it serves TLS. Refused before binding
    (ValueError, :func:`launcher.check_chief`): a ``host`` that is not loopback without a
    secret, unless ``security.insecure``. The remaining exposure is reported on ``err``
    (default stderr, :func:`launcher.exposure_warning`)."""
    from concurrent import futures

    security = security or launcher.OracleSecurity()
    launcher.check_chief(host, port, security)
    interceptors = [] if security.secret is None else [_SecretCheck(security.secret, err=err)]
    # idle workers wait IDLE_WAIT seconds inside a request: room for a few dozen of them
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), interceptors=interceptors)
    servicer, add_to_server, exit_chief = _compat.oracle_servicer(oracle)
    add_to_server(servicer, server)
    try:
        if security.server_tls:
            creds = grpc.ssl_server_credentials(
                [(_read_bytes(security.tls_key), _read_bytes(security.tls_cert))])
            bound = server.add_secure_port(f"{host}:{port}", creds)
        else:
            bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as e:
        bound = 0
        cause = e
    else:
        cause = None
    if not bound:
        raise OSError(f"The chief could not listen on {host}:{port} (address in use or not "
                      f"this machine's). Received: oracle='{host}:{port}'") from cause
    launcher.warn_if_exposed(host, port, err=err, secret=security.secret is not None,
                             tls=security.server_tls)
    server.start()
    return server, servicer, exit_chief


def serve_oracle(oracle, host: str, port: int, poll: float = 0.5, err=None, *,
                 security: launcher.OracleSecurity | None = None) -> None:
    """Serve ``oracle`` to workers over gRPC until the search has ended: some worker was told
    to stop, no trial is running, no trial waits for a retry and every worker that asked for
    trials has been told to stop or has been silent for longer than the oracle's
    ``worker_timeout`` (:meth:`_StudyOracle.expire_silent_workers`, checked every ``poll``
    seconds). ``security`` (default: none) is the secret every call must carry and the TLS
    certificate; a ``host`` that is not loopback needs a secret or ``security.insecure``, and
    gets a warning on ``err`` (default stderr) without TLS (:func:`start_oracle_server`).
    """
    expire = getattr(oracle, "expire_silent_workers", None)
    if expire is not None:
        oracle.serving = True  # before the first request can come
    try:
        server, servicer, exit_chief = start_oracle_server(oracle, host, port,
                                                           security=security, err=err)
        try:
            while True:
                if expire is not None:
                    expire()
                if servicer.stop_triggered and exit_chief(oracle) and \
                        not _compat.oracle_retry_queue(oracle):
                    break
                time.sleep(poll)
        finally:
            server.stop(grace=2)
    finally:
        if expire is not None:
            oracle.serving = False


def study_finished(oracle, total: int | None) -> bool:
    """Every trial of the budget ended (completed or failed), none runs, none waits for a
    retry: running the study again has nothing to do."""
    return (total is not None and trials_done(oracle) >= total and not oracle.ongoing_trials
            and not _compat.oracle_retry_queue(oracle))


def check_writable(folder: str, argument: str) -> None:
    """Raise :class:`keras_normreg.saving.DestinationError` (a ValueError naming
    ``argument``) now if ``folder`` cannot be created or written, before any trial runs."""
    where = (f"{argument} in the study file, or --directory" if argument != "output.export_dir"
             else f"{argument} in the study file")
    saving.check_destination(folder, argument=argument, what="the study", where=where)


def _clear_project(project: str) -> None:
    """``--overwrite``: delete everything in the study folder except its lock (held by us)."""
    for name in os.listdir(project):
        if name == launcher.LOCK_FILE:
            continue
        path = os.path.join(project, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def export_best(tuner, spec: Mapping, *, command: str | None = None, out=None) -> dict | None:
    """Evaluate the best trial's model on the test split once and save it with a card.

    The weights are those of the trial's best epoch (by the objective). Returns
    ``{"path", "trial_id", "metrics"}`` or None when there is nothing to export.
    """
    out = out or sys.stdout
    running = sorted(t.trial_id for t in tuner.oracle.ongoing_trials.values())
    if running:
        print(f"trial(s) {', '.join(running)} still running: export skipped (their files are "
              "being written; run the study again once they have ended)", file=out)
        return None
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
    trial_dir = tuner.get_trial_dir(trial.trial_id)
    result_path = os.path.join(trial_dir, RESULT_FILE)
    result = _read_json(result_path) if os.path.isfile(result_path) else {}
    if result and result.get("trial_id") != trial.trial_id:
        print(f"best trial {trial.trial_id}: {result_path} belongs to trial "
              f"{result.get('trial_id')!r}; export skipped", file=out)
        return None
    name = spec["output"]["export_name"]
    tuner.hypermodel.seed_offset = 0
    with warnings.catch_warnings():
        # the checkpoint holds the optimizer state too; only the weights matter here
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model = tuner.load_model(trial)
    # saved with a built (zero) optimizer state, so that loading it matches variable for variable
    model.optimizer.build(model.trainable_variables)
    recipe_path = os.path.join(trial_dir, RECIPE_FILE)
    cfg = (nr_config.load_recipe(recipe_path) if os.path.isfile(recipe_path)
           else tuner.hypermodel.recipe(trial.hyperparameters))
    cfg["name"] = name
    obj = spec["objective"]["name"]
    cfg["description"] = (f"Best trial {trial.trial_id} of study {spec['name']!r} "
                          f"({obj} {trial.score:.4f}). {spec['description']}").strip()
    d = cfg["data"]
    test = saving.evaluation_batches(d["dataset"], d["test_split"], d["batch_size"],
                                     data_dir=d["data_dir"], download=d["download"],
                                     autotune=d["autotune"])
    metrics = saving.evaluate_model(model, test)
    runs = result.get("executions") or [{}]
    strategy = tuner.distribution_strategy or tuner.hypermodel.strategy
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
              worker_id: str | None = None, command: str | None = None, out=None,
              worker_timeout: float | None = None, secret: str | None = None,
              secret_file=None, tls_cert=None, tls_key=None, tls_ca=None,
              insecure: bool = False) -> dict:
    """Run (or resume) a study; see the module docstring.

    The chief and a one-process run hold ``<project>/.study.lock`` while they run
    (:func:`launcher.study_lock`): a second one on the same study gets
    :class:`~keras_normreg._locks.LockError` naming the first. The study folder (and the
    export folder) are checked writable before anything runs. A finished study runs nothing
    again: it says so, rewrites the reports and exports the best trial only if it has not
    been exported yet.

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
        worker_timeout: overrides ``distributed.worker_timeout`` (seconds a worker may stay
            silent before the chief hands its trial to another worker).
        secret, secret_file: the secret every oracle call carries (with ``role``; default:
            ``KERAS_NORMREG_ORACLE_SECRET`` or ``KERAS_NORMREG_ORACLE_SECRET_FILE``; a file
            must be private to its owner). See :func:`launcher.oracle_security`.
        tls_cert, tls_key: the chief's TLS certificate and key (PEM paths); tls_ca: the
            certificate a worker trusts (default ``tls_cert``).
        insecure: let a chief on an address that is not loopback run without a secret
            (refused otherwise, before anything runs).

    Raises:
        launcher.OracleAuthError: (a worker) the chief refused its secret.

    Returns:
        ``{"project_dir", "done", "budget", "role", "reports", "export", "best"}``.
    """
    out = out or sys.stdout
    if isinstance(study, (str, os.PathLike)):
        spec = nr_spec.load_study(study, max_trials=max_trials)
    else:
        spec = nr_spec.with_max_trials(study, max_trials)
    spec = nr_spec.with_worker_timeout(spec, worker_timeout)
    given = {"secret": secret, "secret_file": secret_file, "tls_cert": tls_cert,
             "tls_key": tls_key, "tls_ca": tls_ca, "insecure": insecure or None}
    security = None
    if role is not None:
        launcher.check_distributed_dependencies()
        security = launcher.oracle_security(secret=secret, secret_file=secret_file,
                                            tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
                                            insecure=insecure)
        if role == "chief" and oracle is not None:
            launcher.check_chief(*launcher.parse_address(oracle), security)
    elif any(v is not None for v in given.values()):
        name = next(k for k, v in given.items() if v is not None)
        shown = "<hidden>" if name == "secret" else repr(given[name])
        raise ValueError(f"The oracle's secret and TLS options are for a study spread over "
                         f"processes (--role chief|worker, or --workers). "
                         f"Received: {name}={shown}")
    if role == "worker" and overwrite:
        raise ValueError("A worker never overwrites the study (the chief or the launcher does). "
                         "Received: overwrite=True")
    command = command or f"keras-normreg tune {spec.get('_path', spec['name'])}"
    project = nr_spec.project_dir(spec, directory)
    do_export = spec["output"]["export"] if export is None else export
    if role != "worker":
        check_writable(directory or spec["output"]["directory"],
                       "--directory" if directory else "output.directory")
        if do_export:
            check_writable(spec["output"]["export_dir"], "output.export_dir")
    lock = launcher.study_lock(project) if role != "worker" else contextlib.nullcontext()
    graceful = _exit_on_sigterm() if role != "worker" else contextlib.nullcontext()
    with lock, graceful, launcher.tuner_environment(role, oracle, worker_id):
        if overwrite and os.path.isdir(project):
            _clear_project(project)
        tuner = make_tuner(spec, directory=directory, overwrite=False, out=out,
                           security=security)
        total = _compat.oracle_display(tuner.oracle).total if role != "worker" else None
        finished = False
        if role != "worker":
            done = trials_done(tuner.oracle)
            finished = study_finished(tuner.oracle, total)
            where = (": finished, nothing to run" if finished else
                     f" (resuming {project})" if done else f" -> {project}")
            print(f"study {spec['name']}: {done}/{total} trials done, tuner "
                  f"{spec['tuner']['kind']}, objective {spec['objective']['name']}{where}",
                  file=out, flush=True)
            _write_text(os.path.join(tuner.project_dir, "study.toml"),
                        nr_spec.study_to_toml(spec))
        if not finished:
            with _refused_as(oracle) if role == "worker" else contextlib.nullcontext():
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
        if do_export:
            already = _exported_trial(spec, tuner) if finished else None
            if already is not None:
                print(f"best trial {already}: already exported to "
                      f"{os.path.join(spec['output']['export_dir'], spec['output']['export_name'])}",
                      file=out, flush=True)
            else:
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


def _unauthenticated(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a gRPC call refused as UNAUTHENTICATED."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)) and \
                error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def _refused_as(address: str | None):
    """A worker's calls refused by the chief for the secret end the worker with
    :class:`launcher.OracleAuthError` (one clear line) instead of a gRPC traceback."""
    try:
        yield
    except Exception as e:
        if not _unauthenticated(e):
            raise
        raise launcher.OracleAuthError(
            f"The chief at {address} refused this worker: missing or wrong oracle secret. "
            f"Give the worker the chief's secret ({launcher.SECRET_ENV}, or "
            f"--oracle-secret-file). Received: oracle={address!r}") from e


@contextlib.contextmanager
def _exit_on_sigterm():
    """SIGTERM ends the chief (or a one-process run) as SystemExit(143) would: the server
    stops, the oracle state is saved once more and the study lock is released on the way out
    (the launcher sends SIGTERM to stop a study). Only from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_text(path: str, text: str) -> None:
    _atomic.write_text(path, text)


def _exported_trial(spec: Mapping, tuner) -> str | None:
    """The trial id of the study's export when it is this study's current best trial (the
    card's ``tuning`` block), else None."""
    card_path = os.path.join(spec["output"]["export_dir"], spec["output"]["export_name"],
                             "card.json")
    best = [t for t in tuner.oracle.get_best_trials(1) if t.status == "COMPLETED"]
    if not best or not os.path.isfile(card_path):
        return None
    try:
        tuning = _read_json(card_path).get("tuning") or {}
    except (OSError, ValueError):
        return None
    if tuning.get("study") == spec["name"] and tuning.get("trial_id") == best[0].trial_id and \
            os.path.abspath(tuning.get("study_dir", "")) == os.path.abspath(tuner.project_dir):
        return best[0].trial_id
    return None
