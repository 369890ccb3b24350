"""Structure, behaviour and errors of the big zoo families (ResNet, pre-act ResNet, VGG, WRN)."""

import re

import keras
import numpy as np
import pytest

from keras_normreg import constraints, zoo
from keras_normreg.layers import FusedBatchNormalization, L1BatchNormalization, WeightNormalization
from keras_normreg.zoo import ZeroPadChannels


def layers_of(model, cls):
    return [layer for layer in model.layers if type(layer) is cls]


#: The class of the normalization table's "batch" (Keras' BatchNormalization, fused on TF).
BATCH = FusedBatchNormalization


def kernel_size(layer):
    return layer.kernel_size[0]


def rand(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# --------------------------------------------------------------------------- ResNet (CIFAR)

@pytest.mark.parametrize("depth", [8, 20, 32, 110])
def test_resnet_depth_is_weighted_layer_count(depth):
    model = zoo.create("resnet20", depth=depth, width=4)
    convs = layers_of(model, keras.layers.Conv2D)
    assert len(convs) + len(layers_of(model, keras.layers.Dense)) == depth
    assert all(kernel_size(c) == 3 for c in convs)
    # option A: parameter-free shortcuts at the two stage transitions
    assert len(layers_of(model, ZeroPadChannels)) == 2
    assert [c.filters for c in convs][:1] == [4]
    assert {c.filters for c in convs} == {4, 8, 16}


def test_resnet_stage_shapes():
    model = zoo.create("resnet20")
    out = {name: model.get_layer(name).output.shape[1:] for name in
           ("stem_act", "stage1_block3_out", "stage2_block1_out", "stage3_block3_out")}
    assert out == {"stem_act": (32, 32, 16), "stage1_block3_out": (32, 32, 16),
                   "stage2_block1_out": (16, 16, 32), "stage3_block3_out": (8, 8, 64)}


def test_resnet_option_a_shortcut_is_subsample_and_zero_pad():
    """With the residual branch silenced (gamma of its last BN = 0), the transition block
    outputs relu(pad(x[:, ::2, ::2])) — computed here with NumPy."""
    model = zoo.create("resnet20", depth=8, width=4, input_shape=(9, 9, 3))
    model.get_layer("stage2_block1_norm2").gamma.assign(np.zeros(8, "float32"))
    probe = keras.Model(model.input, [model.get_layer("stage1_block1_out").output,
                                      model.get_layer("stage2_block1_out").output])
    a, b = (keras.ops.convert_to_numpy(t) for t in probe(rand((2, 9, 9, 3)), training=False))
    sub = a[:, ::2, ::2, :]
    assert sub.shape == (2, 5, 5, 4)
    expected = np.concatenate([np.zeros_like(sub[..., :2]), sub, np.zeros_like(sub[..., :2])],
                              axis=-1)
    np.testing.assert_allclose(b, np.maximum(expected, 0), atol=1e-6)


def test_resnet_layer_names():
    model = zoo.create("resnet20")
    pattern = re.compile(r"^(stem_conv|stage[123]_block[123]_conv[12])$")
    for layer in layers_of(model, keras.layers.Conv2D):
        assert pattern.match(layer.name), layer.name
    bn = [layer.name for layer in layers_of(model, BATCH)]
    assert bn[:3] == ["stem_norm", "stage1_block1_norm1", "stage1_block1_norm2"]
    assert model.layers[-1].name == "classifier"


def test_resnet_option_b():
    model = zoo.create("resnet20", shortcut="B", width=4)
    shortcut = [c for c in layers_of(model, keras.layers.Conv2D) if kernel_size(c) == 1]
    assert [(c.name, c.strides) for c in shortcut] == [
        ("stage2_block1_shortcut_conv", (2, 2)), ("stage3_block1_shortcut_conv", (2, 2))]
    assert not layers_of(model, ZeroPadChannels)


# ------------------------------------------------------------------ pre-activation ResNet

def test_preact_structure():
    model = zoo.create("preact_resnet18", width=8)
    convs = layers_of(model, keras.layers.Conv2D)
    assert sum(kernel_size(c) == 3 for c in convs) + 1 == 18  # + the Dense head
    assert [c.name for c in convs if kernel_size(c) == 1] == [
        f"stage{s}_block1_shortcut_conv" for s in (2, 3, 4)]
    # the stem has no norm of its own: the first block pre-activates it
    assert model.get_layer("stage1_block1_pre_norm").input is model.get_layer("stem_conv").output
    # pre-activation: the last block's sum is normalized once more before the head
    final = model.get_layer("final_norm")
    assert isinstance(final, keras.layers.BatchNormalization)
    assert final.input is model.get_layer("stage4_block2_add").output
    assert model.get_layer("stage4_block2_add").output.shape[1:] == (4, 4, 64)


def test_preact_identity_block_is_identity_when_last_conv_is_zero():
    model = zoo.create("preact_resnet18", width=4, blocks=(1, 1), input_shape=(8, 8, 3))
    conv2 = model.get_layer("stage1_block1_conv2")
    conv2.kernel.assign(np.zeros(conv2.kernel.shape, "float32"))
    probe = keras.Model(model.input, [model.get_layer("stem_conv").output,
                                      model.get_layer("stage1_block1_add").output])
    x, y = (keras.ops.convert_to_numpy(t) for t in probe(rand((2, 8, 8, 3)), training=True))
    np.testing.assert_allclose(y, x, atol=1e-6)


# --------------------------------------------------------------------------------- WRN

@pytest.mark.parametrize("depth,k,projections", [(16, 4, 3), (10, 1, 2), (28, 10, 3)])
def test_wrn_structure(depth, k, projections):
    model = zoo.create("wrn28_10", depth=depth, widen_factor=k, input_shape=(8, 8, 3))
    convs = layers_of(model, keras.layers.Conv2D)
    n = (depth - 4) // 6
    assert sum(kernel_size(c) == 3 for c in convs) == 6 * n + 1
    assert sum(kernel_size(c) == 1 for c in convs) == projections
    assert {c.filters for c in convs} == {16, 16 * k, 32 * k, 64 * k}
    assert not layers_of(model, keras.layers.Dropout)


def test_wrn_dropout_between_convs():
    model = zoo.create("wrn16_4", widen_factor=1, dropout=0.3, input_shape=(8, 8, 3))
    drops = layers_of(model, keras.layers.Dropout)
    assert [d.name for d in drops] == [f"stage{s}_block{b}_drop" for s in (1, 2, 3)
                                       for b in (1, 2)]
    assert all(d.rate == 0.3 for d in drops)
    assert model.get_layer("stage1_block1_drop").input is \
        model.get_layer("stage1_block1_mid_act").output
    x = rand((2, 8, 8, 3))

    def run(training):
        return keras.ops.convert_to_numpy(model(x, training=training))

    np.testing.assert_array_equal(run(False), run(False))
    assert not np.allclose(run(True), run(True))


# --------------------------------------------------------------------------------- VGG

@pytest.mark.parametrize("name,convs", [("vgg11", 8), ("vgg16", 13)])
def test_vgg_structure(name, convs):
    model = zoo.create(name, width=8)
    layers = layers_of(model, keras.layers.Conv2D)
    assert len(layers) == convs
    assert len(layers_of(model, keras.layers.MaxPooling2D)) == 5
    assert len(layers_of(model, keras.layers.Dense)) == 1  # the CIFAR variant's single head
    assert layers[-1].filters == 64 and layers[0].filters == 8
    # at 32x32 the last map is 1x1, so global pooling is the same as flattening
    assert model.get_layer("block5_pool").output.shape[1:] == (1, 1, 64)


def test_vgg_small_inputs_keep_working():
    model = zoo.create("vgg11", width=4, input_shape=(12, 12, 1))
    assert model.get_layer("block5_pool").output.shape[1:] == (1, 1, 32)
    assert model(rand((2, 12, 12, 1))).shape == (2, 10)


# ------------------------------------------------------------------- norm knob on families

@pytest.mark.parametrize("name", ["resnet20", "preact_resnet18", "vgg11", "wrn16_4"])
def test_weight_norm_wraps_every_conv(name):
    small = {"resnet20": {"width": 4}, "preact_resnet18": {"width": 4},
             "vgg11": {"width": 4}, "wrn16_4": {"widen_factor": 1}}[name]
    model = zoo.create(name, norm="weight_fixed", **small)
    wrapped = layers_of(model, WeightNormalization)
    assert wrapped and not layers_of(model, keras.layers.Conv2D)
    assert all(w.fixed_g == pytest.approx(np.sqrt(2.0)) and w.layer.use_bias for w in wrapped)
    assert not [layer for layer in model.layers
                if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(w.name.endswith("_wn") for w in wrapped)


def test_norm_as_class_instance_and_dict():
    by_class = zoo.create("resnet20", depth=8, width=4, norm=L1BatchNormalization)
    assert len(layers_of(by_class, L1BatchNormalization)) == 7
    inst = keras.layers.BatchNormalization(momentum=0.5, name="template")
    by_inst = zoo.create("resnet20", depth=8, width=4, norm=inst)
    bns = layers_of(by_inst, keras.layers.BatchNormalization)
    assert len(bns) == 7 and all(b.momentum == 0.5 for b in bns)
    assert len({b.name for b in bns}) == 7 and "template" not in {b.name for b in bns}
    for spec in ({"class_name": "l1_batch", "config": {"momentum": 0.8}},
                 keras.saving.serialize_keras_object(L1BatchNormalization(momentum=0.8))):
        model = zoo.create("resnet20", depth=8, width=4, norm=spec)
        norms = layers_of(model, L1BatchNormalization)
        assert len(norms) == 7 and all(b.momentum == 0.8 for b in norms)
        assert not any(c.use_bias for c in layers_of(model, keras.layers.Conv2D))


@pytest.mark.parametrize("norm,biases", [("none", True), ("batch", False), ("group", False),
                                         ("layer", False)])
def test_conv_bias_only_without_norm_layer(norm, biases):
    model = zoo.create("wrn16_4", widen_factor=1, norm=norm)
    assert {c.use_bias for c in layers_of(model, keras.layers.Conv2D)} == {biases}
    assert model.get_layer("classifier").use_bias


def test_regularization_and_constraint_knobs():
    model = zoo.create("resnet20", depth=8, width=4, norm="none", regularization={"l2": 1e-4})
    assert len(model.losses) == 8  # 7 convs + head, none scale-invariant without a norm
    model = zoo.create("resnet20", depth=8, width=4, constraint="unit_norm")
    kernel = model.get_layer("stage1_block1_conv1").kernel.numpy()
    np.testing.assert_allclose(np.sqrt((kernel**2).sum(axis=(0, 1, 2))), 1.0, rtol=1e-5)


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("name,kw,match", [
    ("resnet20", {"depth": 21}, r"`depth`.*6n \+ 2.*Received: depth=21"),
    ("resnet20", {"depth": 2}, r"`depth`.*Received: depth=2"),
    ("resnet56", {"depth": 20.0}, r"`depth`.*Received: depth=20.0"),
    ("resnet20", {"width": 0}, r"`width`.*Received: width=0"),
    ("resnet20", {"shortcut": "C"}, r"`shortcut`.*\['A', 'B'\].*Received: shortcut='C'"),
    ("resnet20", {"dropout": 1.0}, r"`dropout`.*Received: dropout=1.0"),
    ("wrn16_4", {"depth": 18}, r"`depth`.*6n \+ 4.*Received: depth=18"),
    ("wrn28_10", {"depth": 4}, r"`depth`.*Received: depth=4"),
    ("wrn16_4", {"widen_factor": 0}, r"`widen_factor`.*Received: widen_factor=0"),
    ("wrn16_4", {"dropout": -0.1}, r"`dropout`.*Received: dropout=-0.1"),
    ("vgg16", {"depth": 12}, r"`depth`.*\[11, 13, 16, 19\].*Received: depth=12"),
    ("vgg11", {"width": -8}, r"`width`.*Received: width=-8"),
    ("preact_resnet18", {"blocks": (2, 0)}, r"`blocks`.*Received: blocks=\(2, 0\)"),
    ("preact_resnet18", {"width": 2.5}, r"`width`.*Received: width=2.5"),
    ("resnet20", {"zero_init_residual": 1}, r"`zero_init_residual`.*bool.*Received: "),
    ("wrn16_4", {"zero_init_residual": "yes"}, r"`zero_init_residual`.*Received: "),
])
def test_bad_options(name, kw, match):
    with pytest.raises(ValueError, match=match):
        zoo.create(name, **kw)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"resnet21.*") as err:
        zoo.create("resnet21")
    msg = str(err.value)
    assert "Did you mean" in msg and "Received: name='resnet21'" in msg
    for name in ("resnet20", "resnet110", "preact_resnet18", "vgg16", "wrn28_10", "mlp"):
        assert f"'{name}'" in msg


@pytest.mark.parametrize("name,bad,valid", [
    ("resnet20", "widen_factor", "['depth', 'dropout', 'shortcut', 'width', 'zero_init_residual']"),
    ("wrn16_4", "width", "['depth', 'dropout', 'widen_factor', 'zero_init_residual']"),
    ("vgg16", "blocks", "['depth', 'dropout', 'width']"),
    ("preact_resnet18", "depth", "['blocks', 'dropout', 'width', 'zero_init_residual']"),
])
def test_unknown_override_lists_valid_overrides(name, bad, valid):
    with pytest.raises(ValueError, match=re.escape(f"Valid overrides: {valid}. Received: {bad}=")):
        zoo.create(name, **{bad: 2})


def test_unknown_norm_lists_valid_norms():
    with pytest.raises(ValueError, match=r"Valid names: \[.*'batch'.*'weight_fixed'\]. "
                                         r"Received: norm='bogus'"):
        zoo.create("resnet20", norm="bogus")
    with pytest.raises(ValueError, match=r"`norm`.*Received: norm=3"):
        zoo.build_vgg(10, (32, 32, 3), norm=3)


def test_constraint_that_does_not_fit_fails_clearly():
    # an explicit conv-only axis cannot apply to the Dense head's rank-2 kernel
    with pytest.raises(ValueError, match=r"cannot be used with zoo model 'resnet20'.*`axis`"):
        zoo.create("resnet20", depth=8, width=4, constraint=constraints.UnitNorm(axis=[0, 1, 2]))


def test_family_listing():
    assert zoo.list_models("resnet") == ["resnet110", "resnet20", "resnet32", "resnet44",
                                         "resnet56"]
    assert zoo.list_models("wide_resnet") == ["wrn16_4", "wrn28_10"]
    assert zoo.list_models("vgg") == ["vgg11", "vgg16"]
    assert zoo.list_models("preact_resnet") == ["preact_resnet18"]
    slow = {n for n in zoo.list_models() if zoo.get_spec(n).slow}
    assert zoo.list_models("transformer") == ["gpt_modular", "seq_mnist1d", "vit_cifar",
                                              "vit_digits"]
    assert slow == {"resnet110", "preact_resnet18", "vgg11", "vgg16", "wrn28_10", "vit_cifar"}
    assert zoo.vit_digits.__name__ == "vit_digits"
    assert zoo.resnet56.__name__ == "resnet56"
    assert zoo.wrn16_4(widen_factor=1, num_classes=3).output.shape == (None, 3)


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet18", "vgg11", "wrn16_4"])
def test_image_families_need_image_input(name):
    with pytest.raises(ValueError, match=r"`input_shape`.*\(height, width, channels\).*"
                                         r"Received: input_shape=\(40, 1\)"):
        zoo.create(name, input_shape=(40, 1))


# ------------------------------------------------------------------- zero_init_residual

def test_zero_init_residual_zeroes_the_last_norm_scale():
    model = zoo.create("resnet20", width=4, zero_init_residual=True)
    norms = layers_of(model, BATCH)
    assert len(norms) == 19  # stem + 2 per block x 9 blocks
    for layer in norms:
        expected = 0.0 if layer.name.endswith("_norm2") else 1.0
        np.testing.assert_array_equal(layer.gamma.numpy(), expected)
    assert sum(layer.name.endswith("_norm2") for layer in model.layers) == 9


@pytest.mark.parametrize("norm", ["none", "weight"])
def test_zero_init_residual_makes_post_activation_blocks_identity(norm):
    model = zoo.create("resnet20", width=4, norm=norm, zero_init_residual=True,
                       input_shape=(8, 8, 3))
    probe = keras.Model(model.input, [model.get_layer("stem_act").output,
                                      model.get_layer("stage1_block3_out").output,
                                      model.get_layer("stage2_block1_out").output])
    a, b, c = (keras.ops.convert_to_numpy(t) for t in probe(rand((2, 8, 8, 3)), training=True))
    np.testing.assert_allclose(b, a, atol=1e-6)  # relu(x + 0) = x for x = relu(...) >= 0
    sub = a[:, ::2, ::2, :]  # the transition block reduces to its option-A shortcut
    np.testing.assert_allclose(c, np.pad(sub, [(0, 0)] * 3 + [(2, 2)]), atol=1e-6)


@pytest.mark.parametrize("name,kw", [("preact_resnet18", {"width": 4}),
                                     ("wrn16_4", {"widen_factor": 1})])
@pytest.mark.parametrize("norm", ["batch", "none", "weight"])
def test_zero_init_residual_preact_blocks_pass_the_shortcut(name, kw, norm):
    model = zoo.create(name, norm=norm, zero_init_residual=True, input_shape=(8, 8, 3), **kw)
    probe = keras.Model(model.input, [model.get_layer("stem_conv" if norm != "weight" else
                                                     "stem_conv_wn").output,
                                      model.get_layer("stage1_block2_add").output])
    a, b = (keras.ops.convert_to_numpy(t) for t in probe(rand((2, 8, 8, 3)), training=True))
    np.testing.assert_allclose(b, a, atol=1e-6)  # identity shortcuts all through stage 1
    # deep unnormalized nets stay at the scale of their input
    out = keras.ops.convert_to_numpy(model(rand((2, 8, 8, 3)), training=True))
    assert np.abs(out).max() < 100


def test_zero_init_residual_errors():
    with pytest.raises(ValueError, match=r"`zero_init_residual`.*weight_fixed.*"
                                         r"Received: zero_init_residual=True"):
        zoo.create("resnet20", norm="weight_fixed", zero_init_residual=True)
    no_scale = keras.layers.BatchNormalization(scale=False)
    with pytest.raises(ValueError, match=r"zero_init_residual needs.*stage1_block1_norm2.*"
                                         r"Received: zero_init_residual=True"):
        zoo.create("resnet20", width=4, norm=no_scale, zero_init_residual=True)
