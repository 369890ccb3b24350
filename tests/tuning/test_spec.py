"""Study specs: schema, defaults, budgets, shipped specs."""

import filecmp
import os

import pytest

from keras_normreg import config
from keras_normreg.tuning import spec as nr_spec

from .conftest import ROOT, TINY

DEMO = os.path.join(ROOT, "tuning", "mnist1d_lambda_norm.toml")
PACKAGED_DEMO = os.path.join(ROOT, "keras_normreg", "tuning", "specs", "mnist1d_lambda_norm.toml")

MINIMAL = {"name": "s", "base": {"model": {"arch": "cnn_digits"}, "data": {"dataset": "digits"}}}


def _raw(**changes):
    raw = {"name": "s", "base": {"model": {"arch": "cnn_digits"}, "data": {"dataset": "digits"}}}
    raw.update(changes)
    return raw


def test_tiny_spec_loads_with_defaults():
    s = nr_spec.load_study(TINY)
    assert s["name"] == "tiny_digits" and s["_path"] == TINY
    assert s["tuner"]["kind"] == "random" and s["budget"]["max_trials"] == 4
    assert s["objective"] == {"name": "val_accuracy", "direction": "max"}
    assert s["base"]["data"]["train_split"] == "train[:90%]"
    assert s["base"]["data"]["validation_split"] == "train[90%:]"
    assert s["base"]["train"]["verbose"] == 0
    assert s["output"]["export_name"] == "tiny_digits_best"
    assert nr_spec.study_budget(s) == 4


def test_defaults_of_a_minimal_study():
    s = nr_spec.resolve_study(MINIMAL)
    assert s["strategy"] == "auto" and s["output"]["directory"] == os.path.join("runs", "tuning")
    assert s["space"]["decay"] == ["decoupled"]
    assert nr_spec.project_dir(s) == os.path.join("runs", "tuning", "s")
    assert nr_spec.project_dir(s, "/x") == os.path.join("/x", "s")


def test_objective_direction_inferred():
    s = nr_spec.resolve_study(_raw(objective={"name": "val_loss"}))
    assert s["objective"]["direction"] == "min"


def test_max_trials_override_and_grid_budget():
    s = nr_spec.load_study(TINY, max_trials=7)
    assert s["budget"]["max_trials"] == 7
    g = nr_spec.resolve_study(_raw(tuner={"kind": "grid"}, budget={"max_trials": 100},
                                   space={"norms": ["none", "batch", "layer"],
                                          "decay": ["none", "decoupled"], "lambda": [1e-4, 1e-3]}))
    assert nr_spec.study_budget(g) == 3 * (1 + 2)  # the grid is smaller than max_trials
    g = nr_spec.with_max_trials(g, 4)
    assert nr_spec.study_budget(g) == 4


def test_hyperband_max_epochs_defaults_to_base_epochs():
    s = nr_spec.resolve_study(_raw(tuner={"kind": "hyperband"},
                                   base={**MINIMAL["base"], "train": {"epochs": 9}}))
    assert s["budget"]["max_epochs"] == 9 and nr_spec.study_budget(s) is None


def test_resolved_study_round_trips_through_toml():
    s = nr_spec.load_study(TINY)
    s.pop("_path")
    again = nr_spec.resolve_study(config.tomllib.loads(nr_spec.study_to_toml(s)))
    assert again == s


def test_demo_spec_shipped_in_package_and_repo():
    assert filecmp.cmp(DEMO, PACKAGED_DEMO, shallow=False)
    s = nr_spec.load_study(DEMO)
    assert s["tuner"]["kind"] == "grid"
    # 4 norms x (none 1 + l2 3 + decoupled 3 + unit_norm 1)
    assert nr_spec.study_budget(s) == 4 * 8 == s["budget"]["max_trials"]
    assert nr_spec.find_spec("mnist1d_lambda_norm").endswith("mnist1d_lambda_norm.toml")


