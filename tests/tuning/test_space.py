"""The search space: schema, conditional hyperparameters, λ convention, parametrizations."""

import os

import keras
import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf

from keras_normreg import config, train
from keras_normreg.tuning import space as S
from keras_normreg.tuning.hypermodel import NormRegHyperModel

BASE = config.resolve({"name": "t", "model": {"arch": "cnn_digits", "overrides": {"widths": [4]}},
                       "data": {"dataset": "digits", "batch_size": 16},
                       "optimizer": {"momentum": 0.0}, "schedule": {"kind": "constant"}})


# -- basics -------------------------------------------------------------------------------------
def test_default_space():
    sp = S.resolve_space({}, base_learning_rate=0.05)
    assert sp["norms"] == ["batch"] and sp["decay"] == ["decoupled"]
    assert sp["parametrization"] == "independent" and sp["optimizer"] == "sgd"
    assert sp["learning_rate"] == {"kind": "fixed", "value": 0.05}
    assert sp["lambda"] == {"kind": "range", "min": 1e-6, "max": 1e-2, "sampling": "log",
                            "step": None}
    assert sp["eta_lambda"] is None


def test_dimension_forms():
    assert S.resolve_dim("d", 3) == {"kind": "fixed", "value": 3.0}
    assert S.resolve_dim("d", [1e-3, 1]) == {"kind": "choice", "values": [1e-3, 1.0]}
    assert S.resolve_dim("d", [0.5]) == {"kind": "fixed", "value": 0.5}
    assert S.resolve_dim("d", {"min": 1e-3, "max": 1e-1, "step": 10})["step"] == 10.0


def test_no_lambda_when_no_mode_uses_it():
    sp = S.resolve_space({"decay": ["none", "unit_norm"]})
    assert sp["lambda"] is None and sp["eta_lambda"] is None


def test_space_to_toml_round_trip():
    raw = {"norms": ["none", "batch"], "decay": ["l2", "none"], "learning_rate": [0.05, 0.1],
           "eta_lambda": {"min": 1e-6, "max": 1e-4}, "parametrization": "product"}
    sp = S.resolve_space(raw)
    assert S.resolve_space(S.space_to_toml(sp)) == sp


# -- the space on keras-tuner -------------------------------------------------------------------
def test_declare_makes_lambda_conditional_on_decay():
    sp = S.resolve_space({"norms": ["none", "batch"], "decay": ["l2", "decoupled", "unit_norm",
                                                                "none"],
                          "lambda": [1e-4, 1e-3], "learning_rate": {"min": 0.01, "max": 1.0}})
    hp = kt.HyperParameters()
    point = S.declare(hp, sp)
    names = [h.name for h in hp.space]
    assert names == ["norm", "decay", "learning_rate", "lambda"]
    lam = hp.space[3]
    assert [(c.name, c.values) for c in lam.conditions] == [("decay", ["l2", "decoupled"])]
    # the default decay is the first choice ("l2"): λ active
    assert point["decay"] == "l2" and point["lambda"] == 1e-4
    for mode, active in (("l2", True), ("decoupled", True), ("unit_norm", False), ("none", False)):
        hp.values["decay"] = mode
        assert hp.is_active("lambda") is active, mode


def test_declare_product_declares_eta_lambda():
    sp = S.resolve_space({"decay": ["decoupled", "none"], "parametrization": "product",
                          "learning_rate": [0.1, 0.2], "eta_lambda": [1e-4]})
    hp = kt.HyperParameters()
    S.declare(hp, sp)
    assert [h.name for h in hp.space] == ["norm", "decay", "learning_rate", "eta_lambda"]


def test_decode_parametrizations():
    # product: λ = ηλ / η
    p = S.decode({"norm": "batch", "decay": "decoupled", "learning_rate": 0.2,
                  "eta_lambda": 1e-4})
    assert p["lambda"] == pytest.approx(5e-4) and p["eta_lambda"] == 1e-4
    # independent: ηλ reported
    p = S.decode({"norm": "batch", "decay": "l2", "learning_rate": 0.05, "lambda": 2e-3})
    assert p["eta_lambda"] == pytest.approx(1e-4)
    p = S.decode({"norm": "none", "decay": "unit_norm", "learning_rate": 0.1})
    assert p["lambda"] is None and p["eta_lambda"] is None


