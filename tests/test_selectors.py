"""One selector language for regularizers.apply, constraints.attach and the optimizer rules."""

from __future__ import annotations

import fnmatch
import re
import warnings

import keras
import numpy as np
import pytest

from keras_normreg import constraints, optimizers, regularizers, selectors
from keras_normreg.optimizers import _rules

pytestmark = pytest.mark.backends  # a block's tests: run on every backend (backend_marks.py)

L = keras.layers


def _convnet():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="block1_conv")(inp)
    x = L.BatchNormalization(name="block1_bn")(x)
    x = L.DepthwiseConv2D(3, name="block2_dw")(x)
    x = L.SeparableConv2D(4, 1, name="block2_sep")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    x = L.Dense(6, name="fc")(x)
    x = L.LayerNormalization(name="fc_ln")(x)
    x = L.Dense(6, use_bias=False, name="proj")(x)
    x = L.RMSNormalization(name="rms_norm")(x)
    out = L.Dense(2, name="head")(x)
    return keras.Model(inp, out)


ALL = [
    "block1_conv/kernel", "block1_conv/bias", "block1_bn/gamma", "block1_bn/beta",
    "block2_dw/kernel", "block2_dw/bias", "block2_sep/depthwise_kernel",
    "block2_sep/pointwise_kernel", "block2_sep/bias", "fc/kernel", "fc/bias", "fc_ln/gamma",
    "fc_ln/beta", "proj/kernel", "rms_norm/scale", "head/kernel", "head/bias",
]
BIASES = ["block1_conv/bias", "block2_dw/bias", "block2_sep/bias", "fc/bias", "head/bias"]

# Every selector kind against _convnet(), the variables written out by hand (layer known).
EXPECTED = {
    "kernel": ["block1_conv/kernel", "block2_sep/pointwise_kernel", "fc/kernel", "proj/kernel",
               "head/kernel"],
    "depthwise_kernel": ["block2_dw/kernel", "block2_sep/depthwise_kernel"],
    "bias": BIASES,
    "gamma": ["block1_bn/gamma", "fc_ln/gamma"],
    "beta": ["block1_bn/beta", "fc_ln/beta"],
    "all": ALL,
    "normalization": ["block1_bn/gamma", "block1_bn/beta", "fc_ln/gamma", "fc_ln/beta",
                      "rms_norm/scale"],
    "norm": ["block1_bn/gamma", "block1_bn/beta", "fc_ln/gamma", "fc_ln/beta",
             "rms_norm/scale"],
    "1d": ["block1_conv/bias", "block1_bn/gamma", "block1_bn/beta", "block2_dw/bias",
           "block2_sep/bias", "fc/bias", "fc_ln/gamma", "fc_ln/beta", "rms_norm/scale",
           "head/bias"],
    "Conv2D": ["block1_conv/kernel", "block1_conv/bias"],
    "DepthwiseConv2D": ["block2_dw/kernel", "block2_dw/bias"],
    "glob:block2_*/*kernel": ["block2_dw/kernel", "block2_sep/depthwise_kernel",
                              "block2_sep/pointwise_kernel"],
    "glob:*/gamma": ["block1_bn/gamma", "fc_ln/gamma"],
    "regex:^(fc|head)/": ["fc/kernel", "fc/bias", "head/kernel", "head/bias"],
    "regex:kernel$": ["block1_conv/kernel", "block2_dw/kernel", "block2_sep/depthwise_kernel",
                      "block2_sep/pointwise_kernel", "fc/kernel", "proj/kernel",
                      "head/kernel"],
}


@pytest.fixture(scope="module")
def convnet():
    return _convnet()


def test_trainable_variables_of_the_hand_built_model(convnet):
    assert selectors.matching_paths(convnet, "all") == ALL
    assert sorted(selectors.matching_paths(convnet, "all")) == sorted(
        v.path for v in convnet.trainable_variables)


@pytest.mark.parametrize("selector", sorted(EXPECTED))
def test_each_selector_kind(convnet, selector):
    assert selectors.matching_paths(convnet, selector) == EXPECTED[selector]


def test_layer_classes(convnet):
    assert selectors.matching_paths(convnet, L.Dense) == [
        "fc/kernel", "fc/bias", "proj/kernel", "head/kernel", "head/bias"]
    # base classes count: every normalization layer here is a keras Layer subclass of its own
    assert selectors.matching_paths(convnet, (L.BatchNormalization, L.LayerNormalization)) == [
        "block1_bn/gamma", "block1_bn/beta", "fc_ln/gamma", "fc_ln/beta"]
    assert selectors.matching_paths(convnet, "Layer") == ALL  # a base class name


