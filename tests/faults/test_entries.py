"""Saved entries under faults: two writers at once, a writer SIGKILLed or SIGTERMed
mid-write, an unwritable or full destination, a damaged model file and one that safe_mode
refuses.

Real processes and real signals. The writer processes run this file as a script
(``python tests/faults/test_entries.py <mode> ...``), so the model, recipe and metrics helpers
below are shared by the writers and by the checks.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_normreg import config, saving

ROOT = Path(__file__).resolve().parents[2]
BATCH = 32


# -- shared by the writer processes and the checks ----------------------------------------------
def recipe(out_dir, tfds_dir, writer, round_=0):
    return config.resolve({
        "name": "race",
        "description": f"writer {writer} round {round_}",
        "model": {"arch": "mlp"},
        "data": {"dataset": "digits", "batch_size": BATCH, "data_dir": str(tfds_dir)},
        "train": {"epochs": 1, "output_dir": str(Path(out_dir).parent)},
    })


def kernel(writer, round_=0):
    """The recognisable weights of a writer's model in a round."""
    return np.random.default_rng(1000 * writer + round_).normal(size=(64, 10)).astype("float32")


def model_of(writer, round_=0):
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    model.layers[-1].set_weights([kernel(writer, round_), np.zeros(10, "float32")])
    return model


def write_entry(out_dir, tfds_dir, writer, round_=0):
    """Everything a training's save does: the exact metrics, then save_entry."""
    model = model_of(writer, round_)
    metrics = saving.evaluate_model(
        model, saving.evaluation_batches("digits", "test", BATCH, data_dir=str(tfds_dir)))
    return saving.save_entry(model, recipe(out_dir, tfds_dir, writer, round_), metrics, 1.0,
                             None, out_dir, command=f"writer {writer} round {round_}")


def _wait_for(path, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.001)


def _stall(ready):
    """Tell the parent we are at the fault point, then wait to be killed."""
    Path(ready).write_text(str(os.getpid()))
    time.sleep(600)


def _child_race(out_dir, tfds_dir, writer, rounds, sync):
    writer, rounds = int(writer), int(rounds)
    for r in range(rounds):
        model = model_of(writer, r)
        cfg = recipe(out_dir, tfds_dir, writer, r)
        metrics = saving.evaluate_model(
            model, saving.evaluation_batches("digits", "test", BATCH, data_dir=tfds_dir))
        _wait_for(os.path.join(sync, f"go-{r}"))
        start = time.time()
        saving.save_entry(model, cfg, metrics, 1.0, None, out_dir,
                          command=f"writer {writer} round {r}")
        Path(sync, f"done-{writer}-{r}").write_text(json.dumps([start, time.time()]))


