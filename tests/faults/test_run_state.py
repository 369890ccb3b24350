"""Run state under faults: resume keyed by what was run, one run per run directory, exact resume.

The expensive cases run REAL processes killed with REAL signals (marked slow); the cheap ones
(a changed recipe refused with a clear message, --fresh, an unwritable destination, a held
lock, the start epoch of the data streams) run in-process in the fast suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_normreg import config, runstate, saving, train
from keras_normreg._locks import LockError

ROOT = Path(__file__).resolve().parents[2]


def raw_recipe(tmp_path, **sections) -> dict:
    """A tiny digits recipe: a few seconds for 4 epochs on CPU (dropout on: its seed state
    must be resumed too)."""
    tmp_path = Path(tmp_path)
    raw = {
        "name": "t_state",
        "model": {"arch": "cnn_digits", "norm": "batch", "dropout": 0.2,
                  "overrides": {"widths": [4, 8]}},
        "data": {"dataset": "digits", "batch_size": 64, "data_dir": str(tmp_path / "tfds")},
        "optimizer": {"name": "sgdw", "learning_rate": 0.05, "weight_decay": 1e-4},
        "schedule": {"kind": "cosine"},
        "train": {"epochs": 4, "verbose": 0, "seed": 3, "output_dir": str(tmp_path / "saved")},
    }
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return raw


def recipe(tmp_path, **sections) -> dict:
    return config.resolve(raw_recipe(tmp_path, **sections))


class _Kill(keras.callbacks.Callback):
    """Stands in for a crash in-process: raises after `at` epochs (after the state was
    written, since it comes after train's own callbacks)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.at:
            raise KeyboardInterrupt("killed")


class _Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.begun = []

    def on_epoch_begin(self, epoch, logs=None):
        self.begun.append(epoch)


def _state(run_dir) -> dict:
    return json.loads((Path(run_dir) / runstate.STATE_FILE).read_text())


# -- fingerprint -------------------------------------------------------------------------------
def test_fingerprint_is_sha256_of_the_canonical_recipe_without_ignored_keys(tmp_path):
    cfg = recipe(tmp_path)
    # independent reference: drop the documented keys by hand, add the backend, hash
    ref = json.loads(json.dumps(cfg))
    del ref["name"], ref["description"]
    del ref["train"]["verbose"], ref["train"]["output_dir"]
    del ref["data"]["download"], ref["data"]["data_dir"], ref["data"]["autotune"]
    # a key added later, unset: left out, as it was before it existed
    assert ref["model"]["classifier_activation"] is None
    del ref["model"]["classifier_activation"]
    ref["backend"] = keras.backend.backend()
    text = json.dumps(ref, sort_keys=True, separators=(",", ":"))
    assert runstate.fingerprint(cfg) == hashlib.sha256(text.encode()).hexdigest()
    # keys that cannot change the weights leave it alone ...
    same = recipe(tmp_path / "elsewhere", name="other", description="words",
                  train={"verbose": 2}, data={"download": True, "autotune": True})
    assert runstate.fingerprint(same) == runstate.fingerprint(cfg)
    # ... every other key changes it
    for change in ({"optimizer": {"learning_rate": 0.01}}, {"model": {"norm": "none"}},
                   {"train": {"seed": 4}}, {"train": {"epochs": 5}},
                   {"data": {"batch_size": 32}}, {"schedule": {"kind": "constant"}},
                   {"model": {"classifier_activation": "softmax"}}):
        assert runstate.fingerprint(recipe(tmp_path, **change)) != runstate.fingerprint(cfg)


def test_differences_name_the_keys():
    old = {"optimizer": {"learning_rate": 0.1, "name": "sgdw"}, "model": {"norm": "batch"}}
    new = {"optimizer": {"learning_rate": 0.01, "name": "sgdw"}, "model": {"norm": "none"},
           "extra": 1}
    assert runstate.differences(old, new) == [
        ("extra", "<unset>", 1), ("model.norm", "batch", "none"),
        ("optimizer.learning_rate", 0.1, 0.01)]
    assert runstate.differences(old, old) == []


# -- the API: resume modes and errors ----------------------------------------------------------
def test_resume_argument_is_validated(tmp_path):
    with pytest.raises(ValueError, match=r"Argument `resume` must be one of \['auto', 'resume', "
                                         r"'fresh'\]. Received: resume='maybe'"):
        train.train(recipe(tmp_path), run_dir=str(tmp_path / "run"), resume="maybe")
    with pytest.raises(ValueError, match="Received: resume='yes'"):
        runstate.open_state(str(tmp_path / "run"), recipe(tmp_path), "yes")


def test_changed_recipe_is_refused_then_fresh_starts_over(tmp_path, capsys):
    """(b) and (c): a killed run rerun with another learning rate or another norm is refused
    with one line naming the keys (no Keras traceback), the state stays; resume="fresh"
    discards it and the card says the new learning rate."""
    run_dir = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train.train(recipe(tmp_path), run_dir=run_dir, callbacks=[_Kill(2)])
    assert _state(run_dir)["epochs_done"] == 2

    with pytest.raises(train.RunStateError) as info:
        train.train(recipe(tmp_path, optimizer={"learning_rate": 0.01}), run_dir=run_dir)
    msg = str(info.value)
    assert "\n" not in msg
    assert "optimizer.learning_rate 0.05 -> 0.01" in msg
    assert "epoch 2 of 4" in msg and "original recipe" in msg and "--fresh" in msg
    assert isinstance(info.value, ValueError)

    with pytest.raises(train.RunStateError, match=r"model.norm 'batch' -> 'none'.*--fresh"):
        train.train(recipe(tmp_path, model={"norm": "none"}), run_dir=run_dir)
    with pytest.raises(train.RunStateError, match="optimizer.learning_rate"):
        train.train(recipe(tmp_path, optimizer={"learning_rate": 0.01}), run_dir=run_dir,
                    resume="resume")
    assert _state(run_dir)["epochs_done"] == 2  # refusals leave the state alone
    assert not (tmp_path / "saved" / "t_state" / "card.json").exists()

    epochs = _Epochs()
    cfg = recipe(tmp_path, optimizer={"learning_rate": 0.01}, train={"verbose": 2})
    capsys.readouterr()
    result = train.train(cfg, run_dir=run_dir, resume="fresh", callbacks=[epochs])
    out = capsys.readouterr().out
    assert f"discarded the run state in {run_dir} (epoch 2 of 4)" in out
    assert epochs.begun == [0, 1, 2, 3]
    card = json.loads((Path(result.path) / "card.json").read_text())
    assert card["recipe"]["optimizer"]["learning_rate"] == 0.01
    assert card["resumed_at_epoch"] == [] and len(card["history"]["loss"]) == 4
    assert not (Path(run_dir) / runstate.STATE_FILE).exists()


def test_resume_requires_a_state(tmp_path):
    with pytest.raises(train.RunStateError, match=r"no run state to resume in .*"
                                                  r"Received: resume='resume'"):
        train.train(recipe(tmp_path), run_dir=str(tmp_path / "run"), resume="resume")


@pytest.mark.parametrize("leftover, words", [
    ("legacy", "BackupAndRestore backup left by an older version"),
    ("format", "run state of another format"),
    ("damaged", "unreadable state.json"),
])
def test_unusable_states_are_refused_and_fresh_discards_them(tmp_path, leftover, words):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if leftover == "legacy":  # what Keras' BackupAndRestore left in the older code
        (run_dir / "backup").mkdir()
        (run_dir / "backup" / "training_metadata.json").write_text('{"epoch": 1}')
    elif leftover == "format":
        (run_dir / "state.json").write_text('{"format": 0}')
    else:
        (run_dir / "state.json").write_text('{"format": 1, "epo')
    cfg = recipe(tmp_path, train={"epochs": 1})
    with pytest.raises(train.RunStateError, match=f"{words}.*--fresh"):
        train.train(cfg, run_dir=str(run_dir), save=False)
    result = train.train(cfg, run_dir=str(run_dir), save=False, resume="fresh")
    assert result.resumed_at_epoch == [] and len(result.history["loss"]) == 1
    assert sorted(p.name for p in run_dir.iterdir()) == ["logs"]


def test_unwritable_destination_fails_before_the_first_epoch(tmp_path):
    """(e) As root a chmod does not stop writes: a folder under a regular FILE cannot be
    created by anyone."""
    (tmp_path / "afile").write_text("x")
    epochs = _Epochs()
    cfg = recipe(tmp_path, train={"output_dir": str(tmp_path / "afile" / "x")})
    start = time.perf_counter()
    with pytest.raises(saving.DestinationError, match="Cannot write the saved entry"):
        train.train(cfg, run_dir=str(tmp_path / "run"), callbacks=[epochs])
    assert epochs.begun == []
    assert time.perf_counter() - start < 5
    assert not (tmp_path / "run").exists()


_HOLDER = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("locks", sys.argv[1])
    locks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(locks)
    with locks.FileLock(sys.argv[2], sys.argv[3]):
        print("HELD", flush=True)
        sys.stdin.readline()
""")


def _hold_in_another_process(path, purpose):
    """A process (stdlib only, no TensorFlow: it starts in a blink) holding the lock until its
    stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(ROOT / "keras_normreg" /
                                                                "_locks.py"), str(path), purpose],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "HELD"
    return proc


