"""Wide residual networks (Zagoruyko & Komodakis 2016): WRN-16-4, WRN-28-10."""

from __future__ import annotations

import keras

from keras_normreg._utils import check_number, received
from keras_normreg.zoo import _blocks as B
from keras_normreg.zoo._layers import check_image_shape, check_zero_init, zero_init_blocks
from keras_normreg.zoo._model import check_classifier_activation, zoo_model
from keras_normreg.zoo.preact_resnet import preact_head, preact_stages
from keras_normreg.zoo.registry import register_model


def check_wrn_depth(depth) -> int:
    """Blocks per group ``n`` of a WRN of ``depth = 6n + 4`` layers."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError("Argument `depth` of a wide ResNet must be of the form 6n + 4 with "
                         f"n >= 1 (10, 16, 22, 28, 40 ...). {received('depth', depth)}")
    return (depth - 4) // 6


def build_wide_resnet(num_classes, input_shape, norm="batch", name="wide_resnet", *, depth=28,
                      widen_factor=10, dropout=0.0, zero_init_residual=False,
                      classifier_activation=None):
    """WRN-``depth``-``widen_factor`` (Zagoruyko & Komodakis 2016).

    ``conv3x3(16)`` stem, three groups of ``n = (depth - 4) / 6`` pre-activation basic blocks
    (``norm -> ReLU -> conv3x3 -> norm -> ReLU -> [Dropout] -> conv3x3``) with
    ``16k, 32k, 64k`` filters (``k = widen_factor``) on 32/16/8 maps, a 1x1 projection
    shortcut (on the pre-activated input) wherever the shape changes, a final
    ``norm -> ReLU``, global average pooling and Dense logits. With 10 classes and
    ``norm="batch"``: WRN-16-4 2.7M, WRN-28-10 36.5M parameters (paper's Table 1/4).

    Args:
        depth: ``6n + 4`` (10, 16, 22, 28, 40 ...).
        widen_factor: ``k``, a positive integer.
        dropout: rate of the Dropout between the two convolutions of every block (the paper
            uses 0.3 on CIFAR; 0 = none).
        zero_init_residual: start every residual branch at zero (its last conv's kernel, or
            with ``"weight"`` its gain g), so each block is the identity at initialization.
            Not in the paper; not possible with ``"weight_fixed"``.
        classifier_activation: None or ``"linear"`` (default: the model returns logits),
            ``"softmax"`` (probabilities) or another Keras activation name, applied after
            the Dense head (keras.applications' argument).
    """
    n = check_wrn_depth(depth)
    check_image_shape(input_shape, "a wide ResNet")
    check_number("widen_factor", widen_factor, low=1, integer=True)
    check_number("dropout", dropout, low=0, high=1, high_inclusive=False)
    check_zero_init(zero_init_residual, norm)
    check_classifier_activation(classifier_activation)
    inputs = keras.Input(input_shape, name="inputs")
    x = B.conv(2, 16, 3, norm, "stem_conv")(inputs)
    widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    x = preact_stages(x, widths, (n, n, n), (1, 2, 2), norm, dropout)
    model = zoo_model(inputs, preact_head(x, num_classes, norm), name, classifier_activation)
    if zero_init_residual:
        zero_init_blocks(model, ("conv2_wn", "conv2"))
    return model


wrn16_4 = register_model(
    "wrn16_4", family="wide_resnet", builder=build_wide_resnet, input_shape=(32, 32, 3),
    dataset="cifar10", depth=16, widen_factor=4,
    description="Wide ResNet WRN-16-4 (Zagoruyko & Komodakis 2016, 2.7M).")
wrn28_10 = register_model(
    "wrn28_10", family="wide_resnet", builder=build_wide_resnet, input_shape=(32, 32, 3),
    dataset="cifar10", slow=True, depth=28, widen_factor=10,
    description="Wide ResNet WRN-28-10 (Zagoruyko & Komodakis 2016, 36.5M).")