def test_grid_size_by_hand():
    sp = S.resolve_space({"norms": ["none", "batch"], "decay": ["none", "l2", "decoupled",
                                                               "unit_norm"],
                          "lambda": [1e-4, 1e-3], "learning_rate": 0.1})
    # per norm: none 1 + l2 2 + decoupled 2 + unit_norm 1 = 6
    assert S.grid_size(sp) == 12
    sp = S.resolve_space({"decay": ["decoupled"], "lambda": {"min": 1e-4, "max": 1e-2,
                                                             "step": 10},
                          "learning_rate": [0.1, 0.2, 0.4]})
    assert S.grid_size(sp) == 3 * 3
    assert S.grid_size(S.resolve_space({})) is None  # continuous λ


# -- the λ convention ---------------------------------------------------------------------------
def test_trial_recipe_mapping():
    sp = S.resolve_space({"norms": ["batch"], "decay": list(S.DECAY_MODES), "lambda": [1e-3],
                          "optimizer": "adam"})
    point = {"norm": "batch", "learning_rate": 0.01, "lambda": 1e-3, "eta_lambda": 1e-5}
    l2 = S.trial_recipe(BASE, {**point, "decay": "l2"}, sp, "x")
    assert l2["optimizer"]["name"] == "adam" and l2["optimizer"]["weight_decay"] == 0.0
    assert l2["regularization"] == {"kind": "l2", "l1": 0.0, "l2": 5e-4, "targets": ["kernel"],
                                    "skip_scale_invariant": False}
    dec = S.trial_recipe(BASE, {**point, "decay": "decoupled"}, sp, "x")
    assert dec["optimizer"]["name"] == "adamw" and dec["optimizer"]["weight_decay"] == 1e-3
    assert dec["optimizer"]["decay_semantics"] == "lr" and dec["regularization"]["kind"] == "none"
    assert dec["optimizer"]["scale_invariant"] == "none"
    un = S.trial_recipe(BASE, {**point, "decay": "unit_norm", "lambda": None}, sp, "x")
    assert un["optimizer"]["name"] == "adamw" and un["optimizer"]["scale_invariant"] == "sphere"
    assert un["optimizer"]["weight_decay"] == 0.0
    no = S.trial_recipe(BASE, {**point, "decay": "none", "lambda": None}, sp, "x")
    assert no["optimizer"]["name"] == "adam" and no["regularization"]["kind"] == "none"
    for cfg in (l2, dec, un, no):
        assert cfg["model"]["norm"] == "batch" and cfg["optimizer"]["learning_rate"] == 0.01
        assert cfg["name"] == "x"


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_lambda_is_pytorch_style_decay(mode):
    """One SGD step (no momentum) of both λ modes is w ← w − η(∇L(w) + λw) on every kernel,
    the scale-invariant conv kernel (it feeds BatchNorm) included; biases are not decayed."""
    lr, lam = 0.1, 0.05
    sp = S.resolve_space({"norms": ["batch"], "decay": [mode], "lambda": [lam]})
    cfg = S.trial_recipe(BASE, {"norm": "batch", "decay": mode, "learning_rate": lr,
                                "lambda": lam, "eta_lambda": lr * lam}, sp, "x")
    keras.utils.set_random_seed(0)
    model = train.build_model(cfg)
    model.compile(optimizer=train.build_optimizer(cfg, 10, model),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=16)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    with tf.GradientTape() as tape:  # the data loss only
        logits = model(x, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    grads = {v.path: g.numpy() for v, g in zip(model.trainable_variables,
                                               tape.gradient(loss, model.trainable_variables),
                                               strict=True)}
    model.train_on_batch(x, y)
    kernels = [p for p in before if p.endswith("kernel")]
    assert len(kernels) == 2  # conv (before BatchNorm) and the classifier
    for v in model.trainable_variables:
        w, g = before[v.path], grads[v.path]
        decay = lam * w if v.path.endswith("kernel") else 0.0
        np.testing.assert_allclose(v.numpy(), w - lr * (g + decay), rtol=1e-4, atol=1e-6,
                                   err_msg=v.path)


@pytest.mark.parametrize("norm, granularity, radius", [("layer", "tensor", 2.0),
                                                       ("batch", "unit", 1.0)])
def test_unit_norm_uses_the_sphere_radius_rule(norm, granularity, radius):
    """unit_norm builds sgdw with the default sphere_radius="units": the conv kernel (4 units)
    before LayerNorm ends a step at ‖W‖_F = √4 = 2 (mean unit norm² 1), before BatchNorm each
    unit at 1 (hand-derived; the NumPy references are in tests/optimizers)."""
    sp = S.resolve_space({"norms": [norm], "decay": ["unit_norm"]})
    cfg = S.trial_recipe(BASE, {"norm": norm, "decay": "unit_norm", "learning_rate": 0.1,
                                "lambda": None, "eta_lambda": None}, sp, "x")
    keras.utils.set_random_seed(0)
    model = train.build_model(cfg)
    opt = train.build_optimizer(cfg, 10, model)
    assert opt.sphere_radius == "units"
    assert opt.scale_invariant_paths == {"block1_conv/kernel": granularity}
    kernel = model.get_layer("block1_conv").kernel
    assert opt.sphere_radius_of(kernel) == radius
    model.compile(optimizer=opt,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    model.train_on_batch(rng.normal(size=(16, 8, 8, 1)).astype("float32"),
                         rng.integers(0, 10, size=16))
    w = kernel.numpy().reshape(-1, 4)
    if granularity == "tensor":
        assert np.linalg.norm(w) == pytest.approx(2.0, rel=1e-6)
        assert np.mean(np.sum(w * w, axis=0)) == pytest.approx(1.0, rel=1e-5)
    else:
        np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, rtol=1e-6)


def test_hypermodel_build_declares_and_compiles():
    hm = NormRegHyperModel("cnn_digits", "digits",
                           {"norms": ["none", "batch"], "decay": ["unit_norm", "decoupled"],
                            "lambda": [1e-3]},
                           base={"model": {"overrides": {"widths": [4]}},
                                 "data": {"batch_size": 64}, "train": {"epochs": 1}})
    assert hm.base["data"]["train_split"] == "train[:90%]"
    assert hm.base["data"]["validation_split"] == "train[90%:]"
    hp = kt.HyperParameters()
    model = hm.build(hp)
    assert isinstance(model, keras.Model) and model.optimizer is not None
    assert hp.values == {"norm": "none", "decay": "unit_norm", "learning_rate": 0.1}
    cfg = hm.recipe(hp)
    assert cfg["optimizer"]["scale_invariant"] == "sphere"
    assert hm.data().steps == -(-int(0.9 * 1437 + 0.5) // 64)


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, match", [
    ({"lamda": [1e-3]}, r"Unknown config key 'space.lamda'"),
    ({"lambda": {"min": 1e-5, "mx": 1e-2}}, r"Unknown config key 'space.lambda.mx'"),
    ({"lambda": {"max": 1e-2}}, r"Missing required config key 'space.lambda.min'"),
    ({"lambda": [1e-3, -1.0]}, r"'space.lambda\[1\]' must be a number > 0"),
    ({"lambda": {"min": 1e-2, "max": 1e-4}}, r"needs 0 < min < max"),
    ({"lambda": {"min": 1e-4, "max": 1e-2, "step": 0.5}}, r"'space.lambda.step' must be a factor"),
    ({"lambda": [1e-3, 1e-3]}, r"must not repeat a value"),
    ({"lambda": True}, r"'space.lambda' must be a number, a list"),
    ({"norms": ["batch", "bogus"]}, r"'space.norms' has unknown value 'bogus'"),
    ({"decay": ["decoupled", "weird"]}, r"'space.decay' has unknown value 'weird'"),
    ({"norms": []}, r"'space.norms' must not be empty"),
    ({"eta_lambda": [1e-4]}, r"'space.eta_lambda' does not belong to parametrization="
                             r"'independent' \(use 'space.lambda'\)"),
    ({"parametrization": "product", "lambda": [1e-4]}, r"'space.lambda' does not belong"),
    ({"parametrization": "diagonal"}, r"'space.parametrization' must be one of"),
    ({"learning_rate": 0}, r"'space.learning_rate' must be > 0"),
])
def test_space_errors(raw, match):
    with pytest.raises(config.ConfigError, match=match):
        S.resolve_space(raw)