def test_entry_in_use_is_refused_at_start(tmp_path):
    """A second training into the same saved entry (from another run directory) is refused
    before the first epoch, naming the holder; so is a second run of the same run directory."""
    cfg = recipe(tmp_path)
    entry = Path(cfg["train"]["output_dir"]) / cfg["name"]
    epochs = _Epochs()
    holder = _hold_in_another_process(entry / ".entry.lock", f"saved entry {entry}")
    try:
        with pytest.raises(LockError, match=rf"saved entry .* is in use by pid {holder.pid}"):
            train.train(cfg, run_dir=str(tmp_path / "other_run"), callbacks=[epochs])
    finally:
        holder.communicate("")
    assert epochs.begun == []
    run_dir = tmp_path / "run"
    holder = _hold_in_another_process(run_dir / ".run.lock", f"training run {run_dir}")
    try:
        with pytest.raises(LockError, match=rf"training run .* is in use by pid {holder.pid}"):
            train.train(cfg, run_dir=str(run_dir), save=False, callbacks=[epochs])
    finally:
        holder.communicate("")
    assert epochs.begun == []


def test_failed_save_keeps_the_state_and_a_rerun_only_saves(tmp_path, monkeypatch, capsys):
    run_dir = str(tmp_path / "run")
    cfg = recipe(tmp_path, train={"epochs": 2})

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train, "save_entry", broken)
    with pytest.raises(train.EntrySaveError, match=rf"OSError.*No space left.*The trained state "
                                                   rf"is kept in {run_dir}: rerunning the same "
                                                   rf"command") as info:
        train.train(cfg, run_dir=run_dir)
    assert isinstance(info.value, saving.DestinationError)
    state = _state(run_dir)
    assert state["epochs_done"] == 2 and state["training_seconds"] > 0
    monkeypatch.undo()
    epochs = _Epochs()
    capsys.readouterr()
    # train.verbose is not part of the fingerprint: the state still matches
    result = train.train(recipe(tmp_path, train={"epochs": 2, "verbose": 2}), run_dir=run_dir,
                         callbacks=[epochs])
    assert f"resuming t_state from epoch 2 of 2 ({run_dir})" in capsys.readouterr().out
    assert epochs.begun == []  # nothing trained again
    card = json.loads((Path(result.path) / "card.json").read_text())
    assert card["history"] == state["history"]
    assert card["training_seconds"] == round(state["training_seconds"], 2)
    assert card["resumed_at_epoch"] == [2]
    assert not (Path(run_dir) / runstate.STATE_FILE).exists()


