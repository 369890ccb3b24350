"""keras_normreg.saving: cards, sha256, entry save/find/load, exact evaluation."""

import ast
import builtins
import errno
import hashlib
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_normreg
from keras_normreg import _locks, _version, config, evaluate, saving, train, zoo


def _cfg(tmp_path, name="tiny"):
    return config.resolve({
        "name": name,
        "description": "a tiny entry",
        "model": {"arch": "mlp"},
        "data": {"dataset": "digits", "batch_size": 4, "data_dir": str(tmp_path / "tfds")},
        "train": {"epochs": 1, "output_dir": str(tmp_path / "saved")},
    })


def _tiny_model(inputs=5, classes=3):
    keras.utils.set_random_seed(7)
    return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(classes)])


METRICS = {"test_accuracy": 0.5, "test_correct": 2, "test_examples": 4, "test_loss": 0.75}


def _save(tmp_path, model=None, **kw):
    model = model or _tiny_model()
    cfg = _cfg(tmp_path)
    out = str(tmp_path / "saved" / cfg["name"])
    path = saving.save_entry(model, cfg, METRICS, 12.345, tf.distribute.get_strategy(), out,
                             command="pytest", history={"loss": [np.float32(1.5), 0.5]}, **kw)
    return model, cfg, Path(path)


# -- basics ---------------------------------------------------------------------------------------
def test_card_round_trip(tmp_path):
    model, cfg, entry = _save(tmp_path)
    assert sorted(p.name for p in entry.iterdir()) == ["card.json", "model.keras", "recipe.toml"]
    card = saving.load_card(entry)
    assert card["name"] == "tiny" and card["description"] == "a tiny entry"
    assert (card["dataset"], card["test_split"], card["batch_size"]) == ("digits", "test", 4)
    assert card["metrics"] == METRICS
    assert card["parameters"] == card["trainable_parameters"] == 5 * 3 + 3
    assert card["model_file"] == "model.keras"
    assert card["training_seconds"] == 12.35
    assert card["history"] == {"loss": [1.5, 0.5]}
    assert card["command"] == "pytest"
    assert card["recipe"] == json.loads(json.dumps(cfg))
    assert card["versions"]["keras_normreg"] == keras_normreg.__version__ == _version.__version__
    assert card["versions"]["keras"] == keras.__version__
    assert card["hardware"]["replicas"] == 1
    assert "tuning" not in card
    assert config.load_recipe(entry / "recipe.toml") == cfg
    loaded, card2 = saving.load_saved(entry, return_card=True)
    assert card2 == card
    x = np.random.default_rng(0).normal(size=(6, 5)).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)


def test_find_and_list_by_name(tmp_path, monkeypatch):
    _, _, entry = _save(tmp_path)
    monkeypatch.setenv("KERAS_NORMREG_SAVED_MODELS", str(entry.parent))
    assert saving.saved_models_dirs()[0] == entry.parent
    assert "tiny" in saving.list_saved()
    assert saving.find_entry("tiny") == entry
    assert saving.find_entry(entry) == entry
    assert zoo.load("tiny").count_params() == 18
    assert "tiny" in zoo.list_pretrained()


def test_old_names_are_the_saving_functions():
    with pytest.warns(DeprecationWarning, match="keras_normreg.saving"):
        assert evaluate.load_saved is saving.load_saved
        assert evaluate.evaluate_saved is saving.evaluate_saved
        assert evaluate.ChecksumError is saving.ChecksumError
        assert evaluate.CardError is saving.CardError
        assert evaluate.MetricMismatchError is saving.MetricMismatchError
    assert train.evaluate_model is saving.evaluate_model
    assert train.file_sha256 is saving.file_sha256
    assert train.save_entry is saving.save_entry


