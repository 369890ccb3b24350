"""Training from recipes, saved entries with cards, evaluation, resume after a kill."""

import json
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import pytest

from keras_normreg import config, distribute, saving, train
from keras_normreg.tuning.hypermodel import NormRegHyperModel


def recipe(tmp_path, **sections):
    tmp_path = Path(tmp_path)
    raw = {
        "name": "t_digits",
        "model": {"arch": "cnn_digits", "norm": "batch", "overrides": {"widths": [8, 16]}},
        "data": {"dataset": "digits", "batch_size": 64, "data_dir": str(tmp_path / "tfds")},
        "optimizer": {"name": "sgd", "learning_rate": 0.05},
        "schedule": {"kind": "constant"},
        "train": {"epochs": 2, "verbose": 0, "output_dir": str(tmp_path / "saved")},
    }
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return config.resolve(raw)


def test_schedules_match_formulas():
    cfg = recipe("/tmp", schedule={"kind": "cosine", "final_fraction": 0.1},
                 train={"epochs": 10})
    s = train.build_schedule(cfg, steps_per_epoch=10)
    lr = cfg["optimizer"]["learning_rate"]
    for step in (0, 25, 50, 99):
        expected = lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / 100)))
        np.testing.assert_allclose(float(s(step)), expected, rtol=1e-5)
    cfg = recipe("/tmp", schedule={"kind": "step", "boundaries": [2.0, 5.0], "factor": 0.1},
                 train={"epochs": 10})
    s = train.build_schedule(cfg, steps_per_epoch=10)
    np.testing.assert_allclose([float(s(x)) for x in (0, 19, 20, 49, 50, 99)],
                               [lr, lr, lr * 0.1, lr * 0.1, lr * 0.01, lr * 0.01], rtol=1e-6)
    cfg = recipe("/tmp", schedule={"kind": "constant", "warmup_epochs": 1.0})
    s = train.build_schedule(cfg, steps_per_epoch=10)
    # linear warmup from lr/10 to lr over 10 steps, then constant
    np.testing.assert_allclose(float(s(0)), lr / 10, rtol=1e-5)
    np.testing.assert_allclose(float(s(5)), lr / 10 + (lr - lr / 10) * 0.5, rtol=1e-5)
    np.testing.assert_allclose(float(s(50)), lr, rtol=1e-5)
    assert train.build_schedule(recipe("/tmp"), 10) == lr


def test_plain_optimizer_with_weight_decay_is_rejected():
    cfg = recipe("/tmp", optimizer={"name": "adam", "weight_decay": 1e-4})
    with pytest.raises(ValueError, match=r"use 'sgdw' or 'adamw'.*Received: optimizer.weight_decay"):
        train.build_optimizer(cfg, 10)


def test_train_save_card_and_evaluate(tmp_path):
    cfg = recipe(tmp_path)
    result = train.train(cfg, run_dir=str(tmp_path / "run"), command="pytest")
    entry = tmp_path / "saved" / "t_digits"
    assert result.path == str(entry)
    card = json.loads((entry / "card.json").read_text())
    assert card["sha256"] == train.file_sha256(str(entry / "model.keras"))
    assert card["metrics"]["test_examples"] == 360
    assert card["metrics"]["test_accuracy"] == card["metrics"]["test_correct"] / 360
    assert card["parameters"] == result.model.count_params()
    assert card["versions"]["keras"] == keras.__version__
    assert card["hardware"]["jit_compile"] is result.model.jit_compile
    assert card["command"] == "pytest"
    assert config.load_recipe(entry / "recipe.toml") == cfg
    report = saving.evaluate_saved(entry)
    assert report["match"]
    assert report["measured"]["test_correct"] == card["metrics"]["test_correct"]

    # a corrupted model file is detected before loading
    with open(entry / "model.keras", "ab") as f:
        f.write(b"junk")
    with pytest.raises(saving.ChecksumError, match="does not match the card"):
        saving.load_saved(entry)


