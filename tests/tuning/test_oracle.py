"""The study oracle in one process (no gRPC): consistent state, worker timeout, stale reports."""

import io
import json
import os

import keras_tuner as kt
import pytest

from keras_normreg.tuning import launcher, study
from keras_normreg.tuning import oracle as nr_oracle
from keras_normreg.tuning import spec as nr_spec
from keras_normreg.tuning import tuner as nr_tuner

from .conftest import write_tiny_spec


def _oracle(tmp_path, max_trials=3, worker_timeout=5.0, serving=True):
    out = io.StringIO()
    oracle = study.RandomStudyOracle(objective=kt.Objective("val_accuracy", "max"),
                                     max_trials=max_trials, seed=1,
                                     worker_timeout=worker_timeout, out=out)
    oracle._set_project_dir(str(tmp_path), "p")
    oracle.hyperparameters.Float("x", 0.0, 1.0)
    oracle.serving = serving
    return oracle, out


def _finish(oracle, trial, score, tag=None):
    """What a worker does at the end of a trial (optionally tagged with its id)."""
    tid = trial.trial_id if tag is None else f"{trial.trial_id}@{tag}"
    oracle.update_trial(tid, {"val_accuracy": score})
    ended = kt.engine.trial.Trial(oracle.get_space(), trial_id=tid, status="COMPLETED")
    ended.hyperparameters = trial.hyperparameters
    oracle.end_trial(ended)


def _state(tmp_path):
    with open(tmp_path / "p" / "oracle.json") as f:
        return json.load(f)


def test_split_tag():
    assert nr_oracle._split_tag("03@tuner1") == ("03", "tuner1")
    assert nr_oracle._split_tag("03") == ("03", None)
    assert nr_oracle._split_tag("03@") == ("03", None)


def test_state_on_disk_has_no_ongoing_trial_after_the_last_end(tmp_path):
    """keras-tuner saves oracle.json before it drops the trial from ongoing_trials: the study
    oracle saves again after, so a finished study reloads with nothing to re-run."""
    oracle, _ = _oracle(tmp_path, max_trials=2, serving=False)
    for score in (0.5, 0.7):
        _finish(oracle, oracle.create_trial("tuner0"), score)
    state = _state(tmp_path)
    assert state["ongoing_trials"] == {}
    assert state["end_order"] == ["0", "1"]
    again, _ = _oracle(tmp_path, max_trials=2, serving=False)
    again.reload()
    assert again.ongoing_trials == {} and again._retry_queue == []
    assert study.study_finished(again, 2)
    assert again.create_trial("tuner0").status == "STOPPED"


def test_reload_drops_ended_trials_left_ongoing_by_an_older_save(tmp_path):
    """A state file written by keras-tuner's own order (the last trial ended but still listed
    as ongoing) no longer re-runs that trial."""
    oracle, _ = _oracle(tmp_path, max_trials=2, serving=False)
    for score in (0.5, 0.7):
        _finish(oracle, oracle.create_trial("tuner0"), score)
    state = _state(tmp_path)
    state["ongoing_trials"] = {"chief": "1"}  # what keras-tuner 1.4.8 leaves on disk
    (tmp_path / "p" / "oracle.json").write_text(json.dumps(state))
    again, _ = _oracle(tmp_path, max_trials=2, serving=False)
    again.reload()
    assert again._retry_queue == []
    assert again.create_trial("tuner0").status == "STOPPED"


def test_reload_keeps_an_interrupted_trial_for_retry(tmp_path):
    oracle, _ = _oracle(tmp_path, max_trials=2, serving=False)
    _finish(oracle, oracle.create_trial("tuner0"), 0.5)
    running = oracle.create_trial("tuner0")
    again, _ = _oracle(tmp_path, max_trials=2, serving=False)
    again.reload()
    assert again._retry_queue == [running.trial_id]
    assert not study.study_finished(again, 2)
    assert again.create_trial("tuner0").trial_id == running.trial_id


