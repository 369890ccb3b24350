"""``classifier_activation`` on every zoo family, and the loss check of ``ZooModel.compile``.

A zoo model returns logits unless built with ``classifier_activation`` (keras.applications'
argument; ``"softmax"``: probabilities). Compiling a logits model with a loss that expects
probabilities warns (:class:`zoo.LossMismatchWarning`) with the fix, and so does the reverse
(an output activation and ``from_logits=True``). Backend-agnostic (keras.ops / NumPy only).
"""

import os
import re
import warnings

import keras
import numpy as np
import pytest

from keras_normreg import zoo
from keras_normreg.zoo import registry
from keras_normreg.zoo._model import HEAD_NAME

#: One cheap model per family (overrides keep every build small).
SMALL = {
    "mlp": ("mlp", {"units": (8,)}),
    "cnn1d": ("cnn1d", {"widths": (4, 4)}),
    "cnn2d": ("cnn_digits", {"widths": (4,)}),
    "resnet": ("resnet20", {"depth": 8, "width": 4}),
    "preact_resnet": ("preact_resnet18", {"blocks": (1, 1), "width": 4}),
    "vgg": ("vgg11", {"width": 8}),
    "wide_resnet": ("wrn16_4", {"depth": 10, "widen_factor": 1}),
    "transformer": ("vit_digits", {"width": 8, "depth": 1, "heads": 2}),
}
#: Token models and the other heads of the transformer family (ngpt's logit scale, the tied
#: unembedding, per-position logits).
TRANSFORMER_HEADS = [
    ("gpt_modular", {"width": 8, "heads": 2, "ngpt": True}),
    ("gpt_modular", {"width": 8, "heads": 2, "tie_embeddings": True}),
    ("gpt_modular", {"width": 8, "heads": 2, "output": "sequence"}),
]
CASES = [*SMALL.values(), *TRANSFORMER_HEADS]
NUM_CLASSES = 5


def _ids(case):
    name, kw = case
    return "-".join([name, *(k for k in kw if k in ("ngpt", "tie_embeddings", "output"))])


def _inputs(name, n=3, seed=0):
    spec = zoo.get_spec(name)
    rng = np.random.default_rng(seed)
    vocab = spec.defaults.get("vocab_size")
    shape = spec.input_shape
    if len(shape) == 3 and shape[0] > 16:
        shape = (16, 16, shape[2])
    if vocab is not None:
        return rng.integers(0, vocab, size=(n, *shape)).astype("int32"), shape
    return rng.normal(size=(n, *shape)).astype("float32"), shape


def _build(name, kw, shape, activation, seed=7):
    keras.utils.set_random_seed(seed)
    return zoo.create(name, num_classes=NUM_CLASSES, input_shape=shape,
                      classifier_activation=activation, **kw)


def _np(t):
    return np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64)


def test_every_family_is_covered():
    families = {zoo.get_spec(n).family for n in zoo.list_models()}
    assert set(SMALL) == families, "a new zoo family needs a row in SMALL"
    for family, (name, _) in SMALL.items():
        assert zoo.get_spec(name).family == family


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_default_is_logits_and_a_zoo_model(case):
    name, kw = case
    x, shape = _inputs(name)
    model = _build(name, kw, shape, None)
    assert isinstance(model, zoo.ZooModel) and model.classifier_activation is None
    assert HEAD_NAME not in [layer.name for layer in model.layers]
    # "linear" is the same model: no activation layer, identical weights and outputs
    linear = _build(name, kw, shape, "linear")
    assert linear.classifier_activation is None
    assert [layer.name for layer in linear.layers] == [layer.name for layer in model.layers]
    for a, b in zip(model.weights, linear.weights, strict=True):
        np.testing.assert_array_equal(_np(a), _np(b))
    np.testing.assert_array_equal(_np(linear(x, training=False)), _np(model(x, training=False)))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_softmax_head_is_softmax_of_the_logits_model(case):
    name, kw = case
    x, shape = _inputs(name)
    logits_model = _build(name, kw, shape, None)
    softmax_model = _build(name, kw, shape, "softmax", seed=8)  # other initial weights...
    assert softmax_model.classifier_activation == "softmax"
    assert softmax_model.count_params() == logits_model.count_params()
    softmax_model.set_weights(logits_model.get_weights())  # ...then the same ones
    logits = _np(logits_model(x, training=False))
    probs = _np(softmax_model(x, training=False))
    assert probs.shape == logits.shape
    # NumPy reference in float64: softmax over the class axis (the last one)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    expected = e / e.sum(-1, keepdims=True)
    # float32 softmax: the shift (1 rounding), exp (<= 2 ulp), a sum of C terms (<= C ulp) and
    # a division (1 ulp), each relative 2**-24, on values p <= 1, so |error| <= (C + 4) 2**-24;
    # the rows' sums then carry the same bound (sum of p_i (C + 4) 2**-24 with sum p_i = 1)
    bound = (NUM_CLASSES + 4) * 2.0**-24
    np.testing.assert_allclose(probs, expected, rtol=0, atol=bound)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=0, atol=bound)
    assert (probs >= 0).all()