def test_glob_and_regex_agree_with_fnmatch_and_re(convnet):
    paths = [v.path for v in convnet.trainable_variables]
    for pattern in ("*/bias", "block?_*/*", "[fh]*/kernel", "*_ln/*"):
        assert sorted(selectors.matching_paths(convnet, "glob:" + pattern)) == sorted(
            p for p in paths if fnmatch.fnmatchcase(p, pattern))
    for pattern in (r"^block\d_", r"(gamma|beta)$", r"_(dw|sep)/"):
        assert sorted(selectors.matching_paths(convnet, "regex:" + pattern)) == sorted(
            p for p in paths if re.search(pattern, p))


def test_a_list_is_the_union(convnet):
    sel = ["bias", "glob:head/*", "Conv2D", "gamma"]
    union = set().union(*(EXPECTED[s] if s in EXPECTED else
                          selectors.matching_paths(convnet, s) for s in sel))
    assert set(selectors.matching_paths(convnet, sel)) == union
    assert set(union) == set(BIASES) | {"head/kernel", "block1_conv/kernel", "block1_bn/gamma",
                                        "fc_ln/gamma"}
    # duplicates and aliases collapse; order kept
    assert selectors.parse("x", ["norm", "bias", "normalization", " bias"]) == (
        "normalization", "bias")


def test_layer_known_vs_variable_only(convnet):
    """The optimizers see variables only: roles by name, class selectors rejected."""
    by_name = selectors.matching_paths(convnet, "kernel", layers=False)
    assert by_name == ["block1_conv/kernel", "block2_dw/kernel", "block2_sep/pointwise_kernel",
                       "fc/kernel", "proj/kernel", "head/kernel"]  # DepthwiseConv's "kernel"
    assert selectors.matching_paths(convnet, "depthwise_kernel", layers=False) == [
        "block2_sep/depthwise_kernel"]
    for sel in ("bias", "gamma", "beta", "all", "normalization", "1d", "glob:*/gamma",
                "regex:^(fc|head)/"):
        assert selectors.matching_paths(convnet, sel, layers=False) == EXPECTED[sel], sel
    with pytest.raises(ValueError, match=r"class name 'Dense' needs the layer.*glob:"):
        selectors.matching_paths(convnet, "Dense", layers=False)


def test_embeddings_and_weight_normalization():
    inp = keras.Input((3,), dtype="int32")
    x = L.Embedding(10, 4, name="emb")(inp)
    x = L.Flatten(name="flat")(x)
    out = L.Dense(2, name="out")(x)
    model = keras.Model(inp, out)
    assert selectors.matching_paths(model, "embeddings") == ["emb/embeddings"]
    assert selectors.matching_paths(model, "embeddings", layers=False) == ["emb/embeddings"]
    assert selectors.matching_paths(model, "glob:*/embeddings") == ["emb/embeddings"]

    layers = pytest.importorskip("keras_normreg.layers")
    inp = keras.Input((5,))
    x = layers.WeightNormalization(L.Dense(4), name="wn")(inp)
    out = L.Dense(1, name="head")(x)
    model = keras.Model(inp, out)
    assert selectors.matching_paths(model, "kernel") == ["wn/v", "head/kernel"]
    assert selectors.matching_paths(model, "gamma") == ["wn/g"]
    assert selectors.matching_paths(model, "normalization") == ["wn/g"]
    # by name only: v and g have no role, and "wn" does not say "norm"
    assert selectors.matching_paths(model, "kernel", layers=False) == ["head/kernel"]
    assert selectors.matching_paths(model, "normalization", layers=False) == []
    assert selectors.matching_paths(model, "WeightNormalization") == ["wn/v", "wn/g", "wn/bias"]


# ----------------------------------------------------------------------------- same variables


def _mlp():
    inp = keras.Input((5,))
    x = L.Dense(8, name="block1_dense")(inp)
    x = L.LayerNormalization(name="block1_ln")(x)
    x = L.Dense(8, name="block2_dense")(x)
    x = L.BatchNormalization(name="block2_bn")(x)
    out = L.Dense(2, name="head")(x)
    return keras.Model(inp, out)


SHARED = ["kernel", "bias", "gamma", "beta", "all", "normalization", "norm", "1d",
          "glob:block*/*", "regex:^(block2|head)/", ("bias", "glob:head/*")]


