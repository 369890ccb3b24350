"""MNIST-1D as a real, offline tensorflow-datasets builder.

The data are *generated* locally with the reference generator of the ``mnist1d`` package,
``mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())`` (never its download path), so
``tfds.load("mnist1d", split="test")`` works without network once ``keras_normreg`` has been
imported. With the default arguments (seed 42, 5000 samples, 80/20 split) the generator gives the
published MNIST-1D arrays: 4000 training and 1000 test sequences of length 40.

Features (stored on disk):

- ``x``: ``float32`` of shape ``(40, 1)`` -- the generator's ``float64`` values rounded to
  ``float32`` and given a trailing channel axis, so the sequences feed ``Conv1D`` directly.
- ``label``: ``ClassLabel(num_classes=10)``.

Example order is the generator's order (``disable_shuffling=True``), so element ``i`` of split
``train`` is ``make_dataset(...)["x"][i]``. The arrays come from
:mod:`keras_normreg.data.embedded` (NumPy only), which :func:`keras_normreg.data.arrays` also
serves without TensorFlow.

Configs: ``"default"`` (5000 samples in all) and ``"num_samples_50000"``; any other size with
``mnist1d_config(num_samples)``, e.g.
``tfds.builder("mnist1d", config=mnist1d_config(20000), data_dir=...)`` (``keras_normreg.data.load``
accepts the name ``"mnist1d/num_samples_20000"`` for it). A larger config changes only
``num_samples`` in ``get_dataset_args()``; the split stays 80/20 and the seed stays 42.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_normreg.data._deps import require_tfds

require_tfds(__name__)

import tensorflow_datasets as tfds  # noqa: E402

from keras_normreg.data import embedded  # noqa: E402
from keras_normreg.data._common import OfflineBuilderMixin, already_registered  # noqa: E402
from keras_normreg.data.embedded import (  # noqa: E402, F401  (re-exported)
    DEFAULT_NUM_SAMPLES,
    SEQUENCE_LENGTH,
    TRAIN_FRACTION,
    generate,
)

NUM_CLASSES = embedded.MNIST1D_NUM_CLASSES
split_sizes = embedded.mnist1d_split_sizes


@dataclasses.dataclass(eq=False)
class Mnist1dConfig(tfds.core.BuilderConfig):
    """BuilderConfig of ``mnist1d``: ``num_samples`` is the total before the 80/20 split."""

    num_samples: int = DEFAULT_NUM_SAMPLES


def mnist1d_config(num_samples: int) -> Mnist1dConfig:
    """The config for ``num_samples`` sequences in all (a positive multiple of 10)."""
    embedded.check_num_samples(num_samples)
    if num_samples == DEFAULT_NUM_SAMPLES:
        return BUILDER_CONFIGS[0]
    sizes = split_sizes(num_samples)
    return Mnist1dConfig(
        name=embedded.mnist1d_config_name(num_samples),
        num_samples=num_samples,
        description=(
            f"MNIST-1D regenerated with num_samples={num_samples} "
            f"({sizes['train']} train / {sizes['test']} test), seed 42."
        ),
    )


def config_from_name(config_name: str) -> Mnist1dConfig | None:
    """``"default"`` or ``"num_samples_<N>"`` -> config; None when the name does not parse."""
    num_samples = embedded.num_samples_from_config_name(config_name)
    return None if num_samples is None else mnist1d_config(num_samples)


BUILDER_CONFIGS = [
    Mnist1dConfig(
        name="default",
        num_samples=DEFAULT_NUM_SAMPLES,
        description="The published MNIST-1D: 4000 train / 1000 test sequences of length 40.",
    ),
    Mnist1dConfig(
        name="num_samples_50000",
        num_samples=50000,
        description="MNIST-1D regenerated with num_samples=50000 (40000 train / 10000 test).",
    ),
]


class Mnist1d(OfflineBuilderMixin, tfds.core.GeneratorBasedBuilder, skip_registration=already_registered("mnist1d")):
    """MNIST-1D (Greydanus, 2020), generated offline with the reference generator."""

    name = "mnist1d"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Generated offline with mnist1d.data.make_dataset (seed 42)."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "MNIST-1D: 1D sequences of length 40 drawn from 10 digit templates with random "
                "padding, translation, scaling, shear and correlated/iid noise; generated "
                "offline with mnist1d.data.make_dataset (seed 42)."
            ),
            features=tfds.features.FeaturesDict({
                "x": tfds.features.Tensor(shape=(SEQUENCE_LENGTH, 1), dtype=np.float32),
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            }),
            supervised_keys=("x", "label"),
            homepage="https://github.com/greydanus/mnist1d",
            citation=(
                "@article{greydanus2020scaling, title={Scaling down Deep Learning}, "
                "author={Greydanus, Sam}, journal={arXiv preprint arXiv:2011.14439}, year={2020}}"
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        # the arrays data.arrays("mnist1d", ...) serves: float32 (n, 40, 1), int64 labels
        arrays = embedded.stored_splits("mnist1d", self.builder_config.num_samples)
        return {split: self._generate_examples(*xy) for split, xy in arrays.items()}

    def _generate_examples(self, x, y):
        for index, (features, label) in enumerate(zip(x, y, strict=True)):
            yield index, {"x": features, "label": int(label)}
