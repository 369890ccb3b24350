"""The study's oracle: keras-tuner's, kept consistent and fault tolerant; a worker's view of it.

* :class:`_StudyOracle` (mixed before each keras-tuner oracle: :class:`RandomStudyOracle`,
  :class:`BayesianStudyOracle`, :class:`GridStudyOracle`, :class:`HyperbandStudyOracle`) saves
  its state atomically and after a trial has left ``ongoing_trials``, so a finished study
  reruns nothing; hands the trial of a worker silent for ``worker_timeout`` seconds back to
  another worker; ignores the late reports (tagged ``trial@worker``) of a worker that lost its
  trial; keeps an idle worker waiting while others still run trials.
* :class:`WorkerOracle` is a worker's proxy of the chief's oracle (keras-tuner's gRPC client)
  whose reports carry the worker's id; :class:`Heartbeat` tells the chief, while a trial
  trains, that the worker is alive.
* :func:`make_oracle` builds the oracle of a study spec; :func:`budget` is the number of trials
  it will run; :func:`study_finished` says whether a study has nothing left to run.
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from collections.abc import Mapping

import keras_tuner as kt
from keras_tuner.engine.trial import Trial as KTTrial

from keras_normreg import _atomic, _compat
from keras_normreg.tuning import launcher
from keras_normreg.tuning import spec as nr_spec
from keras_normreg.tuning.grid import EagerGridOracle
from keras_normreg.tuning.progress import trials_done

__all__ = ["BayesianStudyOracle", "GridStudyOracle", "Heartbeat", "HyperbandStudyOracle",
           "IDLE_WAIT", "RandomStudyOracle", "TAG", "WorkerOracle", "budget", "make_oracle",
           "study_finished"]

# trial.json, build_config.json: written atomically (keras-tuner writes them in place)
_compat.install_atomic_kt_json(lambda path, text: _atomic.write_text(
    path, text, prefix=".kt-", suffix=".tmp", durable=False))

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
      :func:`keras_normreg.tuning.serving.serve_oracle`).
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


class WorkerOracle:
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


class Heartbeat(threading.Thread):
    """A worker's heartbeat while it runs a trial (a daemon thread)."""

    def __init__(self, oracle: WorkerOracle, trial_id, interval: float):
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


def study_finished(oracle, total: int | None) -> bool:
    """Every trial of the budget ended (completed or failed), none runs, none waits for a
    retry: running the study again has nothing to do."""
    return (total is not None and trials_done(oracle) >= total and not oracle.ongoing_trials
            and not _compat.oracle_retry_queue(oracle))

