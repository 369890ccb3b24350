"""CIFAR ResNets (He et al. 2016, "Deep residual learning", sec. 4.2): ResNet-20/32/44/56/110."""

from __future__ import annotations

import keras

from keras_normreg._utils import check_choice, check_number, received
from keras_normreg.zoo import _blocks as B
from keras_normreg.zoo._layers import (
    ZeroPadChannels,
    check_image_shape,
    check_zero_init,
    zero_init_blocks,
)
from keras_normreg.zoo._model import check_classifier_activation, zoo_model
from keras_normreg.zoo.registry import register_model

SHORTCUTS = ("A", "B")


def check_resnet_depth(depth) -> int:
    """Number of blocks per stage ``n`` for a CIFAR ResNet of ``depth = 6n + 2`` layers."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError("Argument `depth` of a CIFAR ResNet must be of the form 6n + 2 with "
                         f"n >= 1 (8, 14, 20, 32, 44, 56, 110 ...). {received('depth', depth)}")
    return (depth - 2) // 6


def _shortcut(x, filters, strides, norm, prefix, shortcut):
    """Identity, or (shape change) option A (subsample + zero channels) / B (1x1 conv + norm)."""
    cin = x.shape[-1]
    if strides == 1 and cin == filters:
        return x
    if shortcut == "A":
        if strides != 1:
            # pool_size 1, stride s is exactly x[:, ::s, ::s, :] (parameter-free).
            x = keras.layers.MaxPooling2D(1, strides=strides, name=f"{prefix}_subsample")(x)
        if filters != cin:  # filters only grow in these networks
            before = (filters - cin) // 2
            x = ZeroPadChannels((before, filters - cin - before), name=f"{prefix}_zeropad")(x)
        return x
    x = B.conv(2, filters, 1, norm, f"{prefix}_shortcut_conv", strides=strides)(x)
    layer = B.make_norm(norm, f"{prefix}_shortcut_norm")
    return x if layer is None else layer(x)


def basic_block(x, filters, strides, norm, prefix, shortcut="A"):
    """Post-activation basic block: ``relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))``.

    Layers: ``{prefix}_conv1``, ``{prefix}_norm1``, ``{prefix}_act1``, ``{prefix}_conv2``,
    ``{prefix}_norm2``, ``{prefix}_add``, ``{prefix}_out``.
    """
    y = B.conv(2, filters, 3, norm, f"{prefix}_conv1", strides=strides)(x)
    layer = B.make_norm(norm, f"{prefix}_norm1")
    y = y if layer is None else layer(y)
    y = keras.layers.Activation("relu", name=f"{prefix}_act1")(y)
    y = B.conv(2, filters, 3, norm, f"{prefix}_conv2")(y)
    layer = B.make_norm(norm, f"{prefix}_norm2")
    y = y if layer is None else layer(y)
    s = _shortcut(x, filters, strides, norm, prefix, shortcut)
    y = keras.layers.Add(name=f"{prefix}_add")([y, s])
    return keras.layers.Activation("relu", name=f"{prefix}_out")(y)


def build_resnet(num_classes, input_shape, norm="batch", name="resnet", *, depth=20, width=16,
                 shortcut="A", dropout=0.0, zero_init_residual=False,
                 classifier_activation=None):
    """CIFAR ResNet of ``depth = 6n + 2`` layers (He et al. 2016, sec. 4.2).

    ``conv3x3(width) -> norm -> ReLU``, then three stages of ``n`` basic blocks with
    ``width, 2*width, 4*width`` filters (16/32/64 by default) on 32/16/8 maps (the first block
    of stages 2 and 3 has stride 2), global average pooling, Dense logits. That is ``6n + 2``
    weighted layers. Shortcuts are identities; where the shape changes, ``shortcut="A"`` (the
    paper's CIFAR choice) subsamples with stride 2 and pads the new channels with zeros
    (parameter-free), ``"B"`` uses a strided 1x1 convolution followed by the norm.

    With ``norm="batch"`` and 10 classes: ResNet-20 0.27M, -32 0.46M, -44 0.66M, -56 0.85M,
    -110 1.7M parameters, as in the paper's Table 6.

    Args:
        depth: ``6n + 2`` (20, 32, 44, 56, 110 ...).
        width: filters of the first stage.
        shortcut: ``"A"`` or ``"B"``.
        dropout: rate of a Dropout before the classifier (0 = none; not in the paper).
        zero_init_residual: start every residual branch at zero, so each block is the
            identity at initialization: the scale of the branch's last norm layer (Goyal et al.
            2017), or without a norm layer the last conv's kernel (``"weight"``: its gain g).
            Not in the paper; it is what makes deep ResNets trainable without a norm layer
            (with ``norm="none"``, the logits of ResNet-56/110 at He initialization reach
            ~1e5/1e9 and one SGD step gives NaN). Not possible with ``"weight_fixed"``.
        classifier_activation: None or ``"linear"`` (default: the model returns logits),
            ``"softmax"`` (probabilities) or another Keras activation name, applied after
            the Dense head (keras.applications' argument).
    """
    n = check_resnet_depth(depth)
    check_image_shape(input_shape, "a CIFAR ResNet")
    check_number("width", width, low=1, integer=True)
    check_choice("shortcut", shortcut, SHORTCUTS)
    check_number("dropout", dropout, low=0, high=1, high_inclusive=False)
    check_zero_init(zero_init_residual, norm)
    check_classifier_activation(classifier_activation)
    inputs = keras.Input(input_shape, name="inputs")
    x = B.conv_norm_act(inputs, 2, width, 3, norm, "stem")
    for s in range(3):
        filters = width * 2**s
        for b in range(n):
            strides = 2 if s > 0 and b == 0 else 1
            x = basic_block(x, filters, strides, norm, f"stage{s + 1}_block{b + 1}", shortcut)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_drop")(x)
    model = zoo_model(inputs, B.classifier(x, num_classes), name, classifier_activation)
    if zero_init_residual:
        zero_init_blocks(model, ("norm2", "conv2_wn", "conv2"))
    return model


def _register(depth, slow=False):
    params = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M"}[depth]
    return register_model(
        f"resnet{depth}", family="resnet", builder=build_resnet, input_shape=(32, 32, 3),
        dataset="cifar10", slow=slow, depth=depth,
        description=f"CIFAR ResNet-{depth} (He et al. 2016, option A shortcuts, {params}).")


resnet20 = _register(20)
resnet32 = _register(32)
resnet44 = _register(44)
resnet56 = _register(56)
resnet110 = _register(110, slow=True)