def test_saving_imports_only_downward():
    tree = ast.parse(Path(saving.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    ours = {m for m in imported if m.startswith("keras_normreg")}
    assert ours == {"keras_normreg.config", "keras_normreg.data", "keras_normreg._utils.received",
                    "keras_normreg._atomic",
                    "keras_normreg._locks.FileLock",
                    "keras_normreg._version.__version__",
                    "keras_normreg.data.streams.array_batches"}
    # and no import of ours hides inside a function (backends' own packages may load lazily)
    top = {id(n) for n in tree.body}
    ours_nodes = [n for n in ast.walk(tree)
                  if (isinstance(n, ast.ImportFrom) and (n.module or "").startswith("keras_normreg"))
                  or (isinstance(n, ast.Import)
                      and any(a.name.startswith("keras_normreg") for a in n.names))]
    assert ours_nodes and all(id(n) in top for n in ours_nodes)


def test_resumed_at_epoch_recorded(tmp_path):
    _, _, entry = _save(tmp_path)
    assert saving.load_card(entry)["resumed_at_epoch"] == []
    _, _, entry = _save(tmp_path, resumed_at_epoch=(2, np.int64(5)))
    card = saving.load_card(entry)
    assert card["resumed_at_epoch"] == [2, 5]
    assert all(type(v) is int for v in card["resumed_at_epoch"])


def test_entry_written_atomically_under_its_lock(tmp_path, monkeypatch):
    """The three files go to temporaries in the folder first, the card is renamed in LAST,
    all while the entry lock is held; nothing is left besides the three files."""
    out = tmp_path / "saved" / "tiny"
    steps = []
    real_replace = os.replace

    def recording_replace(src, dst):
        held = _locks.read_holder(out / saving.ENTRY_LOCK_FILE)
        steps.append((Path(src).name, Path(dst).name, held and held["pid"]))
        return real_replace(src, dst)

    monkeypatch.setattr(saving.os, "replace", recording_replace)
    _save(tmp_path)
    assert [dst for _, dst, _ in steps] == ["model.keras", "recipe.toml", "card.json"]
    assert all(pid == os.getpid() for _, _, pid in steps)  # under this process's lock
    assert all(src.startswith(f".tmp-{os.getpid()}-") and src.endswith(dst)
               for src, dst, _ in steps)
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "model.keras", "recipe.toml"]


def test_leftover_temporaries_removed_on_next_write(tmp_path):
    _, _, entry = _save(tmp_path)
    leftovers = [".tmp-999999-0badc0de-model.keras", ".tmp-999999-0badc0de-recipe.toml",
                 ".tmp-999999-0badc0de-card.json", ".write-check-abc123"]
    for name in leftovers:
        (entry / name).write_bytes(b"half written")
    (entry / "notes.txt").write_text("mine")  # not ours: kept
    _save(tmp_path)
    assert sorted(p.name for p in entry.iterdir()) == ["card.json", "model.keras", "notes.txt",
                                                      "recipe.toml"]
    saving.load_saved(entry)


def test_save_entry_inside_a_held_entry_lock(tmp_path):
    """A training holds the entry lock from start to end; its save_entry takes it again."""
    out = tmp_path / "saved" / "tiny"
    with saving.entry_lock(out) as lock:
        assert lock.held and lock.depth == 1
        _save(tmp_path)
        assert lock.depth == 1 and (out / ".entry.lock").exists()
        holder = _locks.read_holder(out / ".entry.lock")
        assert holder["pid"] == os.getpid() and holder["purpose"] == f"saved entry {out}"
    assert not (out / ".entry.lock").exists()
    saving.load_saved(out)


def test_list_saved_ignores_temporaries_and_locks(tmp_path, monkeypatch):
    root = tmp_path / "saved"
    _save(tmp_path)
    half = root / "half"
    half.mkdir()
    for name in (".tmp-1-ab-model.keras", ".tmp-1-ab-recipe.toml", ".tmp-1-ab-card.json",
                 ".entry.lock"):
        (half / name).write_text("{}")
    monkeypatch.setenv("KERAS_NORMREG_SAVED_MODELS", str(root))
    monkeypatch.chdir(tmp_path)
    assert "tiny" in saving.list_saved() and "half" not in saving.list_saved()
    with pytest.raises(FileNotFoundError):
        saving.find_entry(half / "x")


def test_check_destination_writable(tmp_path):
    out = tmp_path / "a" / "b"
    saving.check_destination(out)
    assert out.is_dir() and list(out.iterdir()) == []  # the probe file is removed


# -- correctness against references ---------------------------------------------------------------
def test_sha256_matches_hashlib(tmp_path):
    small = tmp_path / "abc"
    small.write_bytes(b"abc")
    # FIPS 180-2 test vector
    assert saving.file_sha256(small) == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = tmp_path / "big"
    data = np.random.default_rng(1).bytes((1 << 20) * 2 + 123)  # three chunks
    big.write_bytes(data)
    assert saving.file_sha256(str(big)) == hashlib.sha256(data).hexdigest()
    _, _, entry = _save(tmp_path)
    assert saving.load_card(entry)["sha256"] == \
        hashlib.sha256((entry / "model.keras").read_bytes()).hexdigest()


def test_evaluate_model_matches_numpy():
    rng = np.random.default_rng(3)
    model = _tiny_model(inputs=4, classes=5)
    w, b = (v.numpy() for v in model.weights)
    x = rng.normal(size=(11, 4)).astype("float32")
    y = rng.integers(0, 5, size=11)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)  # 4 + 4 + 3: a partial batch
    got = saving.evaluate_model(model, ds)
    logits = x.astype(np.float64) @ w + b
    m = logits.max(-1, keepdims=True)
    log_softmax = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    correct = int((logits.argmax(-1) == y).sum())
    assert got["test_examples"] == 11
    assert got["test_correct"] == correct
    assert got["test_accuracy"] == correct / 11
    np.testing.assert_allclose(got["test_loss"], -log_softmax[np.arange(11), y].mean(),
                               rtol=1e-5)


