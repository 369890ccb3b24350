"""Every shipped saved model re-evaluates to its card's metrics exactly."""

import json
import os
import shutil

import pytest

from keras_normreg import saving, zoo

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "saved_models")
ENTRIES = sorted(d for d in os.listdir(ROOT)
                 if os.path.isfile(os.path.join(ROOT, d, "card.json"))) if os.path.isdir(ROOT) else []


def test_entries_shipped():
    assert len(ENTRIES) >= 4, ENTRIES
    datasets = {json.load(open(os.path.join(ROOT, e, "card.json")))["dataset"] for e in ENTRIES}
    assert {"mnist1d", "digits"} <= datasets


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_reevaluates_exactly(name, tmp_path):
    report = saving.evaluate_saved(os.path.join(ROOT, name), data_dir=str(tmp_path / "tfds"))
    assert report["match"]
    assert report["measured"]["test_correct"] == report["card"]["test_correct"]


def test_best_mnist1d_entry_reaches_098():
    best = max(json.load(open(os.path.join(ROOT, e, "card.json")))["metrics"]["test_accuracy"]
               for e in ENTRIES
               if json.load(open(os.path.join(ROOT, e, "card.json")))["dataset"] == "mnist1d")
    assert best >= 0.98


def test_zoo_load_by_name_checks_sha(tmp_path, monkeypatch):
    name = ENTRIES[0]
    model = zoo.load(name)
    card = saving.load_card(os.path.join(ROOT, name))
    assert model.count_params() == card["parameters"]
    # a corrupted copy is refused with a clear error
    copy = tmp_path / name
    shutil.copytree(os.path.join(ROOT, name), copy)
    with open(copy / "model.keras", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(saving.ChecksumError, match="does not match the card"):
        zoo.load(str(copy))
