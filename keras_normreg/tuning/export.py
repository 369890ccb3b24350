"""The end of a study: the best trial's model tested once and saved as an entry.

:func:`export_best` evaluates the best trial's model (the weights of its best epoch) on the
test split once and saves it under ``<output.export_dir>/<output.export_name>/``
(``model.keras``, ``card.json`` with the test accuracy and the trial's point, ``recipe.toml``).
:func:`export_study` is the study's last step: it exports unless a finished study's best trial
was already exported (:func:`exported_trial`), and says what it did.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Mapping

from keras_normreg import _compat, saving
from keras_normreg import config as nr_config
from keras_normreg.tuning import space as nr_space
from keras_normreg.tuning.tuner import RECIPE_FILE, RESULT_FILE

__all__ = ["export_best", "export_study", "exported_trial"]


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def export_best(tuner, spec: Mapping, *, command: str | None = None, out=None) -> dict | None:
    """Evaluate the best trial's model on the test split once and save it with a card.

    The weights are those of the trial's best epoch (by the objective). Returns
    ``{"path", "trial_id", "metrics"}`` or None when there is nothing to export.
    """
    out = out or sys.stdout
    running = sorted(t.trial_id for t in tuner.oracle.ongoing_trials.values())
    if running:
        print(f"trial(s) {', '.join(running)} still running: export skipped (their files are "
              "being written; run the study again once they have ended)", file=out)
        return None
    best = [t for t in tuner.oracle.get_best_trials(1) if t.status == "COMPLETED"]
    if not best:
        print("no completed trial: nothing to export", file=out)
        return None
    trial = best[0]
    ckpt = _compat.tuner_checkpoint_path(tuner, trial.trial_id)
    if not os.path.isfile(ckpt):
        print(f"best trial {trial.trial_id}: no checkpoint at {ckpt} (workers on other machines "
              "need a shared --directory); export skipped", file=out)
        return None
    trial_dir = tuner.get_trial_dir(trial.trial_id)
    result_path = os.path.join(trial_dir, RESULT_FILE)
    result = _read_json(result_path) if os.path.isfile(result_path) else {}
    if result and result.get("trial_id") != trial.trial_id:
        print(f"best trial {trial.trial_id}: {result_path} belongs to trial "
              f"{result.get('trial_id')!r}; export skipped", file=out)
        return None
    name = spec["output"]["export_name"]
    tuner.hypermodel.seed_offset = 0
    with warnings.catch_warnings():
        # the checkpoint holds the optimizer state too; only the weights matter here
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model = tuner.load_model(trial)
    # saved with a built (zero) optimizer state, so that loading it matches variable for variable
    model.optimizer.build(model.trainable_variables)
    recipe_path = os.path.join(trial_dir, RECIPE_FILE)
    cfg = (nr_config.load_recipe(recipe_path) if os.path.isfile(recipe_path)
           else tuner.hypermodel.recipe(trial.hyperparameters))
    cfg["name"] = name
    obj = spec["objective"]["name"]
    cfg["description"] = (f"Best trial {trial.trial_id} of study {spec['name']!r} "
                          f"({obj} {trial.score:.4f}). {spec['description']}").strip()
    d = cfg["data"]
    test = saving.evaluation_batches(d["dataset"], d["test_split"], d["batch_size"],
                                     data_dir=d["data_dir"], download=d["download"],
                                     autotune=d["autotune"])
    metrics = saving.evaluate_model(model, test)
    runs = result.get("executions") or [{}]
    strategy = tuner.distribution_strategy or tuner.hypermodel.strategy
    out_dir = os.path.join(spec["output"]["export_dir"], name)
    tuning = {
        "study": spec["name"], "trial_id": trial.trial_id, "objective": obj,
        "score": trial.score, "best_epoch": trial.best_step,
        "weights": "best epoch of the trial by the objective",
        "point": nr_space.decode(trial.hyperparameters.values),
        "study_dir": tuner.project_dir,
    }
    saving.save_entry(model, cfg, metrics, result.get("seconds", 0.0), strategy, out_dir,
                      command=command, history=runs[-1].get("history", {}), tuning=tuning)
    return {"path": out_dir, "trial_id": trial.trial_id, "metrics": metrics}



def exported_trial(spec: Mapping, tuner) -> str | None:
    """The trial id of the study's export when it is this study's current best trial (the
    card's ``tuning`` block), else None."""
    card_path = os.path.join(spec["output"]["export_dir"], spec["output"]["export_name"],
                             "card.json")
    best = [t for t in tuner.oracle.get_best_trials(1) if t.status == "COMPLETED"]
    if not best or not os.path.isfile(card_path):
        return None
    try:
        tuning = _read_json(card_path).get("tuning") or {}
    except (OSError, ValueError):
        return None
    if tuning.get("study") == spec["name"] and tuning.get("trial_id") == best[0].trial_id and \
            os.path.abspath(tuning.get("study_dir", "")) == os.path.abspath(tuner.project_dir):
        return best[0].trial_id
    return None


def export_study(tuner, spec: Mapping, *, finished: bool, command: str | None = None,
                 out=None) -> dict | None:
    """Export the best trial (:func:`export_best`) and print where it went, unless the study was
    ``finished`` before this run and its best trial is already the export
    (:func:`exported_trial`): then say so and return None."""
    out = out or sys.stdout
    already = exported_trial(spec, tuner) if finished else None
    if already is not None:
        print(f"best trial {already}: already exported to "
              f"{os.path.join(spec['output']['export_dir'], spec['output']['export_name'])}",
              file=out, flush=True)
        return None
    exported = export_best(tuner, spec, command=command, out=out)
    if exported:
        m = exported["metrics"]
        print(f"best trial {exported['trial_id']}: test accuracy "
              f"{m['test_accuracy']:.4f} ({m['test_correct']}/{m['test_examples']}), "
              f"test loss {m['test_loss']:.4f} -> {exported['path']}/model.keras "
              "(+ card.json, recipe.toml)", file=out, flush=True)
    return exported