def _stall_half_way_through_model_save(ready):
    """Make ``keras.Model.save`` write half of its file, then stall (the moment to kill)."""
    real_save = keras.Model.save

    def half_save(self, filepath, *args, **kwargs):
        real_save(self, filepath, *args, **kwargs)
        with open(filepath, "r+b") as f:
            f.truncate(os.path.getsize(filepath) // 2)
        _stall(ready)

    keras.Model.save = half_save


def _child_kill(out_dir, tfds_dir, point, ready):
    if point == "model.save":  # half of the temporary model written
        _stall_half_way_through_model_save(ready)
    else:  # all temporaries written: stall before the first rename, or before the card's
        real_replace = os.replace

        def stalling_replace(src, dst):
            if point == "before renames" or str(dst).endswith(saving.CARD_FILE):
                _stall(ready)
            return real_replace(src, dst)

        os.replace = stalling_replace
    write_entry(out_dir, tfds_dir, writer=2)


def _child_term(out_dir, tfds_dir, point, ready, sent):
    """SIGTERMed by the parent while writing: in ``model.save`` (half the temporary model
    written), or at the first rename (it waits there until the parent has sent the signal)."""
    if point == "model.save":
        _stall_half_way_through_model_save(ready)
    else:  # "renames"
        real_replace = os.replace

        def waiting_replace(src, dst):
            if str(dst).endswith(saving.MODEL_FILE):
                Path(ready).write_text(str(os.getpid()))
                _wait_for(sent)  # the signal is pending here: it must wait for the renames
            return real_replace(src, dst)

        os.replace = waiting_replace
    write_entry(out_dir, tfds_dir, writer=2)
    print("the writer returned")  # never: the signal ends the process


def _child_file_size_limit(out_dir, tfds_dir, limit):
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big write fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    try:
        write_entry(out_dir, tfds_dir, writer=3)
    except saving.DestinationError as e:
        print(f"DestinationError: {e}")


# -- the checks -----------------------------------------------------------------------------------
def _env():
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return env


def _spawn(*args, cwd=None):
    return subprocess.Popen([sys.executable, __file__, *map(str, args)], env=_env(), cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_ready(child, ready, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(ready):
        if child.poll() is not None:
            raise AssertionError(f"the writer exited {child.returncode} before the fault point:"
                                 f"\n{child.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError("the writer did not reach the fault point")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """digits prepared once, before any writer reads it."""
    path = tmp_path_factory.mktemp("tfds")
    next(iter(saving.evaluation_batches("digits", "test", BATCH, data_dir=str(path))))
    return path


def _files(entry):
    return {p.name: p.read_bytes() for p in Path(entry).iterdir()}


def assert_consistent(entry, writer=None, round_=None):
    """card sha256 == the file's, the model loads and is the one the card describes (its
    weights, its recipe), and it re-evaluates to the card's metrics. Returns (writer, round)."""
    entry = Path(entry)
    assert sorted(p.name for p in entry.iterdir()) == ["card.json", "model.keras", "recipe.toml"]
    card = saving.load_card(entry)
    assert card["sha256"] == saving.file_sha256(entry / "model.keras")
    who = card["command"].split()
    w, r = int(who[1]), int(who[3])
    assert (writer is None or w == writer) and (round_ is None or r == round_)
    assert card["description"] == config.load_recipe(entry / "recipe.toml")["description"] \
        == f"writer {w} round {r}"
    model = saving.load_saved(entry)
    np.testing.assert_array_equal(model.layers[-1].get_weights()[0], kernel(w, r))
    report = saving.evaluate_saved(entry)  # strict: raises on a mismatch
    assert report["match"] and report["measured"]["test_examples"] == 360
    return w, r


def test_two_writers_at_once(tmp_path, tfds_dir):
    """Two processes (from different working directories, one with a relative path) save into
    the same entry at the same moment, round after round: every round the entry is one
    writer's, whole."""
    rounds = 4
    entry, sync = tmp_path / "saved" / "race", tmp_path / "sync"
    sync.mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    writers = [_spawn("race", entry, tfds_dir, 0, rounds, sync, cwd=tmp_path / "a"),
               _spawn("race", os.path.join("..", "saved", "race"), tfds_dir, 1, rounds, sync,
                      cwd=tmp_path / "b")]
    overlapped = 0
    try:
        for r in range(rounds):
            (sync / f"go-{r}").write_text("")
            for w, child in enumerate(writers):
                done = sync / f"done-{w}-{r}"
                deadline = time.monotonic() + 300
                while not done.exists():
                    assert child.poll() is None, child.stderr.read()[-3000:]
                    assert time.monotonic() < deadline, "a writer hangs"
                    time.sleep(0.02)
            spans = [json.loads((sync / f"done-{w}-{r}").read_text()) for w in (0, 1)]
            overlapped += max(s for s, _ in spans) < min(e for _, e in spans)
            assert assert_consistent(entry)[1] == r
        for child in writers:
            _, err = child.communicate(timeout=120)
            assert child.returncode == 0, err[-3000:]
    finally:
        for child in writers:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert overlapped >= 1  # the writers really did run into each other


@pytest.mark.parametrize("point", ["model.save", "before renames"])
def test_writer_sigkilled_mid_write(tmp_path, tfds_dir, point):
    entry = tmp_path / "saved" / "race"
    write_entry(entry, tfds_dir, writer=1)
    before = _files(entry)
    ready = tmp_path / "ready"
    child = _spawn("kill", entry, tfds_dir, point, ready)
    _wait_ready(child, ready)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    leftovers = set(_files(entry)) - set(before)
    assert saving.ENTRY_LOCK_FILE in leftovers  # the dead writer's lock file ...
    assert any(n.startswith(".tmp-") for n in leftovers)  # ... and its temporaries
    # the previous entry is intact, byte for byte, and loads and re-evaluates
    assert {n: b for n, b in _files(entry).items() if n in before} == before
    saving.evaluate_saved(entry)
    assert saving.find_entry(entry) == entry
    # the next write is not blocked by the dead writer, and clears its leftovers
    start = time.monotonic()
    write_entry(entry, tfds_dir, writer=4)
    assert time.monotonic() - start < 60
    assert assert_consistent(entry, writer=4) == (4, 0)


@pytest.mark.parametrize("point", ["model.save", "renames"])
def test_writer_sigtermed_mid_write_leaves_no_temporaries(tmp_path, tfds_dir, point):
    """A real SIGTERM (what kill, a scheduler or a container stop sends) while the entry is
    written: the writer removes its temporaries and releases the lock, then ends by SIGTERM.
    During the model's write the previous entry stays, byte for byte; during the renames the
    signal waits for the last one, so the entry is the new one, whole (never the new model
    beside the previous card)."""
    entry = tmp_path / "saved" / "race"
    write_entry(entry, tfds_dir, writer=1)
    before = _files(entry)
    ready, sent = tmp_path / "ready", tmp_path / "sent"
    child = _spawn("term", entry, tfds_dir, point, ready, sent)
    _wait_ready(child, ready)
    os.kill(child.pid, signal.SIGTERM)
    sent.write_text("")
    out, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGTERM, err[-3000:]
    assert "the writer returned" not in out and "Traceback" not in err, err[-3000:]
    # no temporaries, no lock file: only the entry's three files
    assert sorted(_files(entry)) == ["card.json", "model.keras", "recipe.toml"]
    if point == "model.save":
        assert _files(entry) == before
        assert assert_consistent(entry) == (1, 0)
    else:
        assert assert_consistent(entry) == (2, 0)


@pytest.mark.slow  # documents the one window atomic renames leave; the cases above cover the rest
def test_writer_sigkilled_between_renames(tmp_path, tfds_dir):
    """Killed after the model's rename and before the card's: the new model sits beside the
    previous card. That is refused (ChecksumError), never served as the previous entry, and the
    next write repairs the entry."""
    entry = tmp_path / "saved" / "race"
    write_entry(entry, tfds_dir, writer=1)
    ready = tmp_path / "ready"
    child = _spawn("kill", entry, tfds_dir, "before card", ready)
    _wait_ready(child, ready)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=60)
    with pytest.raises(saving.ChecksumError, match="does not match the card"):
        saving.load_saved(entry)
    write_entry(entry, tfds_dir, writer=5)
    assert assert_consistent(entry, writer=5) == (5, 0)


def test_full_destination_loses_nothing(tmp_path, tfds_dir):
    """A real write failure (the file-size limit of the writer, as on a full disk; root ignores
    permissions) while replacing an entry: DestinationError, the previous entry unchanged."""
    entry = tmp_path / "saved" / "race"
    write_entry(entry, tfds_dir, writer=1)
    before = _files(entry)
    assert len(before["model.keras"]) > 8192
    child = _spawn("fsize", entry, tfds_dir, 8192)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-3000:]
    line = out.strip()
    assert line.startswith(f"DestinationError: Cannot write the saved entry into {str(entry)!r}: "
                           f"File too large"), out + err[-3000:]
    assert line.endswith(f"Received: out_dir={str(entry)!r}") and "\n" not in line
    assert _files(entry) == before
    assert_consistent(entry, writer=1)


def test_destination_under_a_regular_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    with pytest.raises(saving.DestinationError, match=r"Not a directory.*Received: out_dir="):
        # (the recipe's own output_dir must be a folder: the schema refuses a file there)
        saving.save_entry(model_of(1), recipe(tmp_path / "saved" / "e", tmp_path, 1), {}, 1.0,
                          None, blocker / "e")
    with pytest.raises(saving.DestinationError, match=r"Received: train\.output_dir="):
        saving.check_destination(blocker / "e")
    assert blocker.read_text() == "keep me"


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "flipped bytes":  # inside the weights member: its CRC no longer matches
        middle = len(data) // 2
        data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    elif how == "truncated":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"not a zip at all\n" * 10)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flipped bytes", "truncated", "garbage"])
