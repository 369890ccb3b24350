"""The one table helper (keras_normreg._registry.Registry) and the one name rule, and that adding
a choice to a family touches one table: the recipe schema, the family's lookup, the CLI help and
the catalog writer all read it.
"""

from __future__ import annotations

import json
import re

import keras
import numpy as np
import pytest
from keras import ops

from keras_normreg import cli, config, constraints, layers, optimizers, regularizers, train
from keras_normreg._registry import Registry, check_name
from keras_normreg.config import ConfigError

# the name rule written out independently of the module: lower-case snake case
RULE = re.compile(r"[a-z][a-z0-9_]*")

MINIMAL = {"name": "t", "model": {"arch": "mlp"}, "data": {"dataset": "mnist1d"}}


def recipe(**sections):
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in MINIMAL.items()}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config.resolve(raw)


def check_int(value):
    if not isinstance(value, int):
        raise ValueError(f"Argument `value` must be an int. Received: value={value!r}")


def fruit_table():
    return Registry("fruit", {"apple": 1, "pear_2": 2}, aliases={"pomme": "apple"},
                    reserved={"none": "For no fruit, pass None."}, check=check_int)


# ----------------------------------------------------------------------------- the helper
def test_register_get_names_unregister():
    table = fruit_table()
    assert table.names() == ("apple", "pear_2") and list(table) == ["apple", "pear_2"]
    assert table.register("fig", 3) == 3
    assert table.names() == ("apple", "pear_2", "fig")  # table order, registered ones last
    assert table.get("fig") == 3 and table["fig"] == 3 and "fig" in table
    assert dict(table.items()) == {"apple": 1, "pear_2": 2, "fig": 3}
    table.unregister("fig")
    assert "fig" not in table and table.names() == ("apple", "pear_2")


def test_alias_is_looked_up_but_not_listed():
    table = fruit_table()
    assert table.get("pomme") == 1 and table["pomme"] == 1 and "pomme" in table
    assert table.canonical("pomme") == "apple" and table.canonical("apple") == "apple"
    assert "pomme" not in table.names() and len(table) == 2


def test_get_unknown_names_argument_value_and_names():
    table = fruit_table()
    with pytest.raises(ValueError) as e:
        table.get("kiwi", "fruit.kind")
    assert str(e.value) == ("Unknown fruit 'kiwi'; valid names are ['apple', 'pear_2']. "
                            "Received: fruit.kind='kiwi'")
    with pytest.raises(ValueError, match=r"valid names are \['apple', 'pear_2'\]\. For no fruit, "
                                         r"pass None\. Received: name='none'$"):
        table.get("none")
    for value in (None, 3, ["apple"], {"apple": 1}):  # not a name: the same error, no TypeError
        with pytest.raises(ValueError, match=r"Unknown fruit .*Received: name="):
            table.get(value)
        assert value not in table


@pytest.mark.parametrize("name", ["kiwi", "k2", "blood_orange", "a_1_b"])
def test_name_rule_accepts(name):
    assert RULE.fullmatch(name) and check_name(name) == name
    table = fruit_table()
    table.register(name, 0)
    assert table.get(name) == 0


@pytest.mark.parametrize("name", ["Kiwi", "KIWI", "blood-orange", "blood orange", "2kiwi", "_kiwi",
                                  "", "kiwi!", "kïwi", 3, None])
def test_name_rule_refuses(name):
    assert not (isinstance(name, str) and RULE.fullmatch(name))
    table = fruit_table()
    with pytest.raises(ValueError, match=r"^Argument `name` must be an identifier in lower-case "
                                         r"snake case .*Received: name="):
        table.register(name, 0)
    assert table.names() == ("apple", "pear_2")


@pytest.mark.parametrize("name", ["apple", "pomme", "none"])
def test_taken_names_are_refused(name):
    table = fruit_table()
    with pytest.raises(ValueError, match=rf"^Fruit '{name}' is already a name \(\['apple', "
                                         rf"'pear_2', 'pomme', 'none'\]\)\. Received: "
                                         rf"name='{name}'$"):
        table.register(name, 0)


