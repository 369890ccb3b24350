"""One table per choice family: a name registered in the family's table is accepted by the recipe
config, listed by the CLI help, usable by the zoo / training; unknown names list the valid ones.

Families: normalizations (``layers.register_normalization``), constraints
(``constraints.register_constraint``), recipe optimizers (``optimizers.register_recipe``) and
strategies (``distribute.STRATEGIES`` / ``check_strategy``).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from keras_normreg import cli, config, constraints, distribute, layers, optimizers, train, zoo
from keras_normreg.config import ConfigError
from keras_normreg.tuning import space as nr_space

MINIMAL = {"name": "t", "model": {"arch": "mlp"}, "data": {"dataset": "mnist1d"}}


def recipe(**sections):
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in MINIMAL.items()}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config.resolve(raw)


def train_help(capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def help_line(text: str, key: str) -> list[str]:
    """The values listed for ``key`` in the train help's table of choices."""
    for line in text.splitlines():
        parts = line.split(None, 1)
        if parts and parts[0] == key:
            return [v.strip() for v in parts[1].split(",")]
    raise AssertionError(f"{key} not in the help text:\n{text}")


# ----------------------------------------------------------------------------- test objects
class RMSNormTest(keras.layers.Layer):
    """y = x / sqrt(mean(x^2 over the last axis) + epsilon): a tiny normalization layer."""

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, x):
        return x / ops.sqrt(ops.mean(ops.square(x), axis=-1, keepdims=True) + self.epsilon)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


class ClipTest(keras.constraints.Constraint):
    """Clip every weight to [-limit, limit]."""

    def __init__(self, limit=1.0):
        self.limit = limit

    def __call__(self, w):
        return ops.clip(w, -self.limit, self.limit)

    def get_config(self):
        return {"limit": self.limit}


def build_plain_sgd(section, learning_rate, model=None):
    """SGD without momentum whatever ``optimizer.momentum`` says (a recipe entry for tests)."""
    return keras.optimizers.SGD(learning_rate, momentum=0.0)


@pytest.fixture
def rms_norm():
    layers.register_normalization("rms_test", RMSNormTest)
    try:
        yield "rms_test"
    finally:
        layers.unregister_normalization("rms_test")


@pytest.fixture
def clip_constraint():
    constraints.register_constraint("clip_test", ClipTest, value_argument="limit")
    try:
        yield "clip_test"
    finally:
        constraints.unregister_constraint("clip_test")


@pytest.fixture
def plain_sgd():
    optimizers.register_recipe("plain_sgd_test", build_plain_sgd)
    try:
        yield "plain_sgd_test"
    finally:
        optimizers.unregister_recipe("plain_sgd_test")


# ----------------------------------------------------------------------------- the tables
def test_builtin_tables_are_what_config_accepts():
    fields = config.choice_fields()
    assert fields["model.norm"] == ("none", "batch", "l1_batch", "topk_batch", "layer", "group",
                                    "rms", "weight", "weight_fixed")
    assert fields["model.norm"] == layers.normalization_names()
    assert fields["model.constraint"] == ("none", "unit_norm", "max_norm", "fixed_norm",
                                          "non_neg")
    assert fields["optimizer.name"] == ("sgd", "adam", "rmsprop", "lion", "sgdw", "adamw",
                                        "sgdp", "adamp")
    assert tuple(optimizers.RECIPES) == fields["optimizer.name"]
    assert distribute.STRATEGIES == ("auto", "default", "mirrored", "multiworker", "tpu", "cpu:N")


def test_cli_help_lists_the_tables(capsys):
    text = train_help(capsys)
    assert help_line(text, "model.norm") == list(layers.normalization_names())
    assert help_line(text, "model.constraint") == ["none", *constraints.CONSTRAINTS]
    assert help_line(text, "optimizer.name") == list(optimizers.RECIPES)
    assert distribute.STRATEGIES_HELP in text