def test_damaged_model_with_matching_sha(tmp_path, tfds_dir, how):
    entry = tmp_path / "saved" / "race"
    write_entry(entry, tfds_dir, writer=1)
    _damage(entry / "model.keras", how)
    card = json.loads((entry / "card.json").read_text())
    card["sha256"] = saving.file_sha256(entry / "model.keras")
    (entry / "card.json").write_text(json.dumps(card))
    for call in (saving.load_saved, saving.evaluate_saved):
        with pytest.raises(saving.EntryLoadError, match="cannot be loaded") as info:
            call(entry)
        message = str(info.value)
        assert "\n" not in message and str(entry / "model.keras") in message
        assert "retrain it with `keras-normreg train" in message
        assert isinstance(info.value, ValueError)
    if how == "flipped bytes":
        assert "Bad CRC-32" in message


def test_safe_mode_refusal_runs_no_code(tmp_path):
    marker = tmp_path / "code-ran"
    # a lambda whose body leaves a mark: saved into an entry as a Lambda layer
    body = eval(f"lambda x: (open({str(marker)!r}, 'a').close(), x * 2.0)[1]")
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Lambda(body), keras.layers.Dense(10)])
    entry = tmp_path / "saved" / "lambda"
    saving.save_entry(model, recipe(entry, tmp_path, 1), {"test_accuracy": 0.1,
                                                          "test_loss": 2.3}, 1.0, None, entry)
    marker.unlink()  # building the model ran it here, on purpose
    assert saving.load_card(entry)["sha256"] == saving.file_sha256(entry / "model.keras")
    for call in (saving.load_saved, saving.evaluate_saved):
        with pytest.raises(saving.EntryLoadError, match=r"cannot be loaded \(ValueError: "
                                                        r"Requested the deserialization of a "
                                                        r"`Lambda` layer") as info:
            call(entry)
        assert "\n" not in str(info.value)
    assert not marker.exists()  # nothing from the file ran
    # (the file does carry code: loading it unsafely runs it)
    keras.saving.load_model(entry / "model.keras", safe_mode=False)
    assert marker.exists()


if __name__ == "__main__":  # a writer process
    mode, *rest = sys.argv[1:]
    {"race": _child_race, "kill": _child_kill, "fsize": _child_file_size_limit,
     "term": _child_term}[mode](*rest)