def test_value_check_and_unregister_errors():
    table = fruit_table()
    with pytest.raises(ValueError, match=r"`value` must be an int. Received: value='x'"):
        table.register("fig", "x")
    assert "fig" not in table
    for name in ("apple", "pomme"):
        with pytest.raises(ValueError, match=rf"built in and cannot be unregistered\. "
                                             rf"Received: name='{name}'$"):
            table.unregister(name)
    table.register("fig", 3)
    with pytest.raises(ValueError, match=r"'kiwi' is not registered\. Registered names: "
                                         r"\['fig'\]\. Received: name='kiwi'$"):
        table.unregister("kiwi")


def test_view_follows_the_table():
    table = Registry("tool", {"saw": ("cut", None), "glue": (None, "stick")})
    cutters = table.view(lambda entry: entry[0])
    assert list(cutters) == ["saw"] and cutters["saw"] == "cut" and "glue" not in cutters
    table.register("axe", ("chop", None))
    assert cutters.names() == ("saw", "axe") and cutters.get("axe") == "chop"
    with pytest.raises(ValueError, match=r"valid names are \['axe', 'saw'\]\. "
                                         r"Received: tool='glue'$"):
        cutters.get("glue", "tool")  # in the table, not in the view: the view's names listed
    table.unregister("axe")
    assert list(cutters) == ["saw"]


# ----------------------------------------------------------------------------- the tables
def test_the_four_families_use_the_helper_and_the_rule():
    tables = [layers.NORMALIZATIONS, constraints.CONSTRAINTS, regularizers.REGULARIZERS,
              optimizers.TABLE]
    assert all(isinstance(t, Registry) for t in tables)
    names = [n for t in tables for n in t.names()]
    names += [*layers.WEIGHT_NORMS, *optimizers.SEMANTICS, *optimizers.SCALE_INVARIANT_NAMES]
    assert names and all(RULE.fullmatch(n) for n in names), names


def test_one_optimizer_table():
    # OPTIMIZERS (optimizers.get) and RECIPES (optimizer.name) are both read from TABLE
    table = optimizers.TABLE
    assert list(optimizers.OPTIMIZERS) == [n for n, e in table.items() if e.make is not None]
    assert list(optimizers.RECIPES) == [n for n, e in table.items() if e.build is not None]
    assert list(optimizers.OPTIMIZERS) == ["sgdw", "adamw", "lionw", "rmspropw", "sgdp", "adamp"]


def test_spellings_accepted_before_still_are():
    assert type(regularizers.get("l1_l2")) is regularizers.ElasticNet  # Keras' name, an alias
    assert type(regularizers.get({"class_name": "l1_l2", "config": {"l1": 0.5, "l2": 0.25}})) \
        is regularizers.ElasticNet
    assert type(optimizers.get("AdamW")) is optimizers.DecoupledWeightDecay  # any case, as Keras
    assert type(optimizers.get("SGD")) is keras.optimizers.SGD
    assert type(constraints.get("unit_norm")) is constraints.UnitNorm


def test_schema_choices_are_the_owners_tables():
    fields = config.choice_fields()
    assert fields["regularization.kind"] == ("none", *regularizers.REGULARIZERS.names())
    assert fields["optimizer.decay_semantics"] == optimizers.SEMANTICS
    assert fields["optimizer.scale_invariant"] == optimizers.SCALE_INVARIANT_NAMES
    assert fields["optimizer.name"] == tuple(optimizers.RECIPES)
    assert fields["model.constraint"] == ("none", *constraints.CONSTRAINTS)
    assert fields["model.norm"] == layers.normalization_names()


