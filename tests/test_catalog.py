"""The static catalog behind `keras-normreg list` and the entry module keras_normreg_cli.

`list` is answered from keras_normreg/catalog.json without importing keras_normreg, Keras or
TensorFlow; the catalog must equal what the live registries say (`make catalog` rewrites it).
"""

import json
import os
import subprocess
import sys

import pytest

import keras_normreg_cli
from keras_normreg import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", **extra)
    env.setdefault("KERAS_BACKEND", "tensorflow")
    return env


def test_committed_catalog_matches_the_registries():
    with open(cli.CATALOG_PATH, encoding="utf-8") as f:
        committed = f.read()
    live = cli.catalog_text(cli.catalog())
    assert committed == live, ("keras_normreg/catalog.json is stale (a model or dataset was "
                               "added, removed or changed): run `make catalog`")


def test_catalog_is_found_without_importing_the_package():
    assert keras_normreg_cli.catalog_path() == cli.CATALOG_PATH


def test_list_lines_format():
    # written out by hand: name padded to 16, family to 10; datasets with shape, classes, splits
    cat = {"models": [{"name": "cnn1d", "family": "cnn", "description": "a net"}],
           "datasets": [{"name": "mnist1d", "input_shape": [40, 1], "classes": 10,
                         "splits": {"train": 4000, "test": 1000}}]}
    models = ["models:", "  cnn1d            cnn        a net"]
    datasets = ["datasets:", "  mnist1d          input=(40, 1) classes=10 train=4000, test=1000"]
    assert cli.list_lines(cat, "models") == models
    assert cli.list_lines(cat, "datasets") == datasets
    assert cli.list_lines(cat) == models + datasets


@pytest.mark.parametrize("what", ["models", "datasets", "all"])
def test_static_lines_are_the_formatters(what):
    # keras_normreg_cli prints the lines stored in the catalog; they are cli.list_lines' own
    with open(cli.CATALOG_PATH, encoding="utf-8") as f:
        static = json.load(f)
    live = cli.catalog()
    assert keras_normreg_cli.list_lines(static, what) == cli.list_lines(live, what)


def test_catalog_content_against_the_registries():
    from keras_normreg import data, zoo

    with open(cli.CATALOG_PATH, encoding="utf-8") as f:
        cat = json.load(f)
    assert [m["name"] for m in cat["models"]] == zoo.list_models()
    assert cat["models"][0]["family"] == zoo.get_spec(cat["models"][0]["name"]).family
    by_name = {d["name"]: d for d in cat["datasets"]}
    assert by_name["mnist1d"]["input_shape"] == [40, 1]
    assert by_name["digits"]["classes"] == 10
    assert by_name["mnist1d"]["splits"] == dict(data.info("mnist1d").splits)


def test_write_catalog_is_what_the_test_compares(tmp_path):
    path = cli.write_catalog(str(tmp_path / "catalog.json"))
    with open(path, encoding="utf-8") as f:
        assert f.read() == cli.catalog_text(cli.catalog())


def test_list_imports_neither_keras_nor_tensorflow():
    code = ("import sys, keras_normreg_cli\n"
            "rc = keras_normreg_cli.main(['list'])\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'keras', 'tensorflow', 'keras_normreg', 'jax', 'torch'})\n"
            "print('HEAVY', heavy, rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(), timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY [] 0" in proc.stdout
    assert proc.stdout.replace("HEAVY [] 0\n", "") == "\n".join(cli.list_lines(cli.catalog())) + "\n"
    assert proc.stderr == ""


@pytest.mark.parametrize("what", ["models", "datasets"])
def test_list_what_from_the_module(what):
    proc = subprocess.run([sys.executable, "-m", "keras_normreg_cli", "list", what],
                          capture_output=True, text=True, env=_env(), timeout=60, cwd=ROOT)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.splitlines() == cli.list_lines(cli.catalog(), what)


def test_prepare_environment():
    env = keras_normreg_cli.prepare_environment(["train", "r.toml", "--backend", "jax"], {})
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "jax"}
    env = keras_normreg_cli.prepare_environment(["--verbose", "evaluate", "x",
                                                 "--backend=torch"], {})
    assert env == {"KERAS_BACKEND": "torch"}
    env = keras_normreg_cli.prepare_environment(["tune", "s.toml"], {"TF_CPP_MIN_LOG_LEVEL": "1"})
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "1"}  # the user's own setting wins
    # a bad backend is left for argparse to refuse with its list of choices
    assert "KERAS_BACKEND" not in keras_normreg_cli.prepare_environment(
        ["train", "r", "--backend", "theano"], {})


def test_import_quietly_filters_only_the_known_startup_lines(tmp_path, capfd, monkeypatch):
    (tmp_path / "noisy_mod_for_test.py").write_text(
        "import os\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are "
        "written to STDERR\\n')\n"
        "os.write(2, b'I0000 00:00:1.1 1 port.cc:153] oneDNN custom operations are on. You may "
        "see slightly different numerical results\\n')\n"
        "os.write(2, b'a real warning\\n')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = keras_normreg_cli._import_quietly("noisy_mod_for_test")
    assert module.__name__ == "noisy_mod_for_test"
    err = capfd.readouterr().err
    assert err == "a real warning\n"


def test_import_quietly_replays_everything_on_failure(tmp_path, capfd, monkeypatch):
    (tmp_path / "broken_mod_for_test.py").write_text(
        "import os\nos.write(2, b'WARNING: All log messages before absl::InitializeLog() is "
        "called are written to STDERR\\n')\nraise ImportError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="boom"):
        keras_normreg_cli._import_quietly("broken_mod_for_test")
    assert "absl::InitializeLog" in capfd.readouterr().err


def test_other_commands_start_quietly(tmp_path):
    """No oneDNN/absl start-up lines on stderr (TF 2.21 prints them whatever
    TF_CPP_MIN_LOG_LEVEL says); the entry module filters them."""
    env = _env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    proc = subprocess.run([sys.executable, "-m", "keras_normreg_cli", "train",
                           os.path.join(ROOT, "zoo", "mnist1d_cnn1d_batch.toml"),
                           "--print-config"], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert 'name = "mnist1d_cnn1d_batch"' in proc.stdout
    assert "oneDNN" not in proc.stderr and "absl" not in proc.stderr, proc.stderr
