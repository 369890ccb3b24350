"""EagerGridOracle: keras-tuner's grid order, all points at once for parallel workers."""

from __future__ import annotations

import keras_tuner as kt

from keras_normreg import _compat
from keras_normreg.tuning.grid import EagerGridOracle, grid_points

RUNNING = _compat.kt_trial_status().RUNNING
STOPPED = _compat.kt_trial_status().STOPPED


def space():
    hp = kt.HyperParameters()
    hp.Choice("norm", ["batch", "none"])
    hp.Choice("decay", ["none", "l2", "unit_norm"])
    hp.Fixed("learning_rate", 0.1)
    with hp.conditional_scope("decay", ["l2"]):
        hp.Choice("lambda", [1e-4, 1e-3], ordered=True)
    return hp


# By hand: norm slowest, then decay; lambda only under l2; defaults (first values) first.
EXPECTED = [
    {"norm": "batch", "decay": "none", "learning_rate": 0.1},
    {"norm": "batch", "decay": "l2", "learning_rate": 0.1, "lambda": 1e-4},
    {"norm": "batch", "decay": "l2", "learning_rate": 0.1, "lambda": 1e-3},
    {"norm": "batch", "decay": "unit_norm", "learning_rate": 0.1},
    {"norm": "none", "decay": "none", "learning_rate": 0.1},
    {"norm": "none", "decay": "l2", "learning_rate": 0.1, "lambda": 1e-4},
    {"norm": "none", "decay": "l2", "learning_rate": 0.1, "lambda": 1e-3},
    {"norm": "none", "decay": "unit_norm", "learning_rate": 0.1},
]


def test_grid_points_by_hand():
    assert grid_points(space()) == EXPECTED


def test_default_value_comes_first():
    hp = kt.HyperParameters()
    hp.Choice("a", [1, 2, 3], default=2)
    assert [p["a"] for p in grid_points(hp)] == [2, 1, 3]


def _oracle(tmp_path, max_trials=None):
    oracle = EagerGridOracle(objective=kt.Objective("score", "max"), max_trials=max_trials)
    oracle._set_project_dir(str(tmp_path), "p")
    oracle.update_space(space())
    return oracle


def test_same_order_as_keras_tuner_grid_search_one_worker(tmp_path):
    ref = kt.oracles.GridSearchOracle(objective=kt.Objective("score", "max"))
    ref._set_project_dir(str(tmp_path / "ref"), "p")
    ref.update_space(space())
    ours = _oracle(tmp_path / "ours")
    seen = {"ref": [], "ours": []}
    for name, oracle in (("ref", ref), ("ours", ours)):
        while True:
            trial = oracle.create_trial("tuner0")
            if trial.status == STOPPED:
                break
            seen[name].append(trial.hyperparameters.values)
            oracle.update_trial(trial.trial_id, {"score": 1.0})
            oracle.end_trial(trial)
    assert seen["ours"] == seen["ref"] == EXPECTED


def test_parallel_workers_get_distinct_points_without_waiting(tmp_path):
    """Eight workers ask before any trial ends: all get a RUNNING trial, the eight points;
    a ninth is told to stop. keras-tuner's GridSearchOracle answers IDLE from the third on."""
    oracle = _oracle(tmp_path)
    trials = [oracle.create_trial(f"tuner{i}") for i in range(8)]
    assert [t.status for t in trials] == [RUNNING] * 8
    assert [t.hyperparameters.values for t in trials] == EXPECTED
    assert oracle.create_trial("tuner8").status == STOPPED

    ref = kt.oracles.GridSearchOracle(objective=kt.Objective("score", "max"))
    ref._set_project_dir(str(tmp_path / "ref"), "p")
    ref.update_space(space())
    statuses = [ref.create_trial(f"tuner{i}").status for i in range(3)]
    assert statuses == [RUNNING, RUNNING, _compat.kt_trial_status().IDLE]


def test_resume_skips_taken_points_and_respects_max_trials(tmp_path):
    oracle = _oracle(tmp_path, max_trials=5)
    for i in range(3):
        t = oracle.create_trial("tuner0")
        oracle.update_trial(t.trial_id, {"score": float(i)})
        oracle.end_trial(t)
    oracle.save()
    resumed = _oracle(tmp_path, max_trials=5)
    resumed.reload()
    nxt = resumed.create_trial("tuner0")
    assert nxt.hyperparameters.values == EXPECTED[3]
    resumed.end_trial(nxt)
    assert resumed.create_trial("tuner1").hyperparameters.values == EXPECTED[4]
    assert resumed.create_trial("tuner2").status == STOPPED  # max_trials = 5 reached


def test_make_oracle_uses_eager_grid():
    from keras_normreg.tuning import spec as nr_spec
    from keras_normreg.tuning import study

    raw = {"name": "g", "base": {"model": {"arch": "mlp"}, "data": {"dataset": "digits"}},
           "space": {"norms": ["batch"], "decay": ["none"], "learning_rate": 0.1},
           "tuner": {"kind": "grid"}}
    assert isinstance(study.make_oracle(nr_spec.resolve_study(raw)), EagerGridOracle)