@pytest.mark.parametrize("sel", SHARED, ids=str)
def test_same_selector_same_variables_everywhere(sel):
    model = _mlp()
    expected = selectors.matching_paths(model, sel)
    assert expected == selectors.matching_paths(model, sel, layers=False)
    assert expected  # each selector picks something on this model

    report = regularizers.apply(_mlp(), regularizers.L2(1e-3), targets=sel,
                                skip_scale_invariant=False)
    assert [e.path for e in report] == expected
    assert constraints.attach(_mlp(), keras.constraints.NonNeg(), targets=sel) == expected

    every = [v.path for v in model.trainable_variables]
    opt = optimizers.DecoupledWeightDecay(keras.optimizers.SGD(0.1), 1e-3, exclude=sel)
    plan = opt.decay_plan(model.trainable_variables)
    assert [p for p in every if plan[p] == "skip"] == expected
    opt = optimizers.DecoupledWeightDecay(keras.optimizers.SGD(0.1), 1e-3, exclude=(),
                                          include=sel)
    plan = opt.decay_plan(model.trainable_variables)
    assert [p for p in every if plan[p] == "decay"] == expected
    plan = optimizers.SGDP(0.1, weight_decay=1e-3, exclude=sel).decay_plan(
        model.trainable_variables)
    assert [p for p in every if plan[p] == "skip"] == expected

    # as exclude= of apply/attach: the complement of the same variables
    complement = [p for p in every if p not in expected]
    if complement:
        report = regularizers.apply(_mlp(), "l2", targets="all", exclude=sel,
                                    skip_scale_invariant=False)
        assert [e.path for e in report] == complement


def test_decay_plan_matches_hand_written_paths():
    model = _mlp()
    opt = optimizers.DecoupledWeightDecay(keras.optimizers.SGD(0.1), 1e-3,
                                          exclude=("bias", "normalization", "glob:head/*"))
    plan = opt.decay_plan(model.trainable_variables)
    assert sorted(p for p, t in plan.items() if t == "decay") == [
        "block1_dense/kernel", "block2_dense/kernel"]
    # the new role words work in the optimizers too
    opt = optimizers.DecoupledWeightDecay(keras.optimizers.SGD(0.1), 1e-3, include="kernel",
                                          exclude="glob:head/*")
    plan = opt.decay_plan(model.trainable_variables)
    assert sorted(p for p, t in plan.items() if t == "decay") == [
        "block1_dense/kernel", "block2_dense/kernel"]


# ----------------------------------------------------------------------------- old spellings