def test_every_shipped_study_validates():
    for name in sorted(os.listdir(os.path.join(ROOT, "tuning"))):
        if name.endswith(".toml"):
            s = nr_spec.load_study(os.path.join(ROOT, "tuning", name))
            assert s["name"] == name[:-len(".toml")]


@pytest.mark.parametrize("raw, match", [
    (_raw(tuner={"knd": "grid"}), r"Unknown config key 'tuner.knd'"),
    (_raw(budgets={}), r"Unknown config key 'budgets'"),
    (_raw(base={"model": {"arch": "cnn_digits", "widht": 3}, "data": {"dataset": "digits"}}),
     r"Unknown config key 'base.model.widht'"),
    (_raw(base={"model": {"arch": "cnn_digits", "norm": "batch"}, "data": {"dataset": "digits"}}),
     r"'base.model.norm' is set by space.norms"),
    (_raw(base={**MINIMAL["base"], "optimizer": {"weight_decay": 1e-4}}),
     r"'base.optimizer.weight_decay' is set by space.decay"),
    (_raw(base={**MINIMAL["base"], "regularization": {"kind": "l2"}}),
     r"'base.regularization' is set by space.decay"),
    (_raw(base={**MINIMAL["base"], "train": {"strategy": "cpu:2"}}),
     r"'base.train.strategy' is set by the top-level 'strategy'"),
    (_raw(base={**MINIMAL["base"], "optimizer": {"learning_rate": 0.1}},
          space={"learning_rate": [0.1, 0.2]}),
     r"'base.optimizer.learning_rate' conflicts with space.learning_rate"),
    (_raw(space={"lambda": {"min": 1e-5, "max": 1e-2}}, tuner={"kind": "grid"}),
     r"'space.lambda' is a continuous range, which grid search cannot enumerate"),
    (_raw(base={**MINIMAL["base"], "data": {"dataset": "digits", "train_split": "train"}}),
     r"objective.name='val_accuracy' needs validation data"),
    (_raw(strategy="multiworker"), r"'strategy' cannot be 'multiworker'"),
    (_raw(name="a b"), r"'name' must be a file-name-safe identifier"),
    (_raw(tuner={"kind": "annealing"}), r"'tuner.kind' must be one of"),
    (_raw(budget={"max_trials": 0}), r"'budget.max_trials' must be >= 1"),
    (_raw(objective={"name": "val_f1"}), r"'objective.name' must be one of"),
    ({"base": MINIMAL["base"]}, r"Missing required config key 'name'"),
    ({"name": "s", "base": {"data": {"dataset": "digits"}}},
     r"Missing required config key 'base.model.arch'"),
])
def test_study_errors(raw, match):
    with pytest.raises(config.ConfigError, match=match):
        nr_spec.resolve_study(raw)


def test_bad_max_trials_and_missing_file(tmp_path):
    with pytest.raises(config.ConfigError, match=r"Received: max_trials=0"):
        nr_spec.load_study(TINY, max_trials=0)
    with pytest.raises(FileNotFoundError, match="Config file not found"):
        nr_spec.load_study(tmp_path / "nope.toml")
    with pytest.raises(FileNotFoundError, match="Study spec not found"):
        nr_spec.find_spec("no_such_study")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "s"\n[base.model]\narch = "cnn_digits"\n[base.data]\n'
                   'dataset = "digits"\n[tuner]\nkind = "grid"\nbogus = 1\n')
    with pytest.raises(config.ConfigError, match=r"bad.toml: Unknown config key 'tuner.bogus'"):
        nr_spec.load_study(bad)


