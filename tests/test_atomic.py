"""keras_normreg._atomic: a file is the old version or the new one, never half written."""

import json
import os

import keras
import numpy as np
import pytest

from keras_normreg import _atomic


def test_write_json_and_text_replace_the_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    _atomic.write_json(path, {"b": [1, 2.5], "a": None}, indent=1, sort_keys=True, newline=True)
    assert path.read_text() == '{\n "a": null,\n "b": [\n  1,\n  2.5\n ]\n}\n'
    _atomic.write_text(path, "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    assert os.listdir(tmp_path) == ["state.json"]  # no temporaries left


@pytest.mark.parametrize("durable", [True, False])
def test_failure_half_way_keeps_the_old_file(tmp_path, durable):
    path = tmp_path / "f.txt"
    path.write_text("old content")

    def write(tmp):
        with open(tmp, "w") as f:
            f.write("new con")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        _atomic.replace_via_temp(path, write, durable=durable)
    assert path.read_text() == "old content"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_durable_syncs_file_then_folder(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(_atomic, "fsync_file", lambda p: calls.append(("file", os.path.exists(
        tmp_path / "x.txt"))))
    monkeypatch.setattr(_atomic, "fsync_dir", lambda p: calls.append(("dir", str(p))))
    _atomic.write_text(tmp_path / "x.txt", "1")
    # the temporary is synced before the rename (x.txt not there yet), the folder after it
    assert calls == [("file", False), ("dir", str(tmp_path))]
    calls.clear()
    _atomic.write_text(tmp_path / "x.txt", "2", durable=False)
    assert calls == []


def test_suffix_lets_keras_write_weights(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path / "ckpt.weights.h5"
    _atomic.replace_via_temp(path, lambda tmp: model.save_weights(tmp, overwrite=True),
                             prefix=".tmp-state-", suffix=".weights.h5")
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    other.load_weights(path)
    for a, b in zip(model.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.weights.h5"]


def test_json_of_a_state_round_trips(tmp_path):
    state = {"epochs_done": 3, "history": {"loss": [2.3, 1.1]}, "seed_states": [[1, 2]]}
    _atomic.write_json(tmp_path / "s.json", state)
    assert json.loads((tmp_path / "s.json").read_text()) == state