# ----------------------------------------------------------------------------- normalization
def test_registered_normalization_in_config_cli_space_and_zoo(rms_norm, capsys):
    assert recipe(model={"norm": rms_norm})["model"]["norm"] == rms_norm
    assert rms_norm in help_line(train_help(capsys), "model.norm")
    assert nr_space.resolve_space({"norms": ["batch", rms_norm]})["norms"] == ["batch", rms_norm]

    model = zoo.create("mlp", norm=rms_norm, input_shape=(6,), num_classes=3, units=(4,))
    norm_layers = [lay for lay in model.layers if isinstance(lay, RMSNormTest)]
    assert [lay.name for lay in norm_layers] == ["dense1_norm"]
    dense = model.get_layer("dense1")
    assert dense.use_bias is False  # a normalization layer follows: no bias, as for "batch"

    # the inserted layer computes x / rms(x) on the Dense output (NumPy reference)
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    h = x @ keras.ops.convert_to_numpy(dense.kernel)
    expected = h / np.sqrt(np.mean(h ** 2, axis=-1, keepdims=True) + 1e-6)
    probe = keras.Model(model.input, norm_layers[0].output)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(probe(x)), expected, rtol=1e-5,
                               atol=1e-6)


def test_unregistered_normalization_is_rejected_again(rms_norm):
    layers.unregister_normalization(rms_norm)
    try:
        with pytest.raises(ConfigError, match=r"'model.norm' must be one of \['none', 'batch', "
                                              r"'l1_batch', 'topk_batch', 'layer', 'group', "
                                              r"'rms', 'weight', 'weight_fixed'\]\. "
                                              r"Received: model.norm='rms_test'"):
            recipe(model={"norm": rms_norm})
        with pytest.raises(ValueError, match=r"Valid names: \[.*'weight_fixed'\]\. "
                                             r"Received: norm='rms_test'"):
            zoo.create("mlp", norm=rms_norm)
    finally:
        layers.register_normalization(rms_norm, RMSNormTest)  # the fixture removes it


def test_unknown_normalization_lists_registered_names_too(rms_norm):
    with pytest.raises(ConfigError, match=r"must be one of \[.*'rms_test'.*\]\. "
                                          r"Received: model.norm='bn'"):
        recipe(model={"norm": "bn"})
    with pytest.raises(ValueError, match=r"Valid names: \[.*'rms_test'.*\]\. Received: norm='bn'"):
        zoo.create("mlp", norm="bn")
    with pytest.raises(ConfigError, match=r"'space.norms' has unknown value 'bn' \(valid: .*"
                                          r"rms_test"):
        nr_space.resolve_space({"norms": ["bn"]})


@pytest.mark.parametrize("name,cls,message", [
    ("batch", RMSNormTest, r"'batch' is already a choice .*Received: name='batch'"),
    ("weight", RMSNormTest, r"'weight' is already a choice .*Received: name='weight'"),
    ("not a name", RMSNormTest, r"`name` must be an identifier.*Received: name='not a name'"),
    (3, RMSNormTest, r"`name` must be an identifier.*Received: name=3"),
    ("ok_name", int, r"`cls` must be a keras.layers.Layer subclass.*Received: cls=<class 'int'>"),
    ("ok_name", RMSNormTest(), r"`cls` must be a keras.layers.Layer subclass.*Received: cls="),
])
def test_register_normalization_errors(name, cls, message):
    with pytest.raises(ValueError, match=message):
        layers.register_normalization(name, cls)
    assert "ok_name" not in layers.NORMALIZATIONS


def test_unregister_normalization_errors():
    with pytest.raises(ValueError, match=r"built in and cannot be unregistered.*"
                                         r"Received: name='group'"):
        layers.unregister_normalization("group")
    with pytest.raises(ValueError, match=r"not registered. Registered names: \[\]\. "
                                         r"Received: name='nope'"):
        layers.unregister_normalization("nope")
    assert "group" in layers.NORMALIZATIONS


# ----------------------------------------------------------------------------- constraint
def test_registered_constraint_in_config_cli_zoo_and_train(clip_constraint, capsys):
    cfg = recipe(model={"constraint": clip_constraint, "constraint_value": 0.01})
    assert cfg["model"]["constraint"] == clip_constraint
    assert clip_constraint in help_line(train_help(capsys), "model.constraint")

    c = constraints.from_value(clip_constraint, 0.01)
    assert isinstance(c, ClipTest) and c.limit == 0.01
    assert isinstance(constraints.get(clip_constraint), ClipTest)

    keras.utils.set_random_seed(0)
    model = zoo.create("mlp", norm="none", constraint=clip_constraint, input_shape=(6,),
                       num_classes=3, units=(4,))
    kernel = model.get_layer("dense1").kernel
    assert isinstance(kernel.constraint, ClipTest)
    assert float(np.max(np.abs(keras.ops.convert_to_numpy(kernel)))) <= 1.0


