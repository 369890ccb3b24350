"""Bad inputs get a clear error: the error type, a message that names the
argument or key and the value, and from the CLI one line on stderr, a non-zero exit and no
traceback. bench/probe_bad_inputs.py tries many more and counts the clear ones."""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys

import keras
import pytest

from keras_normreg import config, constraints, layers, optimizers, saving
from keras_normreg.tuning import space as nr_space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN, INF = math.nan, math.inf


# ---- Python API ----

@pytest.mark.parametrize("make, name, shown", [
    (lambda: layers.L1BatchNormalization(momentum=NAN), "momentum", "nan"),
    (lambda: layers.L1BatchNormalization(epsilon=INF), "epsilon", "inf"),
    (lambda: layers.TopKBatchNormalization(momentum=NAN), "momentum", "nan"),
    (lambda: layers.TopKBatchNormalization(epsilon=NAN), "epsilon", "nan"),
    (lambda: optimizers.DecoupledWeightDecay(keras.optimizers.SGD(0.1), NAN), "weight_decay",
     "nan"),
    (lambda: optimizers.DecoupledWeightDecay(keras.optimizers.SGD(0.1), INF), "weight_decay",
     "inf"),
    (lambda: optimizers.SGDP(-1), "learning_rate", "-1"),
    (lambda: optimizers.SGDP(NAN), "learning_rate", "nan"),
    (lambda: optimizers.AdamP(INF), "learning_rate", "inf"),
    (lambda: optimizers.SGDP(0.1, weight_decay=INF), "weight_decay", "inf"),
    (lambda: optimizers.AdamP(1e-3, delta=NAN), "delta", "nan"),
    (lambda: constraints.FixedNorm(NAN), "value", "nan"),
    (lambda: constraints.FixedNorm(INF), "value", "inf"),
    (lambda: constraints.MaxNorm(INF), "max_value", "inf"),
    (lambda: constraints.MaxNorm(NAN), "max_value", "nan"),
])
def test_python_api_refuses_non_finite_numbers(make, name, shown):
    with pytest.raises(ValueError) as e:
        make()
    message = str(e.value)
    assert f"`{name}`" in message and message.endswith(f"Received: {name}={shown}"), message
    assert "\n" not in message


def test_sgdp_accepts_a_schedule_and_zero():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    opt = optimizers.SGDP(schedule)
    # the schedule is followed: 0.1 * 0.5 ** (step / 10); float32 pow and product, a few ulp
    opt.iterations.assign(10)
    assert float(opt.learning_rate) == pytest.approx(0.05, rel=1e-6)
    opt.iterations.assign(30)
    assert float(opt.learning_rate) == pytest.approx(0.0125, rel=1e-6)
    assert float(optimizers.SGDP(0.0).learning_rate) == 0.0


@pytest.mark.parametrize("section, key, value", [
    ("optimizer", "weight_decay", INF),
    ("optimizer", "learning_rate", NAN),
    ("optimizer", "learning_rate", INF),
    ("optimizer", "clipnorm", INF),
    ("regularization", "l2", INF),
    ("model", "constraint_value", NAN),
    ("schedule", "warmup_epochs", INF),
])
def test_config_refuses_non_finite_numbers(section, key, value):
    raw = {"name": "x", "model": {"arch": "cnn1d"}, "data": {"dataset": "mnist1d"}}
    raw.setdefault(section, {})[key] = value
    with pytest.raises(config.ConfigError) as e:
        config.resolve(raw)
    assert str(e.value) == (f"Config key '{section}.{key}' must be a finite number. "
                            f"Received: {section}.{key}={value}")


def test_config_refuses_non_finite_list_items():
    raw = {"name": "x", "model": {"arch": "cnn1d"}, "data": {"dataset": "mnist1d"},
           "schedule": {"kind": "step", "boundaries": [1.0, INF]}}
    with pytest.raises(config.ConfigError, match=r"'schedule.boundaries\[1\]' must be a finite"):
        config.resolve(raw)


@pytest.mark.parametrize("raw, key, shown", [
    ({"lambda": [1e-4, INF]}, "space.lambda[1]", "inf"),
    ({"lambda": [NAN]}, "space.lambda[0]", "nan"),
    ({"lambda": INF}, "space.lambda", "inf"),
    ({"lambda": {"min": 1e-4, "max": INF}}, "space.lambda.max", "inf"),
    ({"learning_rate": [0.1, INF]}, "space.learning_rate[1]", "inf"),
    ({"parametrization": "product", "eta_lambda": {"min": NAN, "max": 1e-3}},
     "space.eta_lambda.min", "nan"),
])
def test_space_refuses_non_finite_lambda_and_eta(raw, key, shown):
    with pytest.raises(config.ConfigError) as e:
        nr_space.resolve_space(raw)
    message = str(e.value)
    assert f"'{key}'" in message and message.endswith(f"Received: {key}={shown}"), message


# ---- saved entries (Python API) ----

def _write_entry(tmp_path, model_bytes):
    entry = tmp_path / "entry"
    shutil.copytree(os.path.join(ROOT, "saved_models", "digits_cnn_batch"), entry)
    (entry / "model.keras").write_bytes(model_bytes)
    card = json.loads((entry / "card.json").read_text())
    card["sha256"] = hashlib.sha256(model_bytes).hexdigest()  # the damage is "blessed"
    (entry / "card.json").write_text(json.dumps(card))
    return entry