def test_every_schema_choice_is_accepted_by_its_implementation():
    for semantics in optimizers.SEMANTICS:
        for treatment in optimizers.SCALE_INVARIANT_NAMES:
            opt = optimizers.DecoupledWeightDecay(keras.optimizers.SGD(0.1), weight_decay=1e-4,
                                                  semantics=semantics, max_learning_rate=0.1,
                                                  base_learning_rate=0.1,
                                                  scale_invariant=treatment)
            assert opt.semantics == semantics
    for kind in regularizers.REGULARIZERS.names():
        factors = dict.fromkeys(regularizers.FACTORS[kind], 0.5)
        penalty = regularizers.get({"class_name": kind, "config": factors})
        # each factor reaches the penalty: on w = [1, -2], l1 gives 0.5*3, l2 gives 0.5*5
        expected = 0.5 * 3 * ("l1" in factors) + 0.5 * 5 * ("l2" in factors)
        value = float(ops.convert_to_numpy(penalty(ops.convert_to_tensor([1.0, -2.0]))))
        assert value == expected  # exact: small integers and halves in float32


# ----------------------------------------------------------------------------- adding a choice
class HalfL2(keras.regularizers.Regularizer):
    """l2 / 2 * sum(w^2): PyTorch's weight-decay penalty, a kind that takes the l2 factor."""

    def __init__(self, l2=0.01):
        self.l2 = l2

    def __call__(self, x):
        return 0.5 * self.l2 * ops.sum(ops.square(x))

    def get_config(self):
        return {"l2": self.l2}


class ClipNorm(keras.constraints.Constraint):
    def __init__(self, limit=1.0):
        self.limit = limit

    def __call__(self, w):
        return ops.clip(w, -self.limit, self.limit)

    def get_config(self):
        return {"limit": self.limit}


class Centering(keras.layers.Layer):
    def call(self, x):
        return x - ops.mean(x, axis=-1, keepdims=True)


def build_plain_sgd(section, learning_rate, model=None):
    return keras.optimizers.SGD(learning_rate, momentum=0.0)


# family -> (register, unregister, recipe sections using the name, config key, lookup, type)
FAMILIES = {
    "regularizer": (
        lambda n: regularizers.register_regularizer(n, HalfL2, factors=("l2",)),
        regularizers.unregister_regularizer,
        lambda n: {"regularization": {"kind": n, "l2": 1e-3}}, "regularization.kind",
        regularizers.get, HalfL2),
    "optimizer": (
        lambda n: optimizers.register_optimizer(n, make=keras.optimizers.SGD,
                                                build=build_plain_sgd),
        optimizers.unregister_optimizer,
        lambda n: {"optimizer": {"name": n}}, "optimizer.name",
        optimizers.get, keras.optimizers.SGD),
    "constraint": (
        lambda n: constraints.register_constraint(n, ClipNorm, value_argument="limit"),
        constraints.unregister_constraint,
        lambda n: {"model": {"constraint": n}}, "model.constraint",
        constraints.get, ClipNorm),
    "layer": (
        lambda n: layers.register_normalization(n, Centering),
        layers.unregister_normalization,
        lambda n: {"model": {"norm": n}}, "model.norm",
        layers.get_normalization, Centering),
}