class HalfWritten:
    """``open`` for _atomic's writes: the disk fills up half-way through the temporary file."""

    def __init__(self, path, *args, **kwargs):
        self.f = open(path, *args, **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, text):
        self.f.write(text[: len(text) // 2])
        raise OSError("disk full")


def test_oracle_state_is_written_atomically(tmp_path, monkeypatch):
    """A save that fails half-way leaves the previous oracle.json intact and no temp file."""
    oracle, _ = _oracle(tmp_path, serving=False)
    _finish(oracle, oracle.create_trial("tuner0"), 0.5)
    before = (tmp_path / "p" / "oracle.json").read_text()

    monkeypatch.setattr(study._atomic, "open", HalfWritten, raising=False)
    with pytest.raises(OSError, match="disk full"):
        oracle.save()
    assert (tmp_path / "p" / "oracle.json").read_text() == before
    assert not [n for n in os.listdir(tmp_path / "p") if n.startswith(".oracle-")]


def test_trial_json_is_written_atomically_and_the_study_resumes(tmp_path, monkeypatch):
    """keras-tuner writes trial.json in place (a crash mid-write left a truncated file that
    stopped the study from reloading); here a write that fails half-way (the disk fills up)
    leaves the previous trial.json whole, no temporary file, and a new oracle reloads the
    project with the trial back for retry."""
    oracle, _ = _oracle(tmp_path, serving=False)
    trial = oracle.create_trial("tuner0")
    trial_dir = tmp_path / "p" / f"trial_{trial.trial_id}"
    before = (trial_dir / "trial.json").read_text()
    assert json.loads(before)["status"] == "RUNNING"

    monkeypatch.setattr(study._atomic, "open", HalfWritten, raising=False)
    with pytest.raises(OSError, match="disk full"):
        _finish(oracle, trial, 0.5)
    monkeypatch.undo()
    assert (trial_dir / "trial.json").read_text() == before
    assert not [n for n in os.listdir(trial_dir) if n.startswith(".kt-")]
    again, _ = _oracle(tmp_path, serving=False)
    again.reload()
    assert trial.trial_id in again.trials
    assert again.create_trial("tuner0").trial_id == trial.trial_id  # retried first


def test_silent_worker_trial_is_handed_to_another_and_its_late_reports_ignored(tmp_path):
    oracle, out = _oracle(tmp_path, max_trials=3, worker_timeout=5.0)
    a = oracle.create_trial("a")
    b = oracle.create_trial("b")
    now = oracle._last_seen["a"]
    assert oracle.expire_silent_workers(now + 4.0) == []  # within the timeout
    oracle._last_seen["b"] = now + 6.0  # b keeps talking (a heartbeat)
    assert oracle.expire_silent_workers(now + 6.0) == [("a", a.trial_id)]
    assert "a" not in oracle.ongoing_trials and "a" not in oracle.tuner_ids
    assert oracle._retry_queue == [a.trial_id]
    assert f"trial {a.trial_id} handed back" in out.getvalue()
    # b finishes its own trial, then gets a's (a retry: same id, not a new trial)
    _finish(oracle, b, 0.6, tag="b")
    again = oracle.create_trial("b")
    assert again.trial_id == a.trial_id and again.status == "RUNNING"
    # a comes back: its heartbeat says the trial is no longer its own, its reports are ignored
    assert oracle.get_trial(f"{a.trial_id}@a").status == "STOPPED"
    assert oracle.get_trial(f"{a.trial_id}@b").status == "RUNNING"
    _finish(oracle, a, 0.99, tag="a")
    assert f"ignored the end of trial {a.trial_id} from a: it was handed to b" in out.getvalue()
    assert oracle.trials[a.trial_id].status == "RUNNING"
    assert not oracle.trials[a.trial_id].metrics.exists("val_accuracy")
    _finish(oracle, again, 0.7, tag="b")
    assert oracle.trials[a.trial_id].score == pytest.approx(0.7)
    # a duplicate (untagged) end of an ended trial counts nothing
    _finish(oracle, a, 0.99)
    assert oracle.end_order == [b.trial_id, a.trial_id]
    assert oracle.trials[a.trial_id].score == pytest.approx(0.7)


def test_idle_worker_waits_while_others_run_and_stops_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(nr_oracle, "IDLE_WAIT", 0.0)
    oracle, _ = _oracle(tmp_path, max_trials=2)
    a = oracle.create_trial("a")
    b = oracle.create_trial("b")
    _finish(oracle, b, 0.5, tag="b")
    # the budget is spent, but a's trial may come back: b waits instead of exiting
    assert oracle.create_trial("b").status == "IDLE"
    assert "b" in oracle.tuner_ids
    _finish(oracle, a, 0.6, tag="a")
    assert oracle.create_trial("b").status == "STOPPED"
    assert oracle.create_trial("a").status == "STOPPED"
    assert oracle.tuner_ids == set() and oracle.ongoing_trials == {}


def test_a_registered_worker_that_vanishes_does_not_hold_up_the_end(tmp_path):
    oracle, out = _oracle(tmp_path, max_trials=1)
    _finish(oracle, oracle.create_trial("a"), 0.5)
    oracle.tuner_ids.add("ghost")  # e.g. a client that registered and went away
    oracle._last_seen["ghost"] = oracle._last_seen["a"] - 10
    assert oracle.expire_silent_workers() == [("ghost", None)]
    assert "ghost" not in oracle.tuner_ids
    assert "worker ghost silent" in out.getvalue()


def test_worker_timeout_validation(tmp_path):
    with pytest.raises(ValueError, match=r"`worker_timeout` must be a positive number of "
                                         r"seconds. Received: worker_timeout=0"):
        _oracle(tmp_path, worker_timeout=0)
    with pytest.raises(ValueError, match="Received: worker_timeout=nan"):
        launcher.check_worker_timeout(float("nan"))
    with pytest.raises(ValueError, match="Received: worker_timeout=True"):
        launcher.check_worker_timeout(True)
    with pytest.raises(ValueError, match="Received: worker_timeout=-1"):
        launcher.run_local("study.toml", 1, project_dir=str(tmp_path / "p"), worker_timeout=-1)
    path = write_tiny_spec(tmp_path, distributed={"worker_timeout": -5})
    with pytest.raises(ValueError, match=r"distributed.worker_timeout.*Received: "
                                         r"distributed.worker_timeout=-5"):
        nr_spec.load_study(path)
    path = write_tiny_spec(tmp_path, distributed={"worker_timeout": "soon"})
    with pytest.raises(ValueError, match="distributed.worker_timeout"):
        nr_spec.load_study(path)
    spec = nr_spec.load_study(write_tiny_spec(tmp_path))
    with pytest.raises(ValueError, match="Received: worker_timeout=inf"):
        nr_spec.with_worker_timeout(spec, float("inf"))


def test_worker_timeout_default_and_override(tmp_path):
    spec = nr_spec.load_study(write_tiny_spec(tmp_path))
    assert spec["distributed"]["worker_timeout"] == launcher.DEFAULT_WORKER_TIMEOUT == 600
    assert study.make_oracle(spec).worker_timeout == 600
    spec = nr_spec.with_worker_timeout(spec, 5)
    assert study.make_oracle(spec).worker_timeout == 5.0
    spec = nr_spec.load_study(write_tiny_spec(tmp_path, distributed={"worker_timeout": 30}))
    assert spec["distributed"]["worker_timeout"] == 30.0
    assert "worker_timeout = 30.0" in nr_spec.study_to_toml(spec)


@pytest.mark.parametrize("timeout,expected", [(600, 60.0), (5, 1.25), (0.1, 0.2)])
def test_heartbeat_interval(timeout, expected):
    assert launcher.heartbeat_interval(timeout) == expected


def test_export_waits_until_no_trial_runs(tmp_path):
    """The chief does not export while a trial is still being written."""

    class Oracle:
        ongoing_trials = {"tuner1": kt.engine.trial.Trial(kt.HyperParameters(), trial_id="2")}

        def get_best_trials(self, n):  # pragma: no cover - must not be reached
            raise AssertionError("looked for the best trial while one runs")

    class Tuner:
        oracle = Oracle()

    out = io.StringIO()
    assert study.export_best(Tuner(), {}, out=out) is None
    assert "trial(s) 2 still running: export skipped" in out.getvalue()


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = str(tmp_path / "checkpoint.weights.h5")
    nr_tuner._atomic_save_weights(model, path)
    assert os.listdir(tmp_path) == ["checkpoint.weights.h5"]
    before = open(path, "rb").read()
    model.layers[0].kernel.assign(np.ones((3, 2), "float32"))

    def broken(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save_weights", broken)
    with pytest.raises(OSError, match="disk full"):
        nr_tuner._atomic_save_weights(model, path)
    assert open(path, "rb").read() == before  # the previous checkpoint is intact
    assert os.listdir(tmp_path) == ["checkpoint.weights.h5"]


def test_checkpoint_callback_gets_the_atomic_writer():
    cb = study._compat.kt_save_best_epoch_class()(kt.Objective("val_accuracy", "max"),
                                                  filepath="x.weights.h5")
    calls = []
    study._compat.set_checkpoint_writer(cb, lambda model, path: calls.append(path))
    cb.on_epoch_end(0, {"val_accuracy": 0.5})
    assert calls == ["x.weights.h5"]
