"""Fixtures of the tuning tests: the tiny digits study, written into a temporary directory."""

import glob
import json
import os

import pytest
import tomli_w

from keras_normreg import config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tuning", "tiny_digits.toml")


def write_tiny_spec(tmp_path, **changes) -> str:
    """A copy of tuning/tiny_digits.toml whose outputs go under ``tmp_path``; ``changes`` are
    ``section={key: value}`` updates (or top-level values)."""
    raw = config.read_toml(TINY)
    raw["output"] = {"directory": str(tmp_path / "runs"),
                     "export_dir": str(tmp_path / "saved_models")}
    _merge(raw, changes)
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(raw))
    return str(path)


def _merge(into: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


@pytest.fixture
def tiny_spec_path(tmp_path):
    return write_tiny_spec(tmp_path)


def read_trials(project, filename: str = "trial.json") -> dict:
    """``{trial_id: contents}`` of one JSON file per trial directory of a keras-tuner project
    (``trial.json``, or e.g. our ``result.json``)."""
    out = {}
    for path in glob.glob(os.path.join(project, "trial_*", filename)):
        with open(path) as f:
            t = json.load(f)
        out[t["trial_id"]] = t
    return out


def mid_trial(project) -> bool:
    """At least one trial completed and one running (the moment to kill a process)."""
    ts = read_trials(project).values()
    return (sum(t["status"] == "COMPLETED" for t in ts) >= 1
            and any(t["status"] == "RUNNING" for t in ts))