def test_train_build_model_uses_the_constraint_table(clip_constraint, tmp_path):
    cfg = recipe(model={"arch": "mlp", "norm": "none", "constraint": clip_constraint,
                        "constraint_value": 0.01, "overrides": {"units": [4]}},
                 data={"dataset": "digits", "data_dir": str(tmp_path / "tfds")})
    model = train.build_model(cfg)
    kernel = model.get_layer("dense1").kernel
    assert isinstance(kernel.constraint, ClipTest) and kernel.constraint.limit == 0.01
    w = keras.ops.convert_to_numpy(kernel)
    assert np.max(np.abs(w)) <= 0.01 + 1e-7


@pytest.mark.parametrize("name,value,cls,config", [
    ("unit_norm", 3.0, constraints.UnitNorm, {"axis": None, "layer_kind": None}),
    ("max_norm", 3.0, constraints.MaxNorm, {"max_value": 3.0, "axis": None, "layer_kind": None}),
    ("fixed_norm", 0.5, constraints.FixedNorm, {"value": 0.5, "axis": None, "layer_kind": None}),
    ("non_neg", 3.0, keras.constraints.NonNeg, {}),
])
def test_from_value_builtin_names(name, value, cls, config):
    c = constraints.from_value(name, value)
    assert type(c) is cls and c.get_config() == config


def test_from_value_none_and_unknown():
    assert constraints.from_value("none", 2.0) is None
    with pytest.raises(ValueError, match=r"valid names are \['none', 'fixed_norm', 'max_norm', "
                                         r"'non_neg', 'unit_norm'\]\. Received: name='unit'"):
        constraints.from_value("unit", 1.0)


def test_unknown_constraint_lists_valid_names(clip_constraint):
    with pytest.raises(ConfigError, match=r"'model.constraint' must be one of \['none', "
                                          r"'unit_norm', 'max_norm', 'fixed_norm', 'non_neg', "
                                          r"'clip_test'\]\. Received: model.constraint='clip'"):
        recipe(model={"constraint": "clip"})
    with pytest.raises(ValueError, match=r"valid names are \[.*'clip_test'.*\]\. "
                                         r"Received: identifier='clip'"):
        zoo.create("mlp", constraint="clip")


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "unit_norm", "cls": ClipTest}, r"'unit_norm' is already a name"),
    ({"name": "none", "cls": ClipTest}, r"'none' is already a name"),
    ({"name": "a-b", "cls": ClipTest}, r"`name` must be an identifier.*Received: name='a-b'"),
    ({"name": "ok_name", "cls": ClipTest()}, r"`cls` must be a keras.constraints.Constraint"),
    ({"name": "ok_name", "cls": ClipTest, "value_argument": 3},
     r"`value_argument` must be None or an argument name.*Received: value_argument=3"),
])
def test_register_constraint_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        constraints.register_constraint(**kwargs)
    assert "ok_name" not in constraints.CONSTRAINTS
    assert "ok_name" not in constraints.VALUE_ARGUMENTS


def test_unregister_constraint_errors():
    with pytest.raises(ValueError, match=r"built in.*Received: name='max_norm'"):
        constraints.unregister_constraint("max_norm")
    with pytest.raises(ValueError, match=r"not registered.*Received: name='nope'"):
        constraints.unregister_constraint("nope")