def test_seed_zero_trains(tmp_path):
    # train.seed = 0 sets TensorFlow's global seed to 0 before the tf.data epoch streams are
    # built, which used to fail in tf.data's seed handling (tests/data/test_pipelines.py)
    cfg = recipe(tmp_path, train={"seed": 0, "epochs": 1})
    result = train.train(cfg, run_dir=str(tmp_path / "run"), save=False)
    assert len(result.history["loss"]) == 1 and np.isfinite(result.history["loss"][0])
    assert 0.0 <= result.test_accuracy <= 1.0


def test_card_errors(tmp_path):
    entry = tmp_path / "e"
    entry.mkdir()
    (entry / "model.keras").write_bytes(b"x")
    with pytest.raises(saving.CardError, match="card.json is missing"):
        saving.load_card(entry)
    (entry / "card.json").write_text("{not json")
    with pytest.raises(saving.CardError, match="not valid JSON"):
        saving.load_card(entry)
    (entry / "card.json").write_text(json.dumps({"name": "e"}))
    with pytest.raises(saving.CardError, match="lacks required keys"):
        saving.load_card(entry)
    with pytest.raises(FileNotFoundError, match="No saved model entry"):
        saving.find_entry(tmp_path / "nope")


def test_metric_mismatch_detected(tmp_path):
    cfg = recipe(tmp_path, train={"epochs": 1})
    train.train(cfg, run_dir=str(tmp_path / "run"))
    entry = tmp_path / "saved" / "t_digits"
    card = json.loads((entry / "card.json").read_text())
    card["metrics"]["test_accuracy"] = min(1.0, card["metrics"]["test_accuracy"] + 0.01)
    (entry / "card.json").write_text(json.dumps(card))
    with pytest.raises(saving.MetricMismatchError, match="the card says"):
        saving.evaluate_saved(entry)
    assert not saving.evaluate_saved(entry, strict=False)["match"]


class _Kill(keras.callbacks.Callback):
    """Simulates a killed process: raises after `at` epochs have finished."""

    def __init__(self, at):
        super().__init__()
        self.at = at
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.at:
            raise KeyboardInterrupt("killed")


def test_killed_run_resumes_from_last_epoch(tmp_path):
    cfg = recipe(tmp_path, train={"epochs": 4})
    run_dir = str(tmp_path / "run")
    killer = _Kill(at=2)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, run_dir=run_dir, callbacks=[killer], save=False)
    assert killer.seen == [0, 1]
    state = json.loads((Path(run_dir) / "state.json").read_text())  # the run state, epoch 2
    assert state["epochs_done"] == 2 and len(state["history"]["loss"]) == 2
    watcher = _Kill(at=-1)
    result = train.train(cfg, run_dir=run_dir, callbacks=[watcher], save=False)
    assert watcher.seen == [2, 3]  # resumed at epoch 2, did not start over
    # the result keeps the whole history (2 epochs before the kill + 2 after) and says so
    assert len(result.history["loss"]) == 4
    assert result.history["loss"][:2] == state["history"]["loss"]
    assert result.resumed_at_epoch == [2]
    assert not (Path(run_dir) / "state.json").exists()  # a finished run leaves no state


def test_nan_loss_stops_with_clear_message(tmp_path):
    cfg = recipe(tmp_path, model={"norm": "none"}, optimizer={"learning_rate": 1e30},
                 train={"epochs": 3})
    with pytest.raises(train.NaNLossError, match="Lower optimizer.learning_rate"):
        train.train(cfg, run_dir=str(tmp_path / "run"), save=False)


# -- the one data-and-compile path (train and the tuner's trials) ---------------------------------
class _TwoReplicas:
    """Stands in for a 2-replica strategy where only the replica count matters."""

    num_replicas_in_sync = 2


