"""``model.classifier_activation`` in recipes: the schema, the training path's loss
(``from_logits`` follows the head) and the exact evaluation of a model with probabilities."""

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_normreg import config, evaluate, saving, train, zoo
from tests.test_train import recipe


def test_schema_default_is_unset_and_dumped_as_before(tmp_path):
    cfg = recipe(tmp_path)
    assert cfg["model"]["classifier_activation"] is None
    assert "classifier_activation" not in config.dumps(cfg)  # TOML has no null: left out
    soft = recipe(tmp_path, model={"classifier_activation": "softmax"})
    assert soft["model"]["classifier_activation"] == "softmax"
    assert 'classifier_activation = "softmax"' in config.dumps(soft)
    path = tmp_path / "r.toml"
    path.write_text(config.dumps(soft))
    assert config.load_recipe(path) == soft
    assert config.load_recipe(path, ["model.classifier_activation='linear'"])[
        "model"]["classifier_activation"] == "linear"


@pytest.mark.parametrize("bad", ["sofmax", "", 1])
def test_schema_refuses_bad_values(tmp_path, bad):
    with pytest.raises(config.ConfigError,
                       match=r"Config key 'model.classifier_activation' must be .*Received: "
                             rf"model.classifier_activation={bad!r}$"):
        recipe(tmp_path, model={"classifier_activation": bad})


@pytest.mark.parametrize("activation,from_logits", [(None, True), ("linear", True),
                                                    ("softmax", False)])
def test_build_and_compile_loss_follows_the_head(tmp_path, activation, from_logits):
    # None: the key left out (TOML has no null)
    cfg = recipe(tmp_path, model={} if activation is None else
                 {"classifier_activation": activation})
    with warnings.catch_warnings():
        warnings.simplefilter("error", zoo.LossMismatchWarning)
        model = train.build_and_compile(cfg, steps_per_epoch=10)
    assert isinstance(model, zoo.ZooModel)
    assert model.classifier_activation == (None if activation == "linear" else activation)
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
    assert model.loss.get_config()["from_logits"] is from_logits


def _numpy_cross_entropy(logits, y):
    """Mean -log softmax(logits)[y] in float64."""
    logits = logits.astype(np.float64)
    m = logits.max(-1, keepdims=True)
    log_softmax = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    return -log_softmax[np.arange(len(y)), y].mean()


def test_evaluate_model_of_probabilities_matches_numpy():
    rng = np.random.default_rng(5)
    classes = 5
    keras.utils.set_random_seed(5)
    logits_model = zoo.build_mlp(classes, (4,), units=(6,), norm="none")
    soft = zoo.build_mlp(classes, (4,), units=(6,), norm="none", classifier_activation="softmax")
    soft.set_weights(logits_model.get_weights())
    x = rng.normal(size=(11, 4)).astype("float32")
    y = rng.integers(0, classes, size=11)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)  # 4 + 4 + 3: a partial batch
    got = saving.evaluate_model(soft, ds)
    logits = keras.ops.convert_to_numpy(logits_model(x, training=False))
    correct = int((logits.argmax(-1) == y).sum())
    assert (got["test_examples"], got["test_correct"]) == (11, correct)
    # -log of float32 probabilities: each p carries a relative error <= (C + 4) 2**-24 (shift,
    # exp, a sum of C terms, a division), the division by their sum and the log a few more
    # roundings; -log(p (1 + e)) = -log p - e + O(e^2), so |error| <= (C + 8) 2**-24 per
    # example and on the mean (no probability here is near the 1e-7 clip)
    assert keras.ops.convert_to_numpy(soft(x)).min() > 1e-4
    np.testing.assert_allclose(got["test_loss"], _numpy_cross_entropy(logits, y), rtol=0,
                               atol=(classes + 8) * 2.0**-24)
    # and the logits model's own evaluation is the same number within that bound
    ref = saving.evaluate_model(logits_model, ds)
    assert ref["test_correct"] == correct
    np.testing.assert_allclose(ref["test_loss"], got["test_loss"], rtol=0,
                               atol=2 * (classes + 8) * 2.0**-24)


@pytest.mark.slow  # ~45 s on 2 loaded cores: a whole training, its entry and re-evaluation
def test_train_a_softmax_recipe_end_to_end(tmp_path):
    cfg = recipe(tmp_path, model={"classifier_activation": "softmax"},
                 data={"train_split": "train[:512]"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", zoo.LossMismatchWarning)
        result = train.train(cfg, run_dir=str(tmp_path / "run"), command="pytest")
    model = result.model
    assert model.classifier_activation == "softmax"
    # it trained: the loss (cross-entropy of the probabilities) fell from the first epoch
    history = result.history["loss"]
    assert history[-1] < history[0], history
    entry = tmp_path / "saved" / "t_digits"
    card = json.loads((entry / "card.json").read_text())
    assert card["recipe"]["model"]["classifier_activation"] == "softmax"
    # the card's loss is the cross-entropy of the model's logits (the head's input), NumPy
    logits_of = keras.Model(model.inputs, model.get_layer(zoo._model.HEAD_NAME).input)
    from keras_normreg import data

    x, y = data.arrays("digits", cfg["data"]["test_split"])
    logits = keras.ops.convert_to_numpy(logits_of.predict(x, batch_size=64, verbose=0))
    assert card["metrics"]["test_correct"] == int((logits.argmax(-1) == y).sum())
    # see test_evaluate_model_of_probabilities_matches_numpy for the bound (10 classes)
    assert min(keras.ops.convert_to_numpy(model.predict(x, verbose=0)).max(-1)) > 1e-7
    np.testing.assert_allclose(card["metrics"]["test_loss"], _numpy_cross_entropy(logits, y),
                               rtol=0, atol=(10 + 8) * 2.0**-24)
    report = evaluate.evaluate_saved(entry)
    assert report["match"]
    loaded = evaluate.load_saved(entry)
    assert type(loaded) is zoo.ZooModel and loaded.classifier_activation == "softmax"
    assert loaded.loss.get_config()["from_logits"] is False
