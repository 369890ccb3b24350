"""The study's keras-tuner tuner: trials as recipes, their records, the chief and the workers.

:func:`make_tuner` builds the tuner of a resolved study spec: :class:`StudyTuner` (random,
bayesian and grid studies) or :class:`HyperbandStudyTuner`, both keras-tuner tuners with
:class:`_StudyMixin` before them. Per execution of a trial, the mixin sets the seed and the
model's name, writes the trial's checkpoint atomically, stops training when the chief has
handed the trial to another worker, and records the trial (``recipe.toml``, ``result.json``
in the trial's folder). On the chief it serves the oracle over gRPC
(:func:`keras_normreg.tuning.serving.serve_oracle`) instead of searching; on a worker it talks
to the chief over :func:`keras_normreg.tuning.serving.oracle_channel` and sends a heartbeat
while a trial trains.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import time
import warnings
from collections.abc import Mapping

import keras
import keras_tuner as kt

from keras_normreg import _atomic, _compat, distribute
from keras_normreg import config as nr_config
from keras_normreg.tuning import launcher
from keras_normreg.tuning import space as nr_space
from keras_normreg.tuning import spec as nr_spec
from keras_normreg.tuning.hypermodel import NormRegHyperModel
from keras_normreg.tuning.oracle import Heartbeat, WorkerOracle, budget, make_oracle
from keras_normreg.tuning.progress import ProgressDisplay, describe, format_duration
from keras_normreg.tuning.serving import oracle_channel, serve_oracle

__all__ = ["HyperbandStudyTuner", "RECIPE_FILE", "RESULT_FILE", "StudyTuner", "make_tuner"]

# keras-tuner's distribution helpers (has_chief_oracle, is_chief_oracle)
kt_dist = _compat.kt_distribute()

#: the files a trial's folder gets beside keras-tuner's: its recipe and its record
RESULT_FILE = "result.json"
RECIPE_FILE = "recipe.toml"


class _StopIfRevoked(keras.callbacks.Callback):
    """Stops training when the chief has handed this worker's trial to another worker."""

    def __init__(self, heartbeat: Heartbeat):
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


@_compat.kt_tuner_hooks
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
        every call, TLS) and tag the reports with this worker's id (:class:`WorkerOracle`)."""
        if kt_dist.has_chief_oracle() and not kt_dist.is_chief_oracle():
            address = (f"{os.environ['KERASTUNER_ORACLE_IP']}:"
                       f"{os.environ['KERASTUNER_ORACLE_PORT']}")
            _compat.set_oracle_client_channel(
                self.oracle, oracle_channel(address, self._oracle_security()))
            self.oracle = WorkerOracle(self.oracle, self.tuner_id)

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
        if isinstance(self.oracle, WorkerOracle):
            timeout = self.study.get("distributed", {}).get(
                "worker_timeout", launcher.DEFAULT_WORKER_TIMEOUT)
            self._heartbeat = Heartbeat(self.oracle, trial.trial_id,
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

    def _study_build_hypermodel(self, hp, build):
        """keras-tuner's model build of a trial (``build(hp)``), without its warning."""
        with warnings.catch_warnings():
            # Hyperband continues from an earlier trial's weights; its optimizer state is unused
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return build(hp)

    def _study_build_and_fit(self, trial, build_and_fit, *args, **kwargs):
        """One execution of ``trial`` (keras-tuner's ``build_and_fit(trial, ...)``): its seed,
        its model's name, an atomic checkpoint, the heartbeat's stop, then its record."""
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
        results = build_and_fit(trial, *args, **kwargs)
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
                  f"{format_duration(seconds)} ({describe(trial.hyperparameters.values)})",
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

