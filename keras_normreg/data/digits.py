"""scikit-learn's 8x8 handwritten digits as a real, offline tensorflow-datasets builder.

The 1797 images ship inside scikit-learn (``sklearn.datasets.load_digits``), so preparing this
dataset needs no network. The split is fixed: ``train_test_split(test_size=0.2,
stratify=labels, random_state=0)`` gives 1437 ``train`` and 360 ``test`` images with the class
proportions of the whole set.

Features (stored on disk):

- ``image``: ``float32`` of shape ``(8, 8, 1)`` with the raw intensities 0..16 (the pipeline in
  :func:`keras_normreg.data.load` scales and standardizes them).
- ``label``: ``ClassLabel(num_classes=10)``.

Example order is the order ``train_test_split`` returns (``disable_shuffling=True``). The arrays
come from :mod:`keras_normreg.data.embedded` (NumPy only), which :func:`keras_normreg.data.arrays`
also serves without TensorFlow.
"""

from __future__ import annotations

import numpy as np

from keras_normreg.data._deps import require_tfds

require_tfds(__name__)

import tensorflow_datasets as tfds  # noqa: E402

from keras_normreg.data import embedded  # noqa: E402
from keras_normreg.data._common import OfflineBuilderMixin, already_registered  # noqa: E402
from keras_normreg.data.embedded import (  # noqa: E402, F401  (re-exported)
    IMAGE_SHAPE,
    NUM_EXAMPLES,
    SPLIT_SEED,
    TEST_FRACTION,
)

NUM_CLASSES = embedded.DIGITS_NUM_CLASSES
split_sizes = embedded.digits_split_sizes
split_arrays = embedded.digits_splits


class Digits(OfflineBuilderMixin, tfds.core.GeneratorBasedBuilder, skip_registration=already_registered("digits")):
    """scikit-learn's 8x8 digits (UCI optical recognition of handwritten digits, test part)."""

    name = "digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "sklearn load_digits, stratified 80/20 split (random_state=0)."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "8x8 grey images of handwritten digits (intensities 0..16) bundled with "
                "scikit-learn; fixed stratified 80/20 split with random_state=0."
            ),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.float32),
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            }),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        arrays = embedded.stored_splits("digits")  # what data.arrays("digits", ...) serves
        return {split: self._generate_examples(*xy) for split, xy in arrays.items()}

    def _generate_examples(self, images, labels):
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield index, {"image": image, "label": int(label)}