def test_prepare_data_streams_and_steps(tmp_path):
    cfg = recipe(tmp_path, data={"train_split": "train[:129]", "validation_split": "train[-70:]"})
    data = train.prepare_data(cfg)
    assert (data.num_examples, data.steps, data.val_steps) == (129, 3, 2)  # ceil(129/64), ceil(70/64)
    sizes = [int(y.shape[0]) for _, y in data.train.take(2 * data.steps)]
    assert sizes == [64, 64, 1] * 2  # endless: every epoch holds each example once
    assert sum(int(y.shape[0]) for _, y in data.val.take(data.val_steps)) == 70
    assert train.prepare_data(recipe(tmp_path)).val is None


def test_prepare_data_replicas(tmp_path, monkeypatch):
    monkeypatch.setattr(distribute, "distribute_batches", lambda strategy, ds: ds)
    cfg = recipe(tmp_path, data={"train_split": "train[:129]"})
    # 129 = 64 + 64 + 1: the last batch has fewer examples than the 2 replicas and is dropped
    assert train.prepare_data(cfg, _TwoReplicas()).steps == 2
    cfg = recipe(tmp_path, data={"batch_size": 63})
    with pytest.raises(ValueError, match=r"must be a multiple of the 2 replicas .*"
                                         r"Received: data.batch_size=63"):
        train.prepare_data(cfg, _TwoReplicas())
    cfg = recipe(tmp_path, data={"validation_split": "train[:1]"})
    with pytest.raises(ValueError, match=r"fewer examples than the 2 replicas. Received: "
                                         r"data.train_split='train', "
                                         r"data.validation_split='train\[:1\]'"):
        train.prepare_data(cfg, _TwoReplicas())


def test_build_and_compile(tmp_path):
    cfg = recipe(tmp_path)
    model = train.build_and_compile(cfg, steps_per_epoch=10)
    # "auto" (the default) is Keras' rule: no XLA for TensorFlow on a CPU-only machine
    assert cfg["train"]["jit_compile"] == "auto"
    assert model.compiled and model.jit_compile is False
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
    assert model.loss.get_config()["from_logits"] is True
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)
    again = train.build_and_compile(cfg, steps_per_epoch=10)  # seeded from train.seed
    for a, b in zip(model.weights, again.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_build_and_compile_loss_scale_rule(tmp_path):
    cfg = recipe(tmp_path, train={"mixed_precision": True})
    previous = keras.mixed_precision.global_policy().name
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        scaled = train.build_and_compile(cfg, 10).optimizer
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        plain = train.build_and_compile(cfg, 10).optimizer
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    assert not isinstance(plain, keras.optimizers.LossScaleOptimizer)


def test_hypermodel_uses_the_same_path(tmp_path):
    hm = NormRegHyperModel("cnn_digits", "digits", {"norms": ["batch"], "decay": ["none"]},
                           base={"model": {"overrides": {"widths": [4]}},
                                 "data": {"batch_size": 64, "data_dir": str(tmp_path / "tfds")}})
    data = train.prepare_data(hm.base)
    assert (hm.data().steps, hm.data().val_steps, hm.data().num_examples) == \
        (data.steps, data.val_steps, data.num_examples)
    hp = kt.HyperParameters()
    model = hm.build(hp)
    ref = train.build_and_compile(hm.recipe(hp), data.steps)
    assert type(model.optimizer) is type(ref.optimizer)
    for a, b in zip(model.weights, ref.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_token_dataset_sets_the_models_vocabulary():
    """A token dataset's vocabulary (modular arithmetic mod p: p + 2 ids) reaches the models
    that embed ids; an explicit override wins."""
    from keras_normreg import config, train

    def embedding_rows(dataset, overrides=None):
        raw = {"name": "x", "model": {"arch": "gpt_modular", "norm": "layer",
                                      "overrides": {"width": 8, "heads": 2, **(overrides or {})}},
               "data": {"dataset": dataset, "test_split": "train[50%:]"}}
        model = train.build_model(config.resolve(raw), num_classes=11)
        return model.get_layer("token_embedding").input_dim

    assert embedding_rows("modular_add/p_11") == 13
    assert embedding_rows("modular_add/p_11", {"vocab_size": 20}) == 20
