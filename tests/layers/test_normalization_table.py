"""The normalization table: NORMALIZATIONS, get_normalization, AutoGroupNormalization."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_normreg import layers
from tests.helpers import (
    assert_config_roundtrip,
    assert_saved_model_equal,
    assert_serialize_roundtrip,
)


def test_table_contents():
    assert set(layers.NORMALIZATIONS) == {"none", "batch", "l1_batch", "topk_batch", "layer",
                                          "group", "rms"}
    assert layers.WEIGHT_NORMS == ("weight", "weight_fixed")
    assert not set(layers.WEIGHT_NORMS) & set(layers.NORMALIZATIONS)


@pytest.mark.parametrize("name,cls", [
    ("batch", layers.FusedBatchNormalization),  # keras BN + TensorFlow's fused kernel
    ("l1_batch", layers.L1BatchNormalization),
    ("topk_batch", layers.TopKBatchNormalization),
    ("layer", keras.layers.LayerNormalization),
    ("group", layers.AutoGroupNormalization),
    ("rms", keras.layers.RMSNormalization),
])
def test_name_gives_new_instance_with_kwargs(name, cls):
    a = layers.get_normalization(name, epsilon=1e-5)
    b = layers.get_normalization(name, epsilon=1e-5)
    assert type(a) is cls and a is not b
    assert a.epsilon == pytest.approx(1e-5)


def test_none_gives_none():
    assert layers.get_normalization("none") is None
    assert layers.get_normalization(None) is None
    assert layers.get_normalization({"class_name": "none", "config": {}}) is None


def test_class_instance_and_dicts():
    layer = layers.get_normalization(layers.TopKBatchNormalization, k=3, axis=1)
    assert isinstance(layer, layers.TopKBatchNormalization) and layer.k == 3 and layer.axis == 1
    inst = keras.layers.LayerNormalization()
    assert layers.get_normalization(inst, axis=1) is inst
    # A Keras config dict (as written by serialize_keras_object): kwargs fill missing keys only.
    ser = keras.saving.serialize_keras_object(layers.L1BatchNormalization(momentum=0.9))
    from_dict = layers.get_normalization(ser, momentum=0.5, axis=1)
    assert isinstance(from_dict, layers.L1BatchNormalization)
    assert from_dict.momentum == 0.9
    assert from_dict.axis == -1  # the serialized config sets axis too
    short = layers.get_normalization({"class_name": "topk_batch", "config": {"k": 7}}, axis=1)
    assert isinstance(short, layers.TopKBatchNormalization) and (short.k, short.axis) == (7, 1)
    builtin = layers.get_normalization({"class_name": "BatchNormalization",
                                        "config": {"momentum": 0.5}}, axis=1)
    assert isinstance(builtin, keras.layers.BatchNormalization)
    assert (builtin.momentum, builtin.axis) == (0.5, 1)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"Valid names: \['batch', 'group', 'l1_batch', 'layer', "
                                         r"'none', 'rms', 'topk_batch'\]\. "
                                         r"Received: identifier='foo'$"):
        layers.get_normalization("foo")


@pytest.mark.parametrize("name", ["weight", "weight_fixed"])
def test_weight_names_point_to_the_wrapper(name):
    with pytest.raises(ValueError, match=rf"WeightNormalization.*Received: identifier='{name}'$"):
        layers.get_normalization(name)


@pytest.mark.parametrize("bad", [3, ["batch"], {"config": {}}])
def test_bad_identifier_types(bad):
    with pytest.raises(ValueError, match=r"`identifier` must be a normalization name.*"
                                         r"Received: identifier="):
        layers.get_normalization(bad)


def test_dict_of_a_non_layer():
    ser = keras.saving.serialize_keras_object(keras.regularizers.L2(0.1))
    with pytest.raises(ValueError, match=r"`identifier` must describe a Keras layer"):
        layers.get_normalization(ser)


# ----------------------------------------------------------------------------- group
@pytest.mark.parametrize("channels,groups", [(64, 32), (32, 32), (48, 24), (10, 10), (7, 7),
                                             (100, 25), (96, 32), (66, 22), (1, 1)])
def test_auto_groups(channels, groups):
    assert layers.auto_groups(channels) == groups
    layer = layers.get_normalization("group")
    layer.build((None, 4, channels))
    assert layer.groups == groups


def test_auto_group_matches_keras_group_norm():
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 48)).astype("float32") * 3 + 1
    auto = layers.AutoGroupNormalization(epsilon=1e-5)
    ref = keras.layers.GroupNormalization(groups=24, epsilon=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(auto(x)),
                               keras.ops.convert_to_numpy(ref(x)), atol=1e-5)
    # explicit groups and channels_first
    cf = layers.AutoGroupNormalization(axis=1)
    cf.build((None, 12, 3, 3))
    assert cf.groups == 12
    explicit = layers.AutoGroupNormalization(groups=4)
    explicit.build((None, 8))
    assert explicit.groups == 4


def test_auto_group_config_and_save(tmp_path):
    layer = layers.AutoGroupNormalization(center=False)
    clone = assert_config_roundtrip(layer)
    assert clone.groups is None and clone.center is False
    assert_serialize_roundtrip(layer)
    x = np.random.default_rng(1).normal(size=(2, 4, 40)).astype("float32")
    model = keras.Sequential([keras.Input((4, 40)), layers.AutoGroupNormalization()])
    model.layers[0].gamma.assign(np.linspace(0.5, 2.0, 40))
    loaded = assert_saved_model_equal(model, x, tmp_path)
    assert loaded.layers[0].groups == 20


@pytest.mark.parametrize("groups,match", [(0, r"`groups` must be >= 1. Received: groups=0"),
                                          (2.0, r"`groups` must be an integer. Received: groups=2.0")])
def test_auto_group_errors(groups, match):
    with pytest.raises(ValueError, match=match):
        layers.AutoGroupNormalization(groups=groups)


def test_normalization_names_and_registration():
    assert layers.normalization_names() == (*layers.NORMALIZATIONS, *layers.WEIGHT_NORMS)
    layers.register_normalization("unit_test_layer_norm", keras.layers.LayerNormalization)
    try:
        assert layers.normalization_names()[-3:] == ("unit_test_layer_norm", "weight",
                                                     "weight_fixed")
        layer = layers.get_normalization("unit_test_layer_norm", epsilon=1e-3)
        assert type(layer) is keras.layers.LayerNormalization and layer.epsilon == 1e-3
        by_dict = layers.get_normalization({"class_name": "unit_test_layer_norm",
                                            "config": {"epsilon": 0.5}})
        assert by_dict.epsilon == 0.5
    finally:
        layers.unregister_normalization("unit_test_layer_norm")
    with pytest.raises(ValueError, match=r"Unknown normalization.*"
                                         r"Received: identifier='unit_test_layer_norm'$"):
        layers.get_normalization("unit_test_layer_norm")