def catalog_choices(path) -> dict:
    with open(cli.write_catalog(str(path)), encoding="utf-8") as f:
        return json.load(f)["choices"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_new_choice_is_one_registration(family, tmp_path, capsys):
    register, unregister, sections, key, lookup, cls = FAMILIES[family]
    name = f"{family}_added_test"
    register(name)
    try:
        assert recipe(**sections(name))  # the schema accepts it
        assert name in config.choice_fields()[key]
        assert type(lookup(name)) is cls  # the family's lookup makes it
        assert name in catalog_choices(tmp_path / "catalog.json")[key]  # the catalog lists it
        with pytest.raises(SystemExit):
            cli.main(["train", "--help"])
        assert name in capsys.readouterr().out  # and the help
    finally:
        unregister(name)
    # unregistered: gone from every reader again
    with pytest.raises(ConfigError, match=rf"'{re.escape(key)}' must be one of .*"
                                          rf"Received: {re.escape(key)}='{name}'"):
        recipe(**sections(name))
    with pytest.raises(ValueError, match=rf"Received: identifier='{name}'"):
        lookup(name)
    assert name not in catalog_choices(tmp_path / "catalog.json")[key]


def test_registered_regularizer_reaches_the_recipe_checks_and_the_model(tmp_path):
    regularizers.register_regularizer("half_l2_test", HalfL2, factors=("l2",))
    try:
        # the kind's factors come from its registration: l2 needed, l1 refused
        with pytest.raises(ConfigError, match=r"'regularization.l2' must be > 0 with "
                                              r"regularization.kind='half_l2_test'"):
            recipe(regularization={"kind": "half_l2_test"})
        with pytest.raises(ConfigError, match=r"'regularization.l1' is ignored with "
                                              r"regularization.kind='half_l2_test'; remove it or "
                                              r"use kind='elastic_net'"):
            recipe(regularization={"kind": "half_l2_test", "l2": 1e-3, "l1": 1e-3})
        cfg = recipe(model={"arch": "mlp", "norm": "none", "overrides": {"units": [4]}},
                     data={"dataset": "digits", "data_dir": str(tmp_path / "tfds")},
                     regularization={"kind": "half_l2_test", "l2": 1e-3})
        model = train.build_model(cfg)
        kernels = [layer.kernel for layer in model.layers
                   if isinstance(layer, keras.layers.Dense)]
        assert len(kernels) == 2
        assert all(isinstance(layer.kernel_regularizer, HalfL2) and layer.kernel_regularizer.l2
                   == 1e-3 for layer in model.layers if isinstance(layer, keras.layers.Dense))
        expected = sum(0.5 * 1e-3 * np.sum(np.square(ops.convert_to_numpy(k).astype("float64")))
                       for k in kernels)
        total = float(sum(ops.convert_to_numpy(loss) for loss in model.losses))
        # float32 sums of ~300 squares: worst-case relative error 300 * 2**-24 ~ 2e-5
        np.testing.assert_allclose(total, expected, rtol=1e-4)
    finally:
        regularizers.unregister_regularizer("half_l2_test")
    assert "half_l2_test" not in regularizers.FACTORS


@pytest.mark.parametrize("factors", [(), ("l3",), ("l2", "l2"), "l2", None, [["l2"]]])
def test_register_regularizer_factors_errors(factors):
    with pytest.raises(ValueError, match=r"`factors` must be a non-empty tuple of distinct names "
                                         r"from \('l1', 'l2'\).*Received: factors="):
        regularizers.register_regularizer("ok_name", HalfL2, factors=factors)
    assert "ok_name" not in regularizers.REGULARIZERS


def test_register_optimizer_errors():
    with pytest.raises(ValueError, match=r"Give `make` .*or `build`"):
        optimizers.register_optimizer("ok_name")
    with pytest.raises(ValueError, match=r"`make` must be a callable.*Received: make=3"):
        optimizers.register_optimizer("ok_name", make=3)
    with pytest.raises(ValueError, match=r"'lionw' is already a name"):
        optimizers.register_optimizer("lionw", make=keras.optimizers.SGD)
    assert "ok_name" not in optimizers.TABLE


def test_registered_make_only_optimizer_is_not_a_recipe_name():
    optimizers.register_optimizer("sgd_make_test", make=keras.optimizers.SGD)
    try:
        opt = optimizers.get("sgd_make_test", learning_rate=0.25)
        assert type(opt) is keras.optimizers.SGD
        np.testing.assert_allclose(float(ops.convert_to_numpy(opt.learning_rate)), 0.25)
        assert "sgd_make_test" in optimizers.OPTIMIZERS
        assert "sgd_make_test" not in optimizers.RECIPES
        with pytest.raises(ConfigError, match=r"'optimizer.name' must be one of"):
            recipe(optimizer={"name": "sgd_make_test"})
    finally:
        optimizers.unregister_optimizer("sgd_make_test")