def test_tuning_block_written_in_the_one_card_write(tmp_path, monkeypatch):
    writes = []

    def counting_open(file, mode="r", *args, **kwargs):
        if str(file).endswith("card.json"):
            writes.append(mode)
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(saving, "open", counting_open, raising=False)
    tuning = {"study": "s", "trial_id": "03", "score": 0.9, "point": {"norm": "batch"}}
    _, _, entry = _save(tmp_path, tuning=tuning)
    assert writes == ["w"]  # card.json opened once, for writing, never re-read
    assert saving.load_card(entry)["tuning"] == tuning


# -- errors ---------------------------------------------------------------------------------------
def test_checksum_mismatch(tmp_path):
    _, _, entry = _save(tmp_path)
    with open(entry / "model.keras", "ab") as f:
        f.write(b"junk")
    with pytest.raises(saving.ChecksumError, match="does not match the card"):
        saving.load_saved(entry)
    (entry / "model.keras").unlink()
    with pytest.raises(FileNotFoundError, match="model file named by card.json is missing"):
        saving.load_saved(entry)


def test_card_errors(tmp_path):
    entry = tmp_path / "e"
    entry.mkdir()
    with pytest.raises(saving.CardError, match="card.json is missing"):
        saving.load_card(entry)
    (entry / "card.json").write_text("[1, 2]")
    with pytest.raises(saving.CardError, match="must hold a JSON object. Received: list"):
        saving.load_card(entry)
    card = {k: "x" for k in saving.REQUIRED_CARD_KEYS}
    card["metrics"] = {"test_accuracy": 1.0}
    (entry / "card.json").write_text(json.dumps(card))
    with pytest.raises(saving.CardError, match="must have test_accuracy and test_loss. Received"):
        saving.load_card(entry)
    with pytest.raises(FileNotFoundError, match=r"No saved model entry.*Received: path="):
        saving.find_entry(tmp_path / "nope")


def test_evaluate_model_empty_dataset():
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((0, 5), "float32"),
                                             np.zeros((0,), "int64"))).batch(2)
    with pytest.raises(ValueError, match=r"Argument `dataset` must yield at least one example to "
                                         r"evaluate\. Received: dataset="):
        saving.evaluate_model(_tiny_model(), ds)


def test_bad_tuning_block_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"Argument `tuning` must be a dict .*Received: tuning=3"):
        _save(tmp_path, tuning=3)
    with pytest.raises(TypeError, match="not JSON serializable"):
        _save(tmp_path, tuning={"what": object()})
    assert not (tmp_path / "saved").exists()


@pytest.mark.parametrize("bad", ["3", 5, [-1], [1.5], [True], {"a": 1}, [1, None]])
def test_resumed_at_epoch_validated(tmp_path, bad):
    with pytest.raises(ValueError, match=r"Argument `resumed_at_epoch` must be a sequence of "
                                         r"non-negative integers.*Received: resumed_at_epoch="):
        _save(tmp_path, resumed_at_epoch=bad)
    assert not (tmp_path / "saved").exists()  # checked before anything is written


def test_check_destination_under_a_regular_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(saving.DestinationError,
                       match=r"Cannot write the saved entry into .*file/entry.*Received: "
                             r"train\.output_dir=") as info:
        saving.check_destination(blocker / "entry")
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(saving.DestinationError, match=r"--set study\.out=.*Received: study\.out="):
        saving.check_destination(blocker / "entry", argument="study.out")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into a read-only folder anyway")
def test_check_destination_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(saving.DestinationError, match="Permission denied"):
            saving.check_destination(ro / "entry")
    finally:
        ro.chmod(0o755)


