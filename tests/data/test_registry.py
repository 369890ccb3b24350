"""keras_normreg.data.info / list_datasets: static metadata, no data on disk needed."""

import dataclasses

import pytest

from keras_normreg import data

# Static metadata, the same on every backend: run once.
pytestmark = pytest.mark.tf_only

EXPECTED = {
    # name: (input_shape, num_classes, splits)
    "cifar10": ((32, 32, 3), 10, {"train": 50000, "test": 10000}),
    "cifar100": ((32, 32, 3), 100, {"train": 50000, "test": 10000}),
    "mnist": ((28, 28, 1), 10, {"train": 60000, "test": 10000}),
    "fashion_mnist": ((28, 28, 1), 10, {"train": 60000, "test": 10000}),
    "svhn_cropped": ((32, 32, 3), 10, {"train": 73257, "test": 26032, "extra": 531131}),
    "mnist1d": ((40, 1), 10, {"train": 4000, "test": 1000}),
    # 1797 digits, stratified 80/20: test = ceil(0.2 * 1797) = 360, train = 1437.
    "digits": ((8, 8, 1), 10, {"train": 1437, "test": 360}),
}


MODULAR = ["modular_add", "modular_div", "modular_mul", "modular_sub"]  # test_modular.py


def test_list_datasets_sorted():
    assert data.list_datasets() == sorted([*EXPECTED, *MODULAR])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_info_values(name):
    info = data.info(name, data_dir="/nonexistent")  # static: works without data
    shape, classes, splits = EXPECTED[name]
    assert info.name == name
    assert info.input_shape == shape and isinstance(info.input_shape, tuple)
    assert info.num_classes == classes
    assert info.splits == splits
    assert len(info.mean) == len(info.std) == shape[-1]
    assert info.embedded == (name in ("mnist1d", "digits"))
    assert isinstance(info.preprocessing, str) and info.preprocessing


def test_info_preprocessing_and_augmentation():
    assert data.info("cifar10").augment == "crop_flip"
    assert data.info("cifar100").augment == "crop_flip"
    assert data.info("svhn_cropped").augment == "crop"
    assert data.info("mnist").augment is None
    assert "pad-4 random crop + horizontal flip" in data.info("cifar10").preprocessing
    assert "pad-4 random crop" in data.info("svhn_cropped").preprocessing
    assert "flip" not in data.info("svhn_cropped").preprocessing
    assert data.info("cifar10").mean == (0.4914, 0.4822, 0.4465)
    assert data.info("cifar10").std == (0.2470, 0.2435, 0.2616)
    assert data.info("mnist").mean == (0.1307,) and data.info("mnist").std == (0.3081,)
    assert data.info("digits").scale == 16.0 and data.info("mnist1d").scale is None


def test_info_mnist1d_configs():
    info = data.info("mnist1d/num_samples_50000")
    assert info.name == "mnist1d/num_samples_50000"
    assert info.splits == {"train": 40000, "test": 10000}
    assert data.info("mnist1d/num_samples_120").splits == {"train": 96, "test": 24}


def test_info_is_frozen():
    info = data.info("cifar10")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_classes = 3


@pytest.mark.parametrize("name", ["imagenet", "CIFAR10", "", None, 3, "mnist1d/num_samples_15"])
def test_info_unknown_name(name):
    with pytest.raises(ValueError, match=r"\['cifar10', 'cifar100', 'digits'.*Received: name="):
        data.info(name)
