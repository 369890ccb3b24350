"""The embedded offline tfds builders: mnist1d (mnist1d_reference generator) and digits (scikit-learn)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")  # the tfds builders need TensorFlow (see test_arrays.py)
tfds = pytest.importorskip("tensorflow_datasets")

import keras_normreg  # noqa: E402, F401  (registers the builders)
from keras_normreg.data import digits as digits_mod  # noqa: E402
from keras_normreg.data import mnist1d as mnist1d_mod  # noqa: E402

# The tfds builders need TensorFlow.
pytestmark = pytest.mark.tf_only

REPO = Path(__file__).resolve().parents[2]

# sklearn's load_digits class counts (0..9), written out by hand from its documentation/data.
DIGITS_CLASS_COUNTS = np.array([178, 182, 177, 183, 181, 182, 181, 179, 174, 180])


def _arrays(name, split, data_dir, key):
    ds = tfds.load(name, split=split, data_dir=data_dir)
    examples = list(tfds.as_numpy(ds))
    return np.stack([e[key] for e in examples]), np.array([e["label"] for e in examples])


# --- basics --------------------------------------------------------------------------------------

def test_builders_registered_with_tfds():
    builders = tfds.list_builders(with_community_datasets=False)
    assert "mnist1d" in builders
    assert "digits" in builders


def test_tfds_load_mnist1d_cardinality(data_dir):
    test = tfds.load("mnist1d", split="test", data_dir=data_dir)
    train = tfds.load("mnist1d", split="train", data_dir=data_dir)
    assert int(test.cardinality()) == 1000
    assert int(train.cardinality()) == 4000
    spec = test.element_spec
    assert spec["x"].shape == (40, 1) and spec["x"].dtype.name == "float32"
    assert spec["label"].dtype.name == "int64"


def test_tfds_load_digits_cardinality(data_dir):
    builder = tfds.builder("digits", data_dir=data_dir)
    assert builder.info.splits["train"].num_examples == 1437
    assert builder.info.splits["test"].num_examples == 360
    images, _ = _arrays("digits", "test", data_dir, "image")
    assert images.shape == (360, 8, 8, 1) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 16.0  # raw intensities, not scaled


def test_prepare_does_not_touch_global_rng():
    import random

    np.random.seed(7)
    random.seed(7)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(7)
    random.seed(7)
    mnist1d_mod.generate(100)
    assert np.random.rand() == expected_np
    assert random.random() == expected_py


# --- correctness against independent references -------------------------------------------------

def test_mnist1d_arrays_equal_make_dataset(data_dir, mnist1d_reference):
    """Element-by-element equality with mnist1d.data.make_dataset(get_dataset_args()), in order."""
    x_train, y_train = _arrays("mnist1d", "train", data_dir, "x")
    x_test, y_test = _arrays("mnist1d", "test", data_dir, "x")
    assert mnist1d_reference["x"].shape == (4000, 40) and mnist1d_reference["x_test"].shape == (1000, 40)
    np.testing.assert_array_equal(x_train[..., 0], mnist1d_reference["x"].astype(np.float32))
    np.testing.assert_array_equal(x_test[..., 0], mnist1d_reference["x_test"].astype(np.float32))
    np.testing.assert_array_equal(y_train, mnist1d_reference["y"])
    np.testing.assert_array_equal(y_test, mnist1d_reference["y_test"])


def test_mnist1d_small_config(tmp_path):
    config = mnist1d_mod.mnist1d_config(100)
    assert config.name == "num_samples_100"
    builder = tfds.builder("mnist1d", config=config, data_dir=str(tmp_path))
    builder.download_and_prepare()
    assert builder.info.splits["train"].num_examples == 80
    assert builder.info.splits["test"].num_examples == 20
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 100
    ref = make_dataset(args)
    x = np.stack([e["x"] for e in tfds.as_numpy(builder.as_dataset(split="test"))])
    np.testing.assert_array_equal(x[..., 0], ref["x_test"].astype(np.float32))


def test_mnist1d_split_sizes():
    assert mnist1d_mod.split_sizes(5000) == {"train": 4000, "test": 1000}
    assert mnist1d_mod.split_sizes(50000) == {"train": 40000, "test": 10000}
    assert [c.name for c in mnist1d_mod.BUILDER_CONFIGS] == ["default", "num_samples_50000"]
    assert mnist1d_mod.mnist1d_config(5000) is mnist1d_mod.BUILDER_CONFIGS[0]


def test_digits_split_sizes_and_stratification(data_dir):
    _, y_train = _arrays("digits", "train", data_dir, "image")
    _, y_test = _arrays("digits", "test", data_dir, "image")
    assert len(y_train) == 1437 and len(y_test) == 360
    assert digits_mod.split_sizes() == {"train": 1437, "test": 360}
    train_counts = np.bincount(y_train, minlength=10)
    test_counts = np.bincount(y_test, minlength=10)
    np.testing.assert_array_equal(train_counts + test_counts, DIGITS_CLASS_COUNTS)
    # Stratified: each class keeps 20% (+-1 for rounding) of its examples in test.
    assert np.all(np.abs(test_counts - 0.2 * DIGITS_CLASS_COUNTS) <= 1.0)
    np.testing.assert_array_equal(test_counts, [36, 36, 35, 37, 36, 37, 36, 36, 35, 36])


def test_digits_images_equal_sklearn_split(data_dir):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    _, x_test, _, y_test = train_test_split(
        bunch.images, bunch.target, test_size=0.2, stratify=bunch.target, random_state=0)
    images, labels = _arrays("digits", "test", data_dir, "image")
    np.testing.assert_array_equal(images[..., 0], x_test.astype(np.float32))
    np.testing.assert_array_equal(labels, y_test)


def test_import_then_tfds_load_in_fresh_process(tmp_path):
    """The one-liner from the README works offline with TFDS_DATA_DIR pointing at a new dir."""
    env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3")
    code = ("import tensorflow_datasets as tfds, keras_normreg; "
            "print(tfds.load('mnist1d', split='test').cardinality())")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tf.Tensor(1000," in result.stdout
    assert (tmp_path / "mnist1d" / "default" / "1.0.0" / "dataset_info.json").exists()


# --- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [15, 0, -10, 2.5, "100"])
def test_mnist1d_config_rejects_bad_num_samples(value):
    with pytest.raises(ValueError, match=r"num_samples.*Received: num_samples="):
        mnist1d_mod.mnist1d_config(value)


def test_mnist1d_config_from_name():
    assert mnist1d_mod.config_from_name("num_samples_200").num_samples == 200
    assert mnist1d_mod.config_from_name("default").num_samples == 5000
    assert mnist1d_mod.config_from_name("num_samples_15") is None
    assert mnist1d_mod.config_from_name("big") is None
