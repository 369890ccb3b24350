import subprocess
import sys

import pytest

from keras_normreg import cli, config


def test_help_lists_subcommands():
    proc = subprocess.run([sys.executable, "-m", "keras_normreg.cli", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for sub in ("list", "train", "evaluate", "tune", "demo"):
        assert sub in proc.stdout


def test_list(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "models:" in out and "datasets:" in out
    assert "cnn1d" in out and "mnist1d" in out and "cifar10" in out


def test_unknown_subcommand_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["fly"])
    assert e.value.code == 2
    assert "invalid choice: 'fly'" in capsys.readouterr().err


def test_print_config_applies_overrides(tmp_path, capsys):
    p = tmp_path / "r.toml"
    p.write_text('name="x"\n[model]\narch="cnn1d"\n[data]\ndataset="mnist1d"\n')
    assert cli.main(["train", str(p), "--set", "optimizer.learning_rate=0.25",
                     "--strategy", "cpu:2", "--print-config"]) == 0
    cfg = config.resolve(config.tomllib.loads(capsys.readouterr().out))
    assert cfg["optimizer"]["learning_rate"] == 0.25
    assert cfg["train"]["strategy"] == "cpu:2"


def test_train_bad_recipe_is_a_clear_error(tmp_path, capsys):
    p = tmp_path / "r.toml"
    p.write_text('name="x"\n[model]\narch="cnn1d"\nwidth=3\n[data]\ndataset="mnist1d"\n')
    assert cli.main(["train", str(p)]) == 2
    err = capsys.readouterr().err
    assert "Unknown config key 'model.width'" in err
    assert cli.main(["train", str(tmp_path / "missing.toml")]) == 2
    assert "Config file not found" in capsys.readouterr().err


def test_evaluate_missing_entry(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "No saved model entry" in capsys.readouterr().err


def test_demo_rejects_bad_epochs(capsys):
    assert cli.main(["demo", "--epochs", "0"]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err


def test_demo_study_prints_leaderboard_and_writes_heatmap(tmp_path, capsys):
    """The demo study, cut to 2 trials of 1 epoch (the full one: `make demo`)."""
    import os

    assert cli.main(["demo", "--epochs", "1", "--max-trials", "2",
                     "--directory", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    project = tmp_path / "mnist1d_lambda_norm"
    assert "trial 2/2 done" in out and "| rank | trial | status | val_accuracy |" in out
    assert f"heatmap: {project / 'heatmap.png'}" in out
    assert os.path.getsize(project / "heatmap.png") > 0
    assert (project / "saved_models" / "mnist1d_lambda_norm_best" / "card.json").is_file()
    assert "best trial " in out and "test accuracy" in out


def test_shipped_recipes_validate():
    import glob
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = sorted(glob.glob(os.path.join(root, "zoo", "*.toml")))
    assert paths, "no recipes found in zoo/"
    for path in paths:
        cfg = config.load_recipe(path)
        assert cfg["name"] == os.path.splitext(os.path.basename(path))[0]


# ---- one-line errors, --verbose, train --fresh/--resume ----

def _recipe(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('name="x"\n[model]\narch="cnn1d"\n[data]\ndataset="mnist1d"\n')
    return str(p)


class _Result(dict):
    test_accuracy = 0.5
    test_loss = 1.25
    train_seconds = 0.1


def _fake_train(calls, error=None):
    def train(cfg, **kwargs):
        calls.append(kwargs)
        if error is not None:
            raise error
        return _Result()
    return train


def _one_error_line(err, command="train"):
    assert err.count("\n") == 1, err
    assert err.startswith(f"keras-normreg {command}: error: ")
    assert "Traceback" not in err


@pytest.mark.parametrize("flags, mode", [([], "auto"), (["--fresh"], "fresh"),
                                         (["--resume"], "resume")])
def test_train_passes_the_resume_mode(tmp_path, monkeypatch, capsys, flags, mode):
    from keras_normreg import train

    calls = []
    monkeypatch.setattr(train, "train", _fake_train(calls))
    assert cli.main(["train", _recipe(tmp_path), *flags]) == 0
    assert calls == [{"save": True, "command": f"keras-normreg train {_recipe(tmp_path)}",
                      "resume": mode}]
    assert "test accuracy: 0.5000  test loss: 1.2500" in capsys.readouterr().out


def test_fresh_and_resume_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", _recipe(tmp_path), "--fresh", "--resume"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_train_help_explains_the_resume_modes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--fresh" in out and "--resume" in out
    assert "resumes by default (auto)" in out and "different recipe is refused" in out


@pytest.mark.parametrize("error, code", [
    (ValueError("Config key 'x' is bad.\nsecond line. Received: x=1"), 2),
    (OSError(28, "No space left on device"), 2),
    (FileNotFoundError("nothing at 'p'. Received: path='p'"), 2),
])
def test_user_errors_are_one_line(tmp_path, monkeypatch, capsys, error, code):
    from keras_normreg import train

    monkeypatch.setattr(train, "train", _fake_train([], error))
    assert cli.main(["train", _recipe(tmp_path)]) == code
    err = capsys.readouterr().err
    _one_error_line(err)
    assert str(error).splitlines()[0] in err


def test_lock_error_is_one_line(tmp_path, monkeypatch, capsys):
    from keras_normreg import train
    from keras_normreg._locks import LockError

    monkeypatch.setattr(train, "train", _fake_train([], LockError("held by pid 12")))
    assert cli.main(["train", _recipe(tmp_path)]) == 2
    err = capsys.readouterr().err
    _one_error_line(err)
    assert "held by pid 12" in err


def test_nan_loss_keeps_exit_3(tmp_path, monkeypatch, capsys):
    from keras_normreg import train

    monkeypatch.setattr(train, "train", _fake_train([], train.NaNLossError("loss is nan")))
    assert cli.main(["train", _recipe(tmp_path)]) == 3
    assert "loss is nan" in capsys.readouterr().err


def test_verbose_reraises(tmp_path, monkeypatch):
    from keras_normreg import train

    monkeypatch.setattr(train, "train", _fake_train([], ValueError("boom")))
    with pytest.raises(ValueError, match="boom"):
        cli.main(["--verbose", "train", _recipe(tmp_path)])
    with pytest.raises(ValueError, match="boom"):
        cli.main(["train", _recipe(tmp_path), "--verbose"])


def test_unexpected_errors_are_not_swallowed(tmp_path, monkeypatch):
    from keras_normreg import train

    monkeypatch.setattr(train, "train", _fake_train([], KeyError("bug")))
    with pytest.raises(KeyError):
        cli.main(["train", _recipe(tmp_path)])


@pytest.mark.parametrize("key, value, words", [
    ("model.arch", '"nope"', ["model.arch", "cnn1d", "Received: model.arch='nope'"]),
    ("data.dataset", '"nope"', ["data.dataset", "mnist1d", "Received: data.dataset='nope'"]),
    ("optimizer.weight_decay", "inf", ["must be a finite number",
                                       "Received: optimizer.weight_decay=inf"]),
    ("optimizer.learning_rate", "nan", ["Received: optimizer.learning_rate=nan"]),
])
def test_bad_recipe_values_before_training(tmp_path, monkeypatch, capsys, key, value, words):
    from keras_normreg import train

    calls = []
    monkeypatch.setattr(train, "train", _fake_train(calls))
    assert cli.main(["train", _recipe(tmp_path), "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err
    _one_error_line(err)
    for w in words:
        assert w in err
    assert calls == []


def test_evaluate_load_error_exits_1(monkeypatch, capsys):
    from keras_normreg import saving

    def fail(*a, **k):
        raise saving.EntryLoadError("e/model.keras: cannot be loaded (BadZipFile: bad)")

    monkeypatch.setattr(saving, "evaluate_saved", fail)
    assert cli.main(["evaluate", "e"]) == 1
    err = capsys.readouterr().err
    _one_error_line(err, "evaluate")
    assert "cannot be loaded" in err


def test_one_line():
    assert cli.one_line(ValueError("a\n  b\n\nc")) == "a b c"
    assert cli.one_line(OSError()) == "OSError"


@pytest.mark.parametrize("flags, target", [
    (["--worker-timeout", "7.5"], "run_study"),
    (["--workers", "2", "--worker-timeout", "7.5"], "run_local"),
])
def test_tune_passes_the_worker_timeout(monkeypatch, flags, target):
    from keras_normreg.tuning import launcher
    from keras_normreg.tuning import study as nr_study

    calls = []

    def fake(*args, **kwargs):
        calls.append(kwargs)
        return 0 if target == "run_local" else {"done": True}

    monkeypatch.setattr(nr_study if target == "run_study" else launcher, target, fake)
    assert cli.main(["tune", "tiny_digits", *flags]) == 0
    assert len(calls) == 1 and calls[0]["worker_timeout"] == 7.5
    if target == "run_study":
        assert "--worker-timeout 7.5" in calls[0]["command"]


def test_study_grokking_is_reached_through_the_cli(capsys):
    """`keras-normreg study grokking` runs experiments.grokking.study.cli; it counts steps, so
    --epochs is refused with a one-line error naming it (nothing is trained)."""
    rc = cli.main(["study", "grokking", "--epochs", "3"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "max_steps" in err and "Received: epochs=3" in err