# -- names that become paths, dimensions that would fall back to a default ----------------------
@pytest.mark.parametrize("raw, message", [
    (_raw(name=".."), "Config key 'name' must be a file-name-safe identifier (one folder name"
                      "{rest}Received: name='..'"),
    (_raw(name=".hidden"), "Config key 'name' must be a file-name-safe identifier{rest}"
                           "Received: name='.hidden'"),
    (_raw(name="a/b"), "Config key 'name' must be a file-name-safe identifier{rest}"
                       "Received: name='a/b'"),
    (_raw(output={"export_name": "../x"}), "Config key 'output.export_name' must be a "
                                           "file-name-safe identifier{rest}Received: "
                                           "output.export_name='../x'"),
    (_raw(name="s" * 65), "Config key 'name' must be at most 64 characters{rest}Received: "
                          f"name='{'s' * 65}'"),
    (_raw(output={"directory": ""}), "Config key 'output.directory' must not be empty (use "
                                     "\".\" for the current folder). Received: output.directory=''"),
    (_raw(output={"export_dir": "a\x00b"}), "Config key 'output.export_dir' must not contain NUL "
                                            "or control characters. Received: "
                                            "output.export_dir='a\\x00b'"),
    (_raw(base={**MINIMAL["base"], "optimizer": {"decay_semantics": "schedule"}}),
     "Config key 'base.optimizer.decay_semantics' is set by space.decay{rest}Received: "
     "base.optimizer.decay_semantics='schedule'"),
    (_raw(base={**MINIMAL["base"], "schedule": {"kind": "step", "boundaries": [40.0]}}),
     "Config key 'base.schedule.boundaries' must be < 'base.train.epochs'{rest}Received: "
     "base.schedule.boundaries=[40.0], base.train.epochs=30"),
    (_raw(space={"lambda": []}), "Config key 'space.lambda' must not be an empty list. "
                                 "Received: space.lambda=[]"),
    (_raw(space={"lambda": 0}), "Config key 'space.lambda' must be > 0. Received: space.lambda=0"),
    (_raw(space={"lambda": 0.0, "decay": ["l2"]}), "Config key 'space.lambda' must be > 0. "
                                                   "Received: space.lambda=0.0"),
    (_raw(space={"parametrization": "product", "eta_lambda": []}),
     "Config key 'space.eta_lambda' must not be an empty list. Received: space.eta_lambda=[]"),
    (_raw(space={"lambda": [1e-4], "decay": ["none", "unit_norm"]}),
     "Config key 'space.lambda' is ignored: no mode of space.decay=['none', 'unit_norm'] uses λ"
     "{rest}Received: space.lambda=[0.0001], space.decay=['none', 'unit_norm']"),
    (_raw(space={"lambda": [1e-4, 1e39]}),
     "Config key 'space.lambda' must be representable in float32, the training dtype (|x| <= "
     "3.4028235e+38): 1e+39 is not. Received: space.lambda=[0.0001, 1e+39]"),
    (_raw(space={"learning_rate": 1e39}),
     "Config key 'space.learning_rate' must be representable in float32{rest}Received: "
     "space.learning_rate=1e+39"),
])
def test_study_names_and_dimensions_checked(raw, message):
    with pytest.raises(config.ConfigError) as e:
        nr_spec.resolve_study(raw)
    got = str(e.value)
    head, _, tail = message.partition("{rest}")
    assert got.startswith(head) and got.endswith(tail) and "\n" not in got, got


def test_study_valid_edges():
    s = nr_spec.resolve_study(_raw(name="s" * 64))
    assert s["output"]["export_name"] == "s" * 64 + "_best"
    assert config.name_problem(s["output"]["export_name"]) is None
    # the longest study name still gives valid trial recipe names
    assert config.name_problem("s" * 64 + "_trial_" + "9" * 29) is None
    s = nr_spec.resolve_study(_raw(space={"lambda": [1e-4, 3.4e38], "decay": ["l2"]}))
    assert s["space"]["lambda"]["values"] == [1e-4, 3.4e38]
    assert nr_spec.resolve_study(_raw(space={"decay": ["none"]}))["space"]["lambda"] is None
    # left out, λ samples its documented default range
    assert nr_spec.resolve_study(MINIMAL)["space"]["lambda"]["kind"] == "range"