def test_other_activations_and_the_head_layer():
    x, shape = _inputs("mlp")
    logits_model = _build("mlp", {"units": (8,)}, shape, None)
    sigmoid = _build("mlp", {"units": (8,)}, shape, "sigmoid")
    assert sigmoid.classifier_activation == "sigmoid"
    sigmoid.set_weights(logits_model.get_weights())
    logits = _np(logits_model(x, training=False))
    # 1 / (1 + exp(-l)) in float32: a few roundings of relative 2**-24 on values <= 1
    np.testing.assert_allclose(_np(sigmoid(x, training=False)), 1 / (1 + np.exp(-logits)),
                               rtol=0, atol=8 * 2.0**-24)
    head = sigmoid.get_layer(HEAD_NAME)
    assert isinstance(head, keras.layers.Activation) and head.dtype_policy.name == "float32"
    assert sigmoid.layers[-1] is head


def test_builders_take_it_directly():
    model = zoo.build_cnn1d(3, (12, 1), widths=(4,), classifier_activation="softmax")
    assert isinstance(model, zoo.ZooModel) and model.classifier_activation == "softmax"
    model = zoo.build_transformer(3, (8, 1), width=8, heads=2, depth=1, patch_size=2)
    assert isinstance(model, zoo.ZooModel) and model.classifier_activation is None


@pytest.mark.parametrize("activation", [None, "softmax", "sigmoid"])
def test_round_trips_through_get_config_and_keras_file(activation, tmp_path):
    x, shape = _inputs("cnn1d")
    model = _build("cnn1d", {"widths": (4, 4)}, shape, activation)
    again = zoo.ZooModel.from_config(model.get_config())
    assert type(again) is zoo.ZooModel and again.classifier_activation == activation
    path = os.path.join(str(tmp_path), "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is zoo.ZooModel and loaded.classifier_activation == activation
    # the same weights through the same ops: identical outputs
    np.testing.assert_array_equal(_np(loaded(x, training=False)), _np(model(x, training=False)))
    assert [v.path for v in loaded.weights] == [v.path for v in model.weights]


def test_compiled_model_loads_compiled_without_a_warning(tmp_path):
    x, shape = _inputs("cnn1d", n=8)
    y = np.arange(8) % NUM_CLASSES
    model = _build("cnn1d", {"widths": (4, 4)}, shape, None)
    model.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=1, verbose=0)
    path = os.path.join(str(tmp_path), "m.keras")
    model.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither Keras' "compile() was not called" nor ours
        loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.compiled
    assert loaded.loss.get_config()["from_logits"] is True
    # (on PyTorch keras.optimizers.SGD builds its backend subclass: the same class both times)
    assert isinstance(loaded.optimizer, keras.optimizers.SGD)
    assert type(loaded.optimizer) is type(model.optimizer)
    # the optimizer state came back too: its iteration count is the one of the saved model
    assert int(_np(loaded.optimizer.iterations)) == int(_np(model.optimizer.iterations)) == 1


# -- the loss check ---------------------------------------------------------------------------
PROBABILITY_LOSSES = [
    pytest.param("sparse_categorical_crossentropy", "SparseCategoricalCrossentropy",
                 id="str-sparse"),
    pytest.param("categorical_crossentropy", "CategoricalCrossentropy", id="str-categorical"),
    pytest.param("binary_crossentropy", "BinaryCrossentropy", id="str-binary"),
    pytest.param(keras.losses.SparseCategoricalCrossentropy(), "SparseCategoricalCrossentropy",
                 id="obj-sparse"),
    pytest.param(keras.losses.CategoricalCrossentropy(from_logits=False),
                 "CategoricalCrossentropy", id="obj-categorical"),
    pytest.param(keras.losses.BinaryCrossentropy(), "BinaryCrossentropy", id="obj-binary"),
    pytest.param(keras.losses.sparse_categorical_crossentropy, "SparseCategoricalCrossentropy",
                 id="function-sparse"),
    pytest.param("SparseCategoricalCrossentropy", "SparseCategoricalCrossentropy",
                 id="str-class-name"),
    pytest.param(keras.losses.BinaryFocalCrossentropy(), "BinaryFocalCrossentropy",
                 id="obj-binary-focal"),
]
LOGITS_LOSSES = [
    pytest.param(keras.losses.SparseCategoricalCrossentropy(from_logits=True), id="sparse"),
    pytest.param(keras.losses.SparseCategoricalCrossentropy(True), id="sparse-positional"),
    pytest.param(keras.losses.CategoricalCrossentropy(from_logits=True), id="categorical"),
    pytest.param(keras.losses.BinaryCrossentropy(from_logits=True), id="binary"),
]


@pytest.fixture(scope="module")
def models():
    _, shape = _inputs("mlp")
    return {a: _build("mlp", {"units": (4,)}, shape, a) for a in (None, "softmax")}