def _no_deprecation(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        return fn(*args, **kwargs)


def test_old_include_exclude_spellings_still_work_silently():
    # bare globs on the path, layer names and class names (never documented in the README:
    # kept without a warning)
    report = _no_deprecation(regularizers.apply, _mlp(), "l2", include="block1_*/kernel")
    assert report.applied == ["block1_dense/kernel"]
    report = _no_deprecation(regularizers.apply, _mlp(), "l2", targets="all",
                             include=["head", "Dense"], exclude="*/bias",
                             skip_scale_invariant=False)
    assert [e.path for e in report] == ["block1_dense/kernel", "block2_dense/kernel",
                                        "head/kernel"]
    touched = _no_deprecation(constraints.attach, _mlp(), "unit_norm", include="block2_*")
    assert touched == ["block2_dense/kernel"]
    # the glob: spelling of the same path glob gives the same variables
    report = regularizers.apply(_mlp(), "l2", include="glob:block1_*/kernel")
    assert report.applied == ["block1_dense/kernel"]


def test_old_optimizer_spellings_and_saved_configs_still_load(tmp_path):
    readme = ("bias", "normalization", "glob:*/embeddings")  # the README's example
    opt = _no_deprecation(optimizers.DecoupledWeightDecay, keras.optimizers.SGD(0.1), 5e-4,
                          exclude=readme)
    assert opt.exclude == readme
    opt = optimizers.DecoupledWeightDecay(keras.optimizers.SGD(0.1), 5e-4,
                                          exclude=("norm", "1d", "regex:^head/"),
                                          sphere="glob:block1_dense/kernel")
    config = opt.get_config()
    assert config["exclude"] == ["normalization", "1d", "regex:^head/"]
    # a config as saved before the languages merged (plain lists of the old rule strings)
    old = dict(config, exclude=["bias", "normalization", "glob:*/embeddings"], include=None,
               sphere=["glob:[b]lock1_dense/kernel"])
    loaded = optimizers.DecoupledWeightDecay.from_config(old)
    assert loaded.exclude == readme
    assert loaded.sphere == ("glob:[b]lock1_dense/kernel",)
    roundtrip = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert roundtrip.exclude == opt.exclude and roundtrip.sphere == opt.sphere

    model = _mlp()
    model.compile(optimizer=optimizers.DecoupledWeightDecay(
        keras.optimizers.SGD(0.1), 5e-4, exclude=readme), loss="mse")
    model.fit(np.ones((4, 5), "float32"), np.ones((4, 2), "float32"), verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert reloaded.optimizer.exclude == readme
    assert reloaded.optimizer.decay_plan() == model.optimizer.decay_plan()


def test_rules_adapter_keeps_its_names():
    assert _rules.KEYWORDS[:3] == ("bias", "normalization", "1d")
    assert set(_rules.KEYWORDS) == set(selectors.WORDS)
    assert _rules.parse is _rules.parse_rules and _rules.normalize_rules is _rules.parse_rules
    v = keras.Variable(np.zeros(3), name="bias")
    assert _rules.matches("bias", v) and _rules.rule_matches("1d", v)
    assert _rules.first_match(("kernel", "1d", "bias"), v) == "1d"
    assert _rules.variable_path(v) == v.path and _rules.variable_name(v) == "bias"


# ----------------------------------------------------------------------------- errors


def test_unknown_words_are_errors_naming_argument_and_value():
    model = _mlp()
    with pytest.raises(ValueError, match=r"Argument `targets` has an unknown target 'kernal'.*"
                                         r"'normalization'.*Received: targets='kernal'"):
        regularizers.apply(model, "l2", targets="kernal")
    with pytest.raises(ValueError, match=r"unknown target 'Dense\*'.*Received: targets="):
        constraints.attach(model, "unit_norm", targets=["kernel", "Dense*"])
    with pytest.raises(ValueError, match=r"Unknown rule 'kernal' in argument `exclude`.*"
                                         r"Received: exclude=\('bias', 'kernal'\)"):
        optimizers.DecoupledWeightDecay(keras.optimizers.SGD(0.1), 1e-3,
                                        exclude=("bias", "kernal"))
    with pytest.raises(ValueError, match=r"Unknown rule 'weights' in argument `include`.*"
                                         r"Received: include='weights'"):
        optimizers.SGDP(0.1, include="weights")
    with pytest.raises(ValueError, match=r"`targets` must not be empty.*Received: targets=\(\)"):
        regularizers.apply(model, "l2", targets=())
    with pytest.raises(ValueError, match=r"Empty selector in argument `exclude`.*"
                                         r"Received: exclude=''"):
        regularizers.apply(model, "l2", exclude="")


def test_bad_regex_and_glob_are_errors_naming_argument_and_value():
    model = _mlp()
    bad = r"Invalid regular expression 'regex:\(' in argument `{}`.*Received: {}="
    with pytest.raises(ValueError, match=bad.format("exclude", "exclude")):
        regularizers.apply(model, "l2", exclude=["bias", "regex:("])
    with pytest.raises(ValueError, match=bad.format("include", "include")):
        constraints.attach(model, "unit_norm", include="regex:(")
    with pytest.raises(ValueError, match=bad.format("targets", "targets")):
        regularizers.apply(model, "l2", targets="regex:(")
    with pytest.raises(ValueError, match=bad.format("exclude", "exclude")):
        optimizers.DecoupledWeightDecay(keras.optimizers.SGD(0.1), 1e-3, exclude="regex:(")
    with pytest.raises(ValueError, match=r"Empty glob pattern in argument `sphere`.*"
                                         r"Received: sphere='glob:'"):
        optimizers.DecoupledWeightDecay(keras.optimizers.SGD(0.1), 1e-3, sphere="glob:")


def test_classes_in_optimizer_rules_and_bad_types_are_errors():
    with pytest.raises(ValueError, match=r"class name 'Dense' needs the layer.*"
                                         r"Received: exclude=\('bias', 'Dense'\)"):
        optimizers.DecoupledWeightDecay(keras.optimizers.SGD(0.1), 1e-3,
                                        exclude=("bias", "Dense"))
    with pytest.raises(ValueError, match=r"Argument `exclude`: the layer class Dense needs the "
                                         r"layer.*glob:.*Received: exclude=\[<class"):
        optimizers.DecoupledWeightDecay(keras.optimizers.SGD(0.1), 1e-3, exclude=[L.Dense])
    with pytest.raises(ValueError, match=r"Argument `exclude`: every rule must be a string.*"
                                         r"Received: exclude=\('bias', 3\)"):
        optimizers.SGDP(0.1, exclude=("bias", 3))
    with pytest.raises(ValueError, match=r"Argument `targets`: .*is not a keras.layers.Layer "
                                         r"subclass.*Received: targets=<class 'int'>"):
        regularizers.apply(_mlp(), "l2", targets=int)
    with pytest.raises(ValueError, match=r"Argument `include` must be a selector string or "
                                         r"layer class.*Received: include=\{'a': 1\}"):
        constraints.attach(_mlp(), "unit_norm", include={"a": 1})
    with pytest.raises(ValueError, match=r"parse it with keras_normreg.selectors.parse.*"
                                         r"Received: selector='kernal'"):
        selectors.matches("kernal", keras.Variable(np.zeros(2)))
    with pytest.raises(ValueError, match=r"'Dense' matches by layer class and needs the layer.*"
                                         r"Received: layer=None"):
        selectors.matches(L.Dense, keras.Variable(np.zeros(2)))
    with pytest.raises(ValueError, match=r"needs a built model"):
        selectors.matching_paths(keras.Sequential([L.Dense(2)]), "kernel")
