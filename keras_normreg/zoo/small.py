"""Small families for the embedded datasets: MLP, 1-D CNN (MNIST-1D), 2-D CNN (digits)."""

from __future__ import annotations

import keras

from keras_normreg._utils import check_number
from keras_normreg.zoo import _blocks as B
from keras_normreg.zoo._model import check_classifier_activation, zoo_model
from keras_normreg.zoo.registry import register_model


def build_mlp(num_classes, input_shape, norm="batch", name="mlp", *, units=(256, 256),
              dropout=0.0, classifier_activation=None):
    """Multi-layer perceptron: Flatten, then ``[Dense -> norm -> ReLU -> Dropout] * len(units)``,
    then the Dense head.

    ``classifier_activation`` (every zoo builder has it, keras.applications' argument with the
    opposite default): None or ``"linear"`` returns the head's logits; ``"softmax"``
    probabilities; any other Keras activation name is applied after the head.
    """
    B.check_positive_ints("units", units)
    check_number("dropout", dropout, low=0, high=1, high_inclusive=False)
    check_classifier_activation(classifier_activation)
    inputs = keras.Input(input_shape, name="inputs")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i, u in enumerate(units):
        x = B.dense(u, norm, f"dense{i + 1}")(x)
        x = B.norm_act(x, norm, f"dense{i + 1}")
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dense{i + 1}_drop")(x)
    return zoo_model(inputs, B.classifier(x, num_classes), name, classifier_activation)


def build_cnn1d(num_classes, input_shape, norm="batch", name="cnn1d", *,
                widths=(32, 32, 64, 64), kernel_size=5, pool_every=2, dropout=0.0,
                classifier_activation=None):
    """1-D CNN for MNIST-1D: ``[Conv1D -> norm -> ReLU]`` blocks, max-pool(2) after every
    ``pool_every`` blocks, global average pooling, Dense logits (``classifier_activation``: see
    :func:`build_mlp`).

    The default (4 convs of 32/32/64/64 filters, k=5, 37k parameters) reaches ~0.99 test accuracy
    on MNIST-1D in 60 epochs; the MNIST-1D paper's CNN reports 0.94.
    """
    B.check_positive_ints("widths", widths)
    B.check_positive_ints("kernel_size", kernel_size)
    check_number("pool_every", pool_every, low=0, integer=True)
    check_number("dropout", dropout, low=0, high=1, high_inclusive=False)
    check_classifier_activation(classifier_activation)
    inputs = keras.Input(input_shape, name="inputs")
    x = inputs
    if len(input_shape) == 1:
        x = keras.layers.Reshape((input_shape[0], 1), name="to_channels")(x)
    for i, w in enumerate(widths):
        x = B.conv_norm_act(x, 1, w, kernel_size, norm, f"block{i + 1}")
        if pool_every and (i + 1) % pool_every == 0 and i + 1 < len(widths):
            x = keras.layers.MaxPooling1D(2, name=f"block{i + 1}_pool")(x)
    x = keras.layers.GlobalAveragePooling1D(name="gap")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_drop")(x)
    return zoo_model(inputs, B.classifier(x, num_classes), name, classifier_activation)


def build_cnn2d(num_classes, input_shape, norm="batch", name="cnn2d", *, widths=(32, 64),
                kernel_size=3, dropout=0.0, classifier_activation=None):
    """Small 2-D CNN for 8x8 digits: ``[Conv2D -> norm -> ReLU -> MaxPool(2)]`` per width,
    global average pooling, Dense logits (``classifier_activation``: see :func:`build_mlp`)."""
    B.check_positive_ints("widths", widths)
    check_number("dropout", dropout, low=0, high=1, high_inclusive=False)
    check_classifier_activation(classifier_activation)
    inputs = keras.Input(input_shape, name="inputs")
    x = inputs
    for i, w in enumerate(widths):
        x = B.conv_norm_act(x, 2, w, kernel_size, norm, f"block{i + 1}")
        if x.shape[1] >= 4:
            x = keras.layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_drop")(x)
    return zoo_model(inputs, B.classifier(x, num_classes), name, classifier_activation)


mlp = register_model("mlp", family="mlp", builder=build_mlp, input_shape=(40,),
                     dataset="mnist1d", description="MLP, 2 hidden layers of 256.")
cnn1d = register_model("cnn1d", family="cnn1d", builder=build_cnn1d, input_shape=(40, 1),
                       dataset="mnist1d",
                       description="1-D CNN for MNIST-1D (4 convs 32/32/64/64, GAP).")
cnn_digits = register_model("cnn_digits", family="cnn2d", builder=build_cnn2d,
                            input_shape=(8, 8, 1), dataset="digits",
                            description="Small 2-D CNN for 8x8 digits (32/64 filters, GAP).")