def _compile_warnings(model, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile(*args, **kwargs)
    return [w for w in caught if issubclass(w.category, zoo.LossMismatchWarning)]


@pytest.mark.parametrize("loss,cls", PROBABILITY_LOSSES)
def test_probability_loss_on_logits_warns_with_the_fix(models, loss, cls):
    activation = "sigmoid" if "Binary" in cls else "softmax"
    message = (rf"Zoo model 'mlp': this model returns logits .*loss=.* expects probabilities "
               rf"\(from_logits=False\), so the model would not train\. Compile with "
               rf"loss=keras\.losses\.{cls}\(from_logits=True\), or build the model with "
               rf"classifier_activation=\"{activation}\"\.$")
    with pytest.warns(zoo.LossMismatchWarning, match=message) as record:
        models[None].compile(optimizer="sgd", loss=loss)
    assert len([w for w in record if w.category is zoo.LossMismatchWarning]) == 1
    # the warning points at the caller's line, not into the zoo or Keras
    assert record[0].filename == __file__


@pytest.mark.parametrize("spelling", ["positional", "list", "dict"])
def test_every_way_of_passing_the_loss_is_checked(models, spelling):
    model = models[None]
    loss = "sparse_categorical_crossentropy"
    if spelling == "positional":
        caught = _compile_warnings(model, "sgd", loss)
    elif spelling == "list":
        caught = _compile_warnings(model, optimizer="sgd", loss=[loss])
    else:
        caught = _compile_warnings(model, optimizer="sgd", loss={model.output_names[0]: loss})
    assert len(caught) == 1 and "from_logits=True" in str(caught[0].message)


@pytest.mark.parametrize("loss", LOGITS_LOSSES)
def test_from_logits_true_on_logits_is_quiet(models, loss):
    assert _compile_warnings(models[None], optimizer="sgd", loss=loss) == []


@pytest.mark.parametrize("loss", [None, "mse", keras.losses.CategoricalHinge(),
                                  lambda y, p: keras.ops.mean(p), "no_such_loss_name"])
def test_losses_without_from_logits_are_not_judged(models, loss):
    model = models[None]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.compile(optimizer="sgd", loss=loss)
        except ValueError as e:  # Keras' own error for an unknown name, unchanged
            assert loss == "no_such_loss_name" and "no_such_loss_name" in str(e)
    assert not [w for w in caught if issubclass(w.category, zoo.LossMismatchWarning)]


@pytest.mark.parametrize("loss,cls", PROBABILITY_LOSSES)
def test_probability_loss_on_a_softmax_model_is_quiet(models, loss, cls):
    assert _compile_warnings(models["softmax"], optimizer="sgd", loss=loss) == []


@pytest.mark.parametrize("loss", LOGITS_LOSSES)
def test_from_logits_on_a_softmax_model_warns(models, loss):
    message = (r"Zoo model 'mlp': this model applies classifier_activation=\"softmax\" to its "
               r"outputs, but loss=.* has from_logits=True .* Compile with from_logits=False, "
               r"or build the model with classifier_activation=None \(logits\)\.$")
    with pytest.warns(zoo.LossMismatchWarning, match=message):
        models["softmax"].compile(optimizer="sgd", loss=loss)


def test_warning_is_a_user_warning_that_can_be_made_an_error(models):
    assert issubclass(zoo.LossMismatchWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", zoo.LossMismatchWarning)
        with pytest.raises(zoo.LossMismatchWarning, match="from_logits=True"):
            models[None].compile(optimizer="sgd", loss="sparse_categorical_crossentropy")


# -- bad values -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["sofmax", "", "Softmax", 3, True, ["softmax"]])
def test_bad_values_name_the_argument_and_the_value(bad):
    message = r"Argument `classifier_activation` .*Received: classifier_activation=" + \
        re.escape(repr(bad)) + "$"
    with pytest.raises(ValueError, match=message):
        zoo.create("mlp", classifier_activation=bad)
    with pytest.raises(ValueError, match=message):
        zoo.build_mlp(3, (4,), classifier_activation=bad)
    with pytest.raises(ValueError, match=message):
        zoo.build_transformer(3, (8, 1), width=8, heads=2, classifier_activation=bad)


def test_not_an_override_and_refused_by_a_builder_without_it(monkeypatch):
    assert "classifier_activation" not in zoo.get_spec("cnn1d").options

    def plain_builder(num_classes, input_shape, norm="batch", name="plain"):
        inputs = keras.Input(input_shape)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(inputs), name=name)

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_model("plain_for_test", family="plain", builder=plain_builder,
                            input_shape=(4,), default_norm=None)
    assert zoo.create("plain_for_test").name == "plain_for_test"  # unset: works as before
    with pytest.raises(ValueError, match=r"'plain_for_test' \(builder plain_builder\) has no "
                                         r"`classifier_activation` argument.*Received: "
                                         r"classifier_activation='softmax'$"):
        zoo.create("plain_for_test", classifier_activation="softmax")