def test_check_discrete_names_the_key():
    with pytest.raises(config.ConfigError, match=r"'space.lambda' is a continuous range"):
        S.check_discrete(S.resolve_space({}))


def test_decode_without_lambda_is_an_error():
    with pytest.raises(ValueError, match="needs 'lambda' or 'eta_lambda'"):
        S.decode({"norm": "batch", "decay": "l2", "learning_rate": 0.1})


def test_hypermodel_argument_errors():
    with pytest.raises(ValueError, match=r"Received: arch=''"):
        NormRegHyperModel("", "digits")
    with pytest.raises(ValueError, match=r"Received: base=3"):
        NormRegHyperModel("cnn_digits", "digits", base=3)
    with pytest.raises(config.ConfigError, match=r"Unknown config key 'space.norm'"):
        NormRegHyperModel("cnn_digits", "digits", {"norm": ["batch"]})


# -- the transformer study ------------------------------------------------------------------------
GPT_SPEC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "tuning", "gpt_modular.toml")


def test_gpt_modular_spec_trial_recipes_validate():
    from keras_normreg.tuning import spec as study_spec

    spec = study_spec.load_study(GPT_SPEC)
    assert spec["space"]["norms"] == ["layer", "rms"]
    assert spec["base"]["data"]["validation_split"] == "train[50%:]"
    expected = {"none": ("adam", 0.0, "none", "none"), "l2": ("adam", 0.0, "none", "l2"),
                "decoupled": ("adamw", 0.1, "none", "none"),
                "unit_norm": ("adamw", 0.0, "sphere", "none")}
    for norm in ("layer", "rms"):
        for decay, want in expected.items():
            cfg = S.trial_recipe(spec["base"], {"norm": norm, "decay": decay,
                                                "learning_rate": 1e-3, "lambda": 0.1},
                                 spec["space"], "t")
            assert cfg["model"]["norm"] == norm
            got = (cfg["optimizer"]["name"], cfg["optimizer"]["weight_decay"],
                   cfg["optimizer"]["scale_invariant"], cfg["regularization"]["kind"])
            assert got == want, (norm, decay)
            config.resolve(config.drop_none(cfg))  # a valid recipe (raises ConfigError if not)


