"""Fixtures shared by the data tests: one prepared tfds folder and the MNIST-1D reference arrays
for the whole session (preparing and regenerating them once saves ~1 s per use)."""

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    pytest.importorskip("tensorflow")  # the tfds tests skip without TensorFlow
    tfds = pytest.importorskip("tensorflow_datasets")
    from keras_normreg import data

    data.register_tfds_builders()  # done at import on the TensorFlow backend only
    path = tmp_path_factory.mktemp("tfds")
    tfds.builder("mnist1d", data_dir=str(path)).download_and_prepare()
    tfds.builder("digits", data_dir=str(path)).download_and_prepare()
    return str(path)


@pytest.fixture(scope="session")
def mnist1d_reference():
    """The mnist1d package's own generator output for its default arguments (independent of us)."""
    from mnist1d.data import get_dataset_args, make_dataset

    return make_dataset(get_dataset_args())
