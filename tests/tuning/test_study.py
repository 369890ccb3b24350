"""Running studies in this process: reports, export, resume, CLI, hyperband, error messages."""

import io
import json
import os

import pytest

from experiments import compare
from keras_normreg import cli, config, saving
from keras_normreg.tuning import launcher, study
from keras_normreg.tuning import spec as nr_spec

from .conftest import read_trials, write_tiny_spec

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_run_export_and_resume(tmp_path, tiny_spec_path):
    out = io.StringIO()
    r = study.run_study(tiny_spec_path, max_trials=3, out=out)
    text = out.getvalue()
    assert r["done"] == r["budget"] == 3
    assert "study tiny_digits: 0/3 trials done" in text
    for k in (1, 2, 3):
        assert text.count(f"trial {k}/3 done, best val_accuracy ") == 1
    project = r["project_dir"]
    assert project == str(tmp_path / "runs" / "tiny_digits")
    trials = read_trials(project)
    assert len(trials) == 3 and all(t["status"] == "COMPLETED" for t in trials.values())
    # per-trial records: the resolved recipe (a valid recipe) and the training result
    for tid, t in trials.items():
        cfg = config.load_recipe(os.path.join(project, f"trial_{tid}", "recipe.toml"))
        assert cfg["model"]["norm"] == t["hyperparameters"]["values"]["norm"]
        with open(os.path.join(project, f"trial_{tid}", "result.json")) as f:
            res = json.load(f)
        assert res["executions"][0]["epochs"] == 1 and res["tuner_id"] == "tuner0"
        assert max(res["executions"][0]["history"]["val_accuracy"]) == pytest.approx(t["score"])
    # reports
    rep = r["reports"]
    for key in ("markdown", "csv", "heatmap"):
        assert os.path.isfile(rep[key])
    assert "trials done: 3/3" in open(rep["markdown"]).read()
    best = max(trials.values(), key=lambda t: (t["score"], -int(t["trial_id"])))
    assert r["best"]["trial"] == rep["rows"][0]["trial"]
    assert rep["rows"][0]["score"] == best["score"]
    # export: the best trial, tested once, re-evaluates exactly from its card
    exp = r["export"]
    assert exp["path"] == str(tmp_path / "saved_models" / "tiny_digits_best")
    with open(os.path.join(exp["path"], "card.json")) as f:
        card = json.load(f)
    assert card["tuning"]["trial_id"] == r["best"]["trial"]
    assert card["tuning"]["score"] == r["best"]["score"]
    assert card["metrics"]["test_examples"] == 360 and card["name"] == "tiny_digits_best"
    assert saving.evaluate_saved(exp["path"])["match"]
    assert f"-> {exp['path']}/model.keras" in text

    # resume: same directory, larger budget -> only the new trials run
    scores = {tid: t["score"] for tid, t in trials.items()}
    out = io.StringIO()
    r2 = study.run_study(tiny_spec_path, max_trials=4, export=False, out=out)
    text = out.getvalue()
    assert "study tiny_digits: 3/4 trials done" in text and "(resuming" in text
    assert text.count(" started") == 1 and "trial 4/4 done" in text
    assert r2["done"] == 4 and r2["export"] is None
    again = read_trials(project)
    assert len(again) == 4
    assert {tid: again[tid]["score"] for tid in scores} == scores

    # a finished study: nothing runs, the reports are rewritten
    out = io.StringIO()
    r3 = study.run_study(tiny_spec_path, max_trials=4, export=False, out=out)
    assert r3["done"] == 4 and " started" not in out.getvalue()


def test_cli_tune_grid_then_overwrite(tmp_path, capsys):
    path = write_tiny_spec(tmp_path, tuner={"kind": "grid"}, space={"norms": ["batch"],
                                                                    "decay": ["none", "decoupled"],
                                                                    "lambda": [1e-3]},
                           output={"export": False})
    assert cli.main(["tune", path]) == 0
    text = capsys.readouterr().out
    assert "trial 2/2 done" in text and "heatmap: " in text and "| rank |" in text
    project = str(tmp_path / "runs" / "tiny_digits")
    first = read_trials(project)
    assert sorted((t["hyperparameters"]["values"]["decay"]) for t in first.values()) == \
        ["decoupled", "none"]
    assert cli.main(["tune", path, "--overwrite", "--max-trials", "1"]) == 0
    text = capsys.readouterr().out
    assert "0/1 trials done" in text and len(read_trials(project)) == 1