def test_diverged_run_discards_its_state(tmp_path):
    run_dir = tmp_path / "run"
    cfg = recipe(tmp_path, model={"norm": "none", "dropout": 0.0},
                 optimizer={"learning_rate": 1e30}, train={"epochs": 3})
    with pytest.raises(train.NaNLossError, match="was discarded: a diverged run is not worth "
                                                 "resuming"):
        train.train(cfg, run_dir=str(run_dir), save=False)
    assert not (run_dir / runstate.STATE_FILE).exists()
    assert not list(run_dir.glob("*.weights.h5"))


def test_in_process_resume_is_bit_identical(tmp_path):
    cfg = recipe(tmp_path)
    whole = train.train(cfg, run_dir=str(tmp_path / "a"), save=False)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, run_dir=str(tmp_path / "b"), save=False, callbacks=[_Kill(3)])
    state = _state(tmp_path / "b")
    assert state["weights_file"] == "state-epoch0003.weights.h5"
    assert [f.name for f in (tmp_path / "b").glob("*.weights.h5")] == [state["weights_file"]]
    assert len(state["seed_states"]) == 1  # the dropout layer's SeedGenerator
    resumed = train.train(cfg, run_dir=str(tmp_path / "b"), save=False)
    for a, b in zip(whole.model.variables, resumed.model.variables, strict=True):
        assert np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    assert resumed.history == whole.history
    assert resumed.test_loss == whole.test_loss and resumed.resumed_at_epoch == [3]