def test_save_entry_unwritable_destination(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "entry"
    with pytest.raises(saving.DestinationError,
                       match=r"Cannot write the saved entry into .*file/entry.*Not a directory.*"
                             r"Received: out_dir=") as info:
        saving.save_entry(_tiny_model(), _cfg(tmp_path), METRICS, 1.0, None, out)
    assert "\n" not in str(info.value)
    assert blocker.read_text() == "x"


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _partial_model_save(self, filepath, *args, **kwargs):
    Path(filepath).write_bytes(b"PK\x03\x04 half a zip")
    _disk_full()


class _FullDiskOpen:
    """open() whose files for the card fail on write, as on a full disk."""

    def __call__(self, file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        if str(file).endswith("card.json") and "w" in mode:
            f.write = _disk_full
        return f


@pytest.mark.parametrize("where", ["model.save", "fsync", "card write", "lock file"])
def test_save_entry_disk_full_keeps_previous_entry(tmp_path, monkeypatch, where):
    _, _, entry = _save(tmp_path)
    before = {p.name: p.read_bytes() for p in entry.iterdir()}
    if where == "model.save":
        monkeypatch.setattr(keras.Model, "save", _partial_model_save)
    elif where == "fsync":
        monkeypatch.setattr(saving._atomic, "fsync_file", _disk_full)
    elif where == "card write":
        monkeypatch.setattr(saving, "open", _FullDiskOpen(), raising=False)
    else:
        monkeypatch.setattr(_locks.os, "fsync", _disk_full)  # os.fsync everywhere
    with pytest.raises(saving.DestinationError,
                       match=r"Cannot write the saved entry into .*: No space left on device\. "
                             r"The previous entry there \(if any\) is unchanged.*"
                             r"Received: out_dir=") as info:
        _save(tmp_path, model=_tiny_model(classes=3))
    assert "\n" not in str(info.value)
    # nothing lost, nothing half-written left behind (no temporaries, no lock file)
    assert {p.name: p.read_bytes() for p in entry.iterdir()} == before
    monkeypatch.undo()
    saving.load_saved(entry)


# -- names and folders that become paths ---------------------------------------------------------
@pytest.mark.parametrize("bad", ["../../x", "..", "", ".hidden", "a/b"])
def test_save_entry_refuses_a_name_that_is_not_one_folder_name(tmp_path, bad):
    cfg = dict(_cfg(tmp_path), name=bad)  # a recipe built by hand, past the schema
    with pytest.raises(config.ConfigError) as info:
        saving.save_entry(_tiny_model(), cfg, METRICS, 1.0, None, tmp_path / "saved" / "e")
    message = str(info.value)
    assert message.startswith("Config key 'name' must be one folder name")
    assert message.endswith(f"Received: name={bad!r}")
    assert not (tmp_path / "saved").exists()  # nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["", "sub\x00dir", "line\nbreak"])
def test_save_entry_refuses_an_unusable_out_dir(tmp_path, monkeypatch, bad):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(saving.DestinationError) as info:
        saving.save_entry(_tiny_model(), _cfg(tmp_path), METRICS, 1.0, None, bad)
    message = str(info.value)
    assert message.startswith("Argument `out_dir` must be a non-empty folder path")
    assert message.endswith(f"Received: out_dir={bad!r}") and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["..", "", ".", ".hidden", "a\x00b"])
def test_lookup_by_name_refuses_names_outside_the_rule(tmp_path, monkeypatch, bad):
    _, _, entry = _save(tmp_path)
    # the folder around the entries holds an entry-looking card: ".." must not reach it
    (entry.parent.parent / "card.json").write_text("{}")
    monkeypatch.setenv("KERAS_NORMREG_SAVED_MODELS", str(entry.parent))
    monkeypatch.chdir(entry)  # "." would be an entry path: it is one here, so allowed
    if bad == ".":
        assert saving.find_entry(".") == Path(".")
        return
    for call in (saving.find_entry, saving.load_saved, saving.evaluate_saved, zoo.load):
        with pytest.raises(config.ConfigError) as info:
            call(bad)
        message = str(info.value)
        assert message.startswith("Argument `name_or_path` must be one folder name"), message
        assert message.endswith(f"Received: name_or_path={bad!r}")
    assert saving.find_entry("tiny") == entry  # a valid name still finds it


def test_list_saved_skips_folders_with_names_outside_the_rule(tmp_path, monkeypatch):
    _, _, entry = _save(tmp_path)
    hidden = entry.parent / ".copy"
    hidden.mkdir()
    (hidden / "card.json").write_text((entry / "card.json").read_text())
    monkeypatch.setenv("KERAS_NORMREG_SAVED_MODELS", str(entry.parent))
    names = saving.list_saved()
    assert "tiny" in names and ".copy" not in names


def test_train_checks_names_and_folders_before_anything_runs(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cfg = _cfg(tmp_path)
    with pytest.raises(config.ConfigError) as info:
        train.train(dict(cfg, name="../escape"))
    assert str(info.value).endswith("Received: name='../escape'")
    with pytest.raises(config.ConfigError) as info:
        train.train(cfg, run_dir=str(afile / "run"))
    assert str(info.value) == (f"Argument `run_dir` must be a folder, but {str(afile)!r} is a "
                               f"file. Received: run_dir={str(afile / 'run')!r}")
    bad = dict(cfg, train=dict(cfg["train"], output_dir=""))
    with pytest.raises(config.ConfigError, match=r"Config key 'train.output_dir' must not be "
                                                 r"empty.*Received: train.output_dir=''$"):
        train.train(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing was made
