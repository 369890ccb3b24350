"""Pre-activation ResNet-18 for CIFAR (He et al. 2016, "Identity mappings in deep residual
networks"); also provides the pre-activation block shared with the wide ResNets."""

from __future__ import annotations

import keras

from keras_normreg._utils import check_number
from keras_normreg.zoo import _blocks as B
from keras_normreg.zoo._layers import check_image_shape, check_zero_init, zero_init_blocks
from keras_normreg.zoo._model import check_classifier_activation, zoo_model
from keras_normreg.zoo.registry import register_model


def preact_block(x, filters, strides, norm, prefix, dropout=0.0):
    """Pre-activation basic block: ``conv(act(norm(conv(a)))) + shortcut`` with ``a = act(norm(x))``.

    The shortcut is ``x`` when the shape is kept, else a strided 1x1 convolution of ``a`` (the
    projection sees the pre-activated input, as in the reference implementations). With
    ``dropout > 0`` a Dropout sits between the two convolutions (wide ResNets).

    Layers: ``{prefix}_pre_norm``, ``{prefix}_pre_act``, ``{prefix}_conv1``,
    ``{prefix}_mid_norm``, ``{prefix}_mid_act``, [``{prefix}_drop``], ``{prefix}_conv2``,
    [``{prefix}_shortcut_conv``], ``{prefix}_add``.
    """
    cin = x.shape[-1]
    a = B.norm_act(x, norm, f"{prefix}_pre")
    if strides == 1 and cin == filters:
        shortcut = x
    else:
        shortcut = B.conv(2, filters, 1, norm, f"{prefix}_shortcut_conv", strides=strides)(a)
    y = B.conv(2, filters, 3, norm, f"{prefix}_conv1", strides=strides)(a)
    y = B.norm_act(y, norm, f"{prefix}_mid")
    if dropout:
        y = keras.layers.Dropout(dropout, name=f"{prefix}_drop")(y)
    y = B.conv(2, filters, 3, norm, f"{prefix}_conv2")(y)
    return keras.layers.Add(name=f"{prefix}_add")([y, shortcut])


def preact_stages(x, widths, blocks, strides, norm, dropout=0.0):
    """Stages of pre-activation blocks: stage ``s`` has ``blocks[s]`` blocks of ``widths[s]``
    filters, its first block with stride ``strides[s]``; blocks named ``stage{s}_block{b}``."""
    for s, (w, nb, st) in enumerate(zip(widths, blocks, strides, strict=True)):
        for b in range(nb):
            x = preact_block(x, w, st if b == 0 else 1, norm, f"stage{s + 1}_block{b + 1}",
                             dropout)
    return x


def preact_head(x, num_classes, norm, dropout=0.0):
    """Final ``norm -> ReLU`` (the last block leaves its sum un-normalized), GAP, Dense."""
    x = B.norm_act(x, norm, "final")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_drop")(x)
    return B.classifier(x, num_classes)


def build_preact_resnet(num_classes, input_shape, norm="batch", name="preact_resnet", *,
                        blocks=(2, 2, 2, 2), width=64, dropout=0.0, zero_init_residual=False,
                        classifier_activation=None):
    """Pre-activation ResNet with basic blocks (He et al. 2016, "Identity mappings").

    ``conv3x3(width)`` stem (no norm: the first block pre-activates), then ``len(blocks)``
    stages of pre-activation basic blocks with ``width * 2**s`` filters (64/128/256/512), the
    first block of every stage but the first with stride 2 and a 1x1 projection shortcut,
    a final ``norm -> ReLU``, global average pooling and Dense logits. ``blocks=(2, 2, 2, 2)``
    is ResNet-18 (11.2M parameters with 10 classes and ``norm="batch"``).

    Args:
        blocks: blocks per stage.
        width: filters of the stem and the first stage.
        dropout: rate of a Dropout before the classifier (0 = none; not in the paper).
        zero_init_residual: start every residual branch at zero (its last conv's kernel, or
            with ``"weight"`` its gain g), so each block is the identity at initialization.
            Not in the paper; not possible with ``"weight_fixed"``.
        classifier_activation: None or ``"linear"`` (default: the model returns logits),
            ``"softmax"`` (probabilities) or another Keras activation name, applied after
            the Dense head (keras.applications' argument).
    """
    B.check_positive_ints("blocks", blocks)
    check_image_shape(input_shape, "a pre-activation ResNet")
    if not isinstance(blocks, (tuple, list)):
        blocks = (blocks,)
    check_number("width", width, low=1, integer=True)
    check_number("dropout", dropout, low=0, high=1, high_inclusive=False)
    check_zero_init(zero_init_residual, norm)
    check_classifier_activation(classifier_activation)
    inputs = keras.Input(input_shape, name="inputs")
    x = B.conv(2, width, 3, norm, "stem_conv")(inputs)
    widths = [width * 2**s for s in range(len(blocks))]
    strides = [1] + [2] * (len(blocks) - 1)
    x = preact_stages(x, widths, blocks, strides, norm)
    model = zoo_model(inputs, preact_head(x, num_classes, norm, dropout), name,
                      classifier_activation)
    if zero_init_residual:
        zero_init_blocks(model, ("conv2_wn", "conv2"))
    return model


preact_resnet18 = register_model(
    "preact_resnet18", family="preact_resnet", builder=build_preact_resnet,
    input_shape=(32, 32, 3), dataset="cifar10", slow=True, blocks=(2, 2, 2, 2),
    description="Pre-activation ResNet-18 for CIFAR (He et al. 2016, 11.2M).")