@pytest.fixture
def damaged_entry(tmp_path):
    data = open(os.path.join(ROOT, "saved_models", "digits_cnn_batch", "model.keras"),
                "rb").read()
    return _write_entry(tmp_path, data[: len(data) // 2])


@pytest.fixture
def lambda_entry(tmp_path):
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(lambda x: x * 2.0),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    path = tmp_path / "lambda.keras"
    model.save(path)
    return _write_entry(tmp_path, path.read_bytes())


def test_damaged_entry_is_an_entry_load_error(damaged_entry):
    with pytest.raises(saving.EntryLoadError) as e:
        saving.load_saved(damaged_entry)
    assert str(damaged_entry / "model.keras") in str(e.value)


def test_safe_mode_refusal_is_an_entry_load_error(lambda_entry):
    with pytest.raises(saving.EntryLoadError, match="safe_mode"):
        saving.load_saved(lambda_entry)


# ---- the command line (real processes through the console script's module) ----

def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "keras_normreg_cli", *args], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=180)


def _assert_one_line(proc, command, code, *words):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"keras-normreg {command}: error: "), proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


RECIPE = os.path.join(ROOT, "zoo", "digits_cnn_batch.toml")


@pytest.mark.parametrize("override, words", [
    ('model.arch="resnet7"', ["model.arch", "resnet7", "cnn_digits"]),
    ('data.dataset="imagenet9"', ["data.dataset", "imagenet9", "mnist1d"]),
    ("optimizer.weight_decay=inf", ["optimizer.weight_decay=inf", "finite"]),
    # names that become paths, keys that make sense only together, ignored settings
    ('name="../../x"', ["Config key 'name' must be one folder name", "name='../../x'"]),
    ("schedule.warmup_epochs=1000", ["'schedule.warmup_epochs' must not exceed 'train.epochs'",
                                     "schedule.warmup_epochs=1000.0, train.epochs=40"]),
    ("regularization.l2=1e-4", ["'regularization.l2' is ignored with regularization.kind='none'",
                                "regularization.l2=0.0001, regularization.kind='none'"]),
])
def test_cli_train_bad_recipe(tmp_path, override, words):
    proc = _cli(["train", RECIPE, "--set", override, "--set",
                 f'train.output_dir="{tmp_path}"'], tmp_path)
    _assert_one_line(proc, "train", 2, *words)


def test_cli_tune_lambda_with_inf(tmp_path):
    study = tmp_path / "s.toml"
    text = open(os.path.join(ROOT, "tuning", "tiny_digits.toml")).read()
    study.write_text(text.replace("lambda = [1e-4, 1e-3]", "lambda = [1e-4, inf]"))
    proc = _cli(["tune", str(study), "--directory", str(tmp_path / "out")], tmp_path)
    _assert_one_line(proc, "tune", 2, "space.lambda[1]", "inf")


def test_cli_tune_empty_lambda_is_not_the_default_range(tmp_path):
    study = tmp_path / "s.toml"
    text = open(os.path.join(ROOT, "tuning", "tiny_digits.toml")).read()
    study.write_text(text.replace("lambda = [1e-4, 1e-3]", "lambda = []"))
    proc = _cli(["tune", str(study), "--directory", str(tmp_path / "out")], tmp_path)
    _assert_one_line(proc, "tune", 2, "'space.lambda' must not be an empty list",
                     "Received: space.lambda=[]")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, words", [
    (["tune", os.path.join(ROOT, "tuning", "tiny_digits.toml"), "--directory", ""],
     ['--directory must not be empty (use "." for the current folder).',
      "Received: directory=''"]),
    (["evaluate", os.path.join(ROOT, "saved_models", "digits_cnn_batch"), "--data-dir",
      "{file}/sub"], ["--data-dir must be a folder, but '{file}' is a file.",
                      "Received: data_dir='{file}/sub'"]),
    (["train", RECIPE, "--data-dir", "{file}"],
     ["Config key 'data.data_dir' must be a folder, but it is a file.",
      "Received: data.data_dir='{file}'"]),
])
def test_cli_folder_options_checked_when_given(tmp_path, args, words):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    proc = _cli([a.replace("{file}", str(afile)) for a in args], tmp_path)
    _assert_one_line(proc, args[0], 2, *(w.replace("{file}", str(afile)) for w in words))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing was made


def test_cli_evaluate_damaged_entry(damaged_entry, tmp_path):
    proc = _cli(["evaluate", str(damaged_entry)], tmp_path)
    _assert_one_line(proc, "evaluate", 1, "model.keras", "cannot be loaded")


def test_cli_evaluate_safe_mode_refusal(lambda_entry, tmp_path):
    proc = _cli(["evaluate", str(lambda_entry)], tmp_path)
    _assert_one_line(proc, "evaluate", 1, "model.keras", "safe_mode")


def test_cli_verbose_shows_the_traceback(tmp_path):
    proc = _cli(["train", RECIPE, "--set", 'model.arch="resnet7"', "--verbose"], tmp_path)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr
