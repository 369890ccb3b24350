"""ZeroPadChannels (the channel half of the option-A shortcut)."""

import keras
import numpy as np
import pytest

from keras_normreg.zoo import ZeroPadChannels
from tests.helpers import (
    assert_config_roundtrip,
    assert_saved_model_equal,
    assert_serialize_roundtrip,
    gradients,
)


def test_basics_shape_and_no_weights():
    layer = ZeroPadChannels((2, 3))
    y = layer(np.ones((2, 4, 4, 5), "float32"))
    assert tuple(y.shape) == (2, 4, 4, 10)
    assert layer.compute_output_shape((None, 4, 4, 5)) == (None, 4, 4, 10)
    assert layer.count_params() == 0 and not layer.weights
    assert ZeroPadChannels(4).padding == (4, 4)


@pytest.mark.parametrize("padding", [(0, 0), (3, 3), (1, 4), 2])
@pytest.mark.parametrize("shape", [(2, 3, 3, 4), (3, 7, 2), (4, 5)])
def test_matches_numpy_pad(padding, shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    before, after = (padding, padding) if isinstance(padding, int) else padding
    expected = np.concatenate(
        [np.zeros(shape[:-1] + (before,)), x, np.zeros(shape[:-1] + (after,))], axis=-1)
    y = keras.ops.convert_to_numpy(ZeroPadChannels(padding)(x))
    np.testing.assert_array_equal(y, expected)


def test_gradient_passes_through_the_kept_channels():
    x = np.random.default_rng(1).normal(size=(2, 3, 3, 2)).astype("float32")
    layer = ZeroPadChannels((1, 2))
    weights = keras.ops.convert_to_tensor(np.arange(5, dtype="float32"))
    _, (g,) = gradients(lambda t: keras.ops.sum(layer(t) * weights), inputs=[x])
    # d loss / d x[..., c] = weight of output channel c + 1, i.e. 1 and 2.
    np.testing.assert_allclose(g[..., 0], 1.0)
    np.testing.assert_allclose(g[..., 1], 2.0)


def test_config_and_saving(tmp_path):
    layer = ZeroPadChannels((1, 2), name="pad")
    clone = assert_config_roundtrip(layer)
    assert clone.padding == (1, 2)
    assert_serialize_roundtrip(layer)
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, ZeroPadChannels((1, 2))(keras.layers.Conv2D(3, 1)(inputs)))
    x = np.random.default_rng(2).normal(size=(2, 4, 4, 3)).astype("float32")
    loaded = assert_saved_model_equal(model, x, tmp_path)
    assert isinstance(loaded.layers[-1], ZeroPadChannels)


@pytest.mark.parametrize("padding", [-1, (1, -2), (1, 2, 3), 1.5, True, "2", (1,)])
def test_errors(padding):
    with pytest.raises(ValueError, match=r"`padding`.*Received: padding="):
        ZeroPadChannels(padding)