# -- the data streams start at the resumed epoch -----------------------------------------------
def test_load_epochs_start_epoch(tmp_path):
    from keras_normreg import data

    stream, n = data.load_epochs("digits", "train", 500, data_dir=str(tmp_path), seed=5)
    steps = -(-n // 500)
    whole = [y.numpy().tolist() for _, y in stream.take(3 * steps)]
    later, _ = data.load_epochs("digits", "train", 500, data_dir=str(tmp_path), seed=5,
                                start_epoch=2)
    assert [y.numpy().tolist() for _, y in later.take(steps)] == whole[2 * steps:]
    assert whole[:steps] != whole[2 * steps:]
    with pytest.raises(ValueError, match=r"`start_epoch` must be an integer. "
                                         r"Received: start_epoch=1.5"):
        data.load_epochs("digits", "train", 500, data_dir=str(tmp_path), start_epoch=1.5)


# -- real processes, real signals ------------------------------------------------------------
_CHILD = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    import keras
    from keras_normreg import config, train

    args = json.loads(sys.argv[1])

    class Pause(keras.callbacks.Callback):
        # after train's own callbacks: the state of this epoch is on disk when it sleeps
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == args.get("pause_after"):
                open(args["paused"], "w").close()
                deadline = time.time() + 300
                while not os.path.exists(args["go"]) and time.time() < deadline:
                    time.sleep(0.05)

    cfg = config.resolve(args["recipe"])
    try:
        result = train.train(cfg, run_dir=args["run_dir"], callbacks=[Pause()],
                             resume=args.get("resume", "auto"))
    except Exception as e:
        print("ERROR", type(e).__name__, e)
        sys.exit(2)
    np.savez(args["weights"], *[keras.ops.convert_to_numpy(v) for v in result.model.variables])
    print("DONE", result.path)
""")


def _env(backend):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND=backend)
    return env


def _child(backend, tmp_path, tag, raw, run_dir, **extra):
    args = {"recipe": raw, "run_dir": str(run_dir), "weights": str(tmp_path / f"{tag}.npz"),
            "paused": str(tmp_path / f"{tag}.paused"), "go": str(tmp_path / f"{tag}.go"),
            **extra}
    return subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(args)], cwd=tmp_path,
                            env=_env(backend), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    return out


def _wait_for(path, proc, timeout=300):
    deadline = time.time() + timeout
    while not Path(path).exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child ended early ({proc.returncode}): {out[-2000:]} {err[-3000:]}")
        assert time.time() < deadline, f"timed out waiting for {path}"
        time.sleep(0.05)


def _kill_and_resume(backend, tmp_path):
    """(a) SIGKILL after epoch 2, rerun to completion: bit-identical to an uninterrupted run."""
    # data_dir is not part of the fingerprint: two folders, so the concurrent children never
    # prepare the embedded set in the same place
    whole_raw = raw_recipe(tmp_path, train={"output_dir": str(tmp_path / "whole")},
                           data={"data_dir": str(tmp_path / "tfds_whole")})
    resumed_raw = raw_recipe(tmp_path, train={"output_dir": str(tmp_path / "resumed")})
    whole = _child(backend, tmp_path, "whole", whole_raw, tmp_path / "run_whole")
    victim = _child(backend, tmp_path, "victim", resumed_raw, tmp_path / "run", pause_after=2)
    _finish(whole)
    _wait_for(tmp_path / "victim.paused", victim)
    assert _state(tmp_path / "run")["epochs_done"] == 2
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert _state(tmp_path / "run")["epochs_done"] == 2  # the kill left the epoch-2 state

    _finish(_child(backend, tmp_path, "rerun", resumed_raw, tmp_path / "run"))
    a, b = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "rerun.npz")
    assert len(a.files) == len(b.files)
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key
    card_a = json.loads((tmp_path / "whole" / "t_state" / "card.json").read_text())
    card_b = json.loads((tmp_path / "resumed" / "t_state" / "card.json").read_text())
    assert card_b["metrics"] == card_a["metrics"]
    assert card_b["history"] == card_a["history"] and len(card_b["history"]["loss"]) == 4
    assert card_b["resumed_at_epoch"] == [2] and card_a["resumed_at_epoch"] == []
    assert card_b["training_seconds"] > 0
    assert not (tmp_path / "run" / runstate.STATE_FILE).exists()


@pytest.mark.slow
def test_sigkilled_run_resumes_bit_identical_tensorflow(tmp_path):
    _kill_and_resume("tensorflow", tmp_path)


@pytest.mark.slow
def test_sigkilled_run_resumes_bit_identical_jax(tmp_path):
    """The same on JAX (ArrayEpochs started at the resumed epoch). Not cheap: 2 to 3.5 min on a
    shared 2-core CPU machine (JAX compiles the steps anew in each of the 3 children)."""
    pytest.importorskip("jax")
    _kill_and_resume("jax", tmp_path)


@pytest.mark.slow
def test_second_run_of_the_run_directory_is_refused_and_the_first_finishes(tmp_path):
    """(d) Two runs of the same recipe (different seeds) at once: the second gets LockError
    naming the first's pid; the first finishes intact."""
    raw = raw_recipe(tmp_path, train={"epochs": 2})
    run_dir = Path("runs") / "t_state"  # the default run directory, relative to the cwd
    first = _child("tensorflow", tmp_path, "first", raw, run_dir, pause_after=1)
    _wait_for(tmp_path / "first.paused", first)
    second_raw = raw_recipe(tmp_path, train={"epochs": 2, "seed": 9})
    second = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(
            {"recipe": second_raw, "run_dir": str(run_dir), "weights": str(tmp_path / "s.npz"),
             "paused": str(tmp_path / "s.paused"), "go": str(tmp_path / "s.go")})],
        cwd=tmp_path, env=_env("tensorflow"), capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    assert f"ERROR LockError training run runs/t_state is in use by pid {first.pid}" in \
        second.stdout
    (tmp_path / "first.go").touch()
    _finish(first)
    entry = tmp_path / "saved" / "t_state"
    card = json.loads((entry / "card.json").read_text())
    assert card["recipe"]["train"]["seed"] == 3 and len(card["history"]["loss"]) == 2
    assert card["sha256"] == saving.file_sha256(entry / "model.keras")
    assert not (tmp_path / "runs" / "t_state" / runstate.STATE_FILE).exists()