def test_hyperband_budget_matchesread_trials(tmp_path):
    path = write_tiny_spec(tmp_path, tuner={"kind": "hyperband", "factor": 2},
                           budget={"max_epochs": 2}, output={"export": False},
                           space={"norms": ["none", "batch"], "decay": ["decoupled"],
                                  "lambda": {"min": 1e-5, "max": 1e-2}})
    out = io.StringIO()
    r = study.run_study(path, out=out)
    # max_epochs 2, factor 2: bracket 1 runs 2 trials of 1 epoch then the best for 2 epochs,
    # bracket 0 runs 2 trials of 2 epochs -> 5 trials
    assert r["budget"] == 5 and r["done"] == 5
    epochs = sorted(t["hyperparameters"]["values"]["tuner/epochs"]
                    for t in read_trials(r["project_dir"]).values())
    assert epochs == [1, 1, 2, 2, 2]


def test_training_objective_scores_a_point(tmp_path, tiny_spec_path):
    spec = nr_spec.load_study(tiny_spec_path)
    f = compare.training_objective(spec)
    score = f({"norm": "batch", "decay": "decoupled", "learning_rate": 0.05, "lambda": 1e-3,
               "eta_lambda": 5e-5})
    assert 0.0 <= score <= 1.0


# -- errors -------------------------------------------------------------------------------------
def test_role_errors(tiny_spec_path):
    with pytest.raises(ValueError, match=r"A worker never overwrites the study"):
        study.run_study(tiny_spec_path, role="worker", oracle="127.0.0.1:1", overwrite=True)
    with pytest.raises(ValueError, match=r"--role chief needs --oracle HOST:PORT"):
        study.run_study(tiny_spec_path, role="chief")
    with pytest.raises(ValueError, match=r"need --role chief\|worker"):
        study.run_study(tiny_spec_path, oracle="127.0.0.1:5000")


@pytest.mark.parametrize("address", ["localhost", "h:0", "h:port", ":80", "a:b:1"])
def test_parse_address_errors(address):
    with pytest.raises(ValueError, match=r"HOST:PORT.*Received: oracle="):
        launcher.parse_address(address)


def test_tuner_environment_sets_and_restores(monkeypatch):
    for k in launcher.ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    with launcher.tuner_environment("worker", "127.0.0.1:7001", "tuner3"):
        assert os.environ["KERASTUNER_TUNER_ID"] == "tuner3"
        assert os.environ["KERASTUNER_ORACLE_IP"] == "127.0.0.1"
        assert os.environ["KERASTUNER_ORACLE_PORT"] == "7001"
    assert not any(k in os.environ for k in launcher.ENV_KEYS)
    with launcher.tuner_environment("chief", "127.0.0.1:7001"):
        assert os.environ["KERASTUNER_TUNER_ID"] == "chief"
    with pytest.raises(ValueError, match=r"must not contain 'chief'"), \
            launcher.tuner_environment("worker", "127.0.0.1:7001", "chief2"):
        pass


def test_missing_distributed_dependencies_are_named(monkeypatch, tiny_spec_path, capsys):
    real = launcher.importlib.util.find_spec
    monkeypatch.setattr(launcher.importlib.util, "find_spec",
                        lambda name, *a: None if name == "grpc" else real(name, *a))
    with pytest.raises(launcher.DistributedDependencyError,
                       match=r"needs grpcio .*keras_normreg\[distributed\]"):
        launcher.check_distributed_dependencies()
    assert cli.main(["tune", tiny_spec_path, "--workers", "2"]) == 2
    assert "Distributed tuning needs grpcio" in capsys.readouterr().err


def test_cli_tune_argument_errors(tiny_spec_path, capsys):
    assert cli.main(["tune", tiny_spec_path, "--workers", "2", "--role", "chief"]) == 2
    assert "does not combine with --role" in capsys.readouterr().err
    assert cli.main(["tune", tiny_spec_path, "--workers", "0"]) == 2
    assert "Received: workers=0" in capsys.readouterr().err
    assert cli.main(["tune", tiny_spec_path, "--max-trials", "0"]) == 2
    assert "Received: max_trials=0" in capsys.readouterr().err
    assert cli.main(["tune", "no_such_study"]) == 2
    assert "Study spec not found" in capsys.readouterr().err