# ----------------------------------------------------------------------------- optimizer
def test_registered_optimizer_in_config_cli_and_train(plain_sgd, capsys):
    cfg = recipe(optimizer={"name": plain_sgd, "learning_rate": 0.5, "momentum": 0.9},
                 schedule={"kind": "constant"})
    assert cfg["optimizer"]["name"] == plain_sgd
    assert plain_sgd in help_line(train_help(capsys), "optimizer.name")

    opt = train.build_optimizer(cfg, steps_per_epoch=10)
    assert type(opt) is keras.optimizers.SGD and opt.momentum == 0.0
    # one step: w <- w - lr * g (NumPy reference), the entry's momentum 0 despite the recipe's 0.9
    w = keras.Variable(np.array([1.0, -2.0, 3.0], dtype="float32"))
    g = np.array([0.5, 0.25, -1.0], dtype="float32")
    opt.apply_gradients([(keras.ops.convert_to_tensor(g), w)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(w), [1.0, -2.0, 3.0] - 0.5 * g,
                               rtol=1e-6)


def test_from_recipe_default_learning_rate(plain_sgd):
    cfg = recipe(optimizer={"name": plain_sgd, "learning_rate": 0.25})
    opt = optimizers.from_recipe(cfg["optimizer"])
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(opt.learning_rate)), 0.25)


@pytest.mark.parametrize("name,cls", [
    ("sgd", keras.optimizers.SGD),
    ("adam", keras.optimizers.Adam),
    ("rmsprop", keras.optimizers.RMSprop),
    ("lion", keras.optimizers.Lion),
    ("sgdw", optimizers.DecoupledWeightDecay),
    ("adamw", optimizers.DecoupledWeightDecay),
    ("sgdp", optimizers.SGDP),
    ("adamp", optimizers.AdamP),
])
def test_builtin_recipe_entries(name, cls):
    cfg = recipe(optimizer={"name": name, "learning_rate": 0.1, "momentum": 0.8,
                            "clipnorm": 2.0},
                 schedule={"kind": "constant"})
    opt = train.build_optimizer(cfg, steps_per_epoch=10)
    assert type(opt) is cls
    inner = opt.inner_optimizer if isinstance(opt, optimizers.DecoupledWeightDecay) else opt
    assert inner.clipnorm == 2.0
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(inner.learning_rate)), 0.1,
                               rtol=1e-6)
    momentum = getattr(inner, "momentum", None)
    if momentum is None:
        momentum = inner.beta_1
    assert momentum == pytest.approx(0.8)


def test_unknown_optimizer_lists_valid_names(plain_sgd):
    with pytest.raises(ConfigError, match=r"'optimizer.name' must be one of \['sgd', 'adam', "
                                          r"'rmsprop', 'lion', 'sgdw', 'adamw', 'sgdp', 'adamp', "
                                          r"'plain_sgd_test'\]\. Received: optimizer.name='sgdx'"):
        recipe(optimizer={"name": "sgdx"})
    section = dict(recipe()["optimizer"], name="sgdx")
    with pytest.raises(ValueError, match=r"Unknown optimizer. Valid names: \['sgd', .*"
                                         r"'plain_sgd_test'\]\. Received: optimizer.name='sgdx'"):
        optimizers.from_recipe(section)


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "adamw", "build": build_plain_sgd}, r"'adamw' is already a recipe name"),
    ({"name": "", "build": build_plain_sgd}, r"`name` must be an identifier.*Received: name=''"),
    ({"name": "ok_name", "build": "sgd"}, r"`build` must be a callable.*Received: build='sgd'"),
])
def test_register_recipe_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optimizers.register_recipe(**kwargs)
    assert "ok_name" not in optimizers.RECIPES


def test_unregister_recipe_errors():
    with pytest.raises(ValueError, match=r"built in.*Received: name='sgdw'"):
        optimizers.unregister_recipe("sgdw")
    with pytest.raises(ValueError, match=r"not registered.*Received: name='nope'"):
        optimizers.unregister_recipe("nope")


# ----------------------------------------------------------------------------- strategy
@pytest.mark.parametrize("value", ["auto", "default", "mirrored", "multiworker", "tpu", "cpu:1",
                                   "cpu:16"])
def test_check_strategy_accepts(value):
    assert distribute.check_strategy(value) is None
    assert recipe(train={"strategy": value})["train"]["strategy"] == value


@pytest.mark.parametrize("value", ["gpu", "cpu:N", "cpu:0", "cpu:", "cpu:-1", "", 2])
def test_check_strategy_rejects(value):
    message = "must be one of auto | default | mirrored | multiworker | tpu | cpu:N"
    assert distribute.check_strategy(value) == message
