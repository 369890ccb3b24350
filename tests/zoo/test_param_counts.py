"""Parameter counts of the big families against hand-derived formulas and the papers' numbers.

Counting only: building a model is cheap (no forward pass), so the full-size models are built
here in the fast suite.
"""

import numpy as np
import pytest

from keras_normreg import zoo

# Parameter counts are the same on every backend, and building the full-size models costs
# ~35 s on JAX: TensorFlow only.
pytestmark = pytest.mark.tf_only


def counts(model):
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    frozen = sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
    return trainable, frozen


def conv(k, cin, cout):
    return k * k * cin * cout


def with_norm(convs, channels, norm):
    """(trainable, non-trainable) of conv kernels ``convs`` each followed by a norm, where
    ``channels`` is the total number of output channels of those convs."""
    if norm == "batch":  # gamma, beta + moving mean, moving variance
        return convs + 2 * channels, 2 * channels
    if norm in ("layer", "group"):  # gamma, beta
        return convs + 2 * channels, 0
    if norm == "rms":  # scale only (no centering, no beta)
        return convs + channels, 0
    if norm == "none":  # bias
        return convs + channels, 0
    if norm == "weight":  # v, g, bias
        return convs + 2 * channels, 0
    if norm == "weight_fixed":  # v, bias; g frozen
        return convs + channels, channels
    raise AssertionError(norm)


def resnet_expected(depth, classes=10, w=16, norm="batch"):
    """CIFAR ResNet, option A: convs are 3x3, every conv followed by the norm; no shortcut
    parameters; Dense head on 4w features."""
    n = (depth - 2) // 6
    kernels = conv(3, 3, w)
    channels = w
    for s, width in enumerate((w, 2 * w, 4 * w)):
        cin = w if s == 0 else width // 2
        kernels += conv(3, cin, width) + (2 * n - 1) * conv(3, width, width)
        channels += 2 * n * width
    trainable, frozen = with_norm(kernels, channels, norm)
    return trainable + 4 * w * classes + classes, frozen


def _preact_counts(stem, stages, classes):
    """Pre-activation ResNet with BN: stem conv to ``stem`` channels (no norm), then per stage
    ``(width, blocks)`` blocks BN-conv-BN-conv (+1x1 projection where the shape changes, and at
    the first block of every later stage), final BN, Dense. Returns (trainable, frozen)."""
    kernels = conv(3, 3, stem)
    bn_channels = 0
    cin = stem
    for s, (cout, nb) in enumerate(stages):
        for b in range(nb):
            kernels += conv(3, cin, cout) + conv(3, cout, cout)
            bn_channels += cin + cout
            if cin != cout or (s > 0 and b == 0):
                kernels += conv(1, cin, cout)
            cin = cout
    bn_channels += cin
    return kernels + 2 * bn_channels + cin * classes + classes, 2 * bn_channels


def preact_expected(blocks=(2, 2, 2, 2), w=64, classes=10):
    """Pre-activation ResNet: widths w, 2w, 4w, ... with ``blocks`` blocks per stage."""
    return _preact_counts(w, [(w * 2**s, nb) for s, nb in enumerate(blocks)], classes)


def wrn_expected(depth, k, classes=10):
    """Wide ResNet-depth-k: stem 16, three stages of (depth - 4) / 6 blocks, widths 16k/32k/64k."""
    n = (depth - 4) // 6
    return _preact_counts(16, [(16 * k, n), (32 * k, n), (64 * k, n)], classes)


VGG = {11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
       16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
            512, 512, 512, "M"]}


def vgg_expected(depth, classes=10):
    kernels, channels, cin = 0, 0, 3
    for v in VGG[depth]:
        if v != "M":
            kernels += conv(3, cin, v)
            channels += v
            cin = v
    return kernels + 2 * channels + 512 * classes + classes, 2 * channels


def test_hand_counts_agree_with_known_values():
    # Independent sanity of the formulas themselves (published / widely reproduced counts).
    assert resnet_expected(20)[0] == 269_722
    assert wrn_expected(28, 10)[0] == 36_479_194
    assert preact_expected()[0] - 2 * 512 == 11_171_146  # pytorch-cifar (no final BN)


@pytest.mark.parametrize("depth,paper", [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6),
                                         (56, 0.85e6), (110, 1.7e6)])
def test_resnet_counts(depth, paper):
    model = zoo.create(f"resnet{depth}")
    trainable, frozen = counts(model)
    assert (trainable, frozen) == resnet_expected(depth)
    assert model.count_params() == trainable + frozen
    assert abs(trainable - paper) / paper < 0.02


@pytest.mark.parametrize("norm", ["none", "batch", "l1_batch", "topk_batch", "layer", "group",
                                  "rms", "weight", "weight_fixed"])
def test_resnet20_counts_per_norm(norm):
    expected_norm = "batch" if norm in ("l1_batch", "topk_batch") else norm
    model = zoo.create("resnet20", norm=norm, num_classes=7)
    assert counts(model) == resnet_expected(20, classes=7, norm=expected_norm)


def test_resnet_option_b_adds_projections():
    a, _ = counts(zoo.create("resnet20"))
    b, _ = counts(zoo.create("resnet20", shortcut="B"))
    # two strided 1x1 convs (16->32, 32->64), each with a BN (gamma, beta)
    assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_resnet_width_override():
    model = zoo.create("resnet32", width=8, num_classes=100)
    assert counts(model) == resnet_expected(32, classes=100, w=8)


def test_preact_resnet18_count():
    model = zoo.create("preact_resnet18")
    trainable, frozen = counts(model)
    assert (trainable, frozen) == preact_expected()
    assert abs(trainable - 11.2e6) / 11.2e6 < 0.02
    reduced = zoo.create("preact_resnet18", width=8, blocks=(1, 1, 1, 1), num_classes=3)
    assert counts(reduced) == preact_expected((1, 1, 1, 1), 8, 3)


@pytest.mark.parametrize("name,depth,k,paper", [("wrn16_4", 16, 4, 2.7e6),
                                                ("wrn28_10", 28, 10, 36.5e6)])
def test_wrn_counts(name, depth, k, paper):
    model = zoo.create(name)
    trainable, frozen = counts(model)
    assert (trainable, frozen) == wrn_expected(depth, k)
    assert abs(trainable - paper) / paper < 0.02
    assert counts(zoo.create(name, depth=10, widen_factor=1)) == wrn_expected(10, 1)


@pytest.mark.parametrize("name,depth,paper", [("vgg11", 11, 9.2e6), ("vgg16", 16, 14.7e6)])
def test_vgg_counts(name, depth, paper):
    model = zoo.create(name)
    trainable, frozen = counts(model)
    assert (trainable, frozen) == vgg_expected(depth)
    assert abs(trainable - paper) / paper < 0.02