def test_gpt_modular_one_trial_tiny_study(tmp_path):
    import tomli_w

    from keras_normreg.tuning import study

    raw = config.read_toml(GPT_SPEC)
    raw["base"]["model"]["overrides"] = {"width": 16, "heads": 2}
    raw["base"]["train"]["epochs"] = 1
    raw["space"]["norms"] = ["rms"]
    raw["space"]["decay"] = ["decoupled"]
    raw["space"]["lambda"] = [0.1]
    raw["output"] = {"directory": str(tmp_path / "runs"),
                     "export_dir": str(tmp_path / "saved_models")}
    path = tmp_path / "gpt.toml"
    path.write_text(tomli_w.dumps(raw))
    result = study.run_study(str(path), max_trials=1, export=False)
    assert (result["role"], result["done"], result["budget"]) == ("single", 1, 1)
    assert result["best"]["status"] == "COMPLETED"
    trials = [t for t in (tmp_path / "runs").rglob("trial.json")]
    assert len(trials) == 1


@pytest.mark.parametrize("key,value", [("lambda", []), ("lambda", 0), ("eta_lambda", [])])
def test_resolve_space_refuses_empty_or_zero_instead_of_the_default_range(key, value):
    """An empty list or a 0 given in code (the hypermodel and the experiments call
    resolve_space directly, past the study schema) is an error, never the default range."""
    raw = {"norms": ["batch"], "decay": ["l2"], key: value}
    if key == "eta_lambda":
        raw["parametrization"] = "product"
    with pytest.raises(config.ConfigError, match=rf"{key}"):
        S.resolve_space(raw)
