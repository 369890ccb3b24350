"""VGG for CIFAR (Simonyan & Zisserman 2015, CIFAR variant): VGG-11, VGG-16."""

from __future__ import annotations

import keras

from keras_normreg._utils import check_choice, check_number
from keras_normreg.zoo import _blocks as B
from keras_normreg.zoo._layers import check_image_shape
from keras_normreg.zoo._model import check_classifier_activation, zoo_model
from keras_normreg.zoo.registry import register_model

#: Filters of the 3x3 convolutions per pooling block (configurations A, B, D, E of the paper).
VGG_CONFIGS = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512),
         (512, 512, 512, 512)),
}


def build_vgg(num_classes, input_shape, norm="batch", name="vgg", *, depth=16, width=64,
              dropout=0.0, classifier_activation=None):
    """VGG-``depth``, the common CIFAR variant.

    The paper's five blocks of ``conv3x3 -> norm -> ReLU`` layers (configuration A for VGG-11,
    D for VGG-16), each block followed by a 2x2 max-pool (``padding="same"``, so inputs smaller
    than 32x32 also work), then global average pooling and a **single** Dense classifier on the
    512-d feature. The ImageNet model's three 4096-wide fully connected layers are dropped: on
    32x32 inputs the last map is 1x1, so the pooling is the same as a flatten. This is the
    widely used CIFAR VGG (e.g. the network-slimming and pytorch-cifar VGGs); VGG-16 has 14.7M
    parameters and VGG-11 9.2M with 10 classes and ``norm="batch"``.

    Args:
        depth: 11, 13, 16 or 19.
        width: filters of the first block (64 in the paper); the others scale with it
            (``width * 2, width * 4, width * 8, width * 8``).
        dropout: rate of a Dropout before the classifier (0 = none).
        classifier_activation: None or ``"linear"`` (default: the model returns logits),
            ``"softmax"`` (probabilities) or another Keras activation name, applied after
            the Dense head (keras.applications' argument).
    """
    check_choice("depth", depth, sorted(VGG_CONFIGS))
    check_image_shape(input_shape, "a VGG")
    check_number("width", width, low=1, integer=True)
    check_number("dropout", dropout, low=0, high=1, high_inclusive=False)
    check_classifier_activation(classifier_activation)
    inputs = keras.Input(input_shape, name="inputs")
    x = inputs
    for b, block in enumerate(VGG_CONFIGS[depth]):
        for i, filters in enumerate(block):
            x = B.conv_norm_act(x, 2, filters * width // 64, 3, norm,
                                f"block{b + 1}_{i + 1}")
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"block{b + 1}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_drop")(x)
    return zoo_model(inputs, B.classifier(x, num_classes), name, classifier_activation)


vgg11 = register_model(
    "vgg11", family="vgg", builder=build_vgg, input_shape=(32, 32, 3), dataset="cifar10",
    slow=True, depth=11,
    description="VGG-11 CIFAR variant (5 conv blocks, single Dense head, 9.2M).")
vgg16 = register_model(
    "vgg16", family="vgg", builder=build_vgg, input_shape=(32, 32, 3), dataset="cifar10",
    slow=True, depth=16,
    description="VGG-16 CIFAR variant (5 conv blocks, single Dense head, 14.7M).")
