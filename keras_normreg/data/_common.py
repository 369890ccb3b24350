"""Helpers shared by the embedded tfds builders."""

from __future__ import annotations

import sys

from keras_normreg.data._deps import require_tfds

require_tfds(__name__)

from etils import epath  # noqa: E402
from tensorflow_datasets.core import utils as tfds_utils  # noqa: E402


def already_registered(name: str) -> bool:
    """Whether tfds already holds a builder called ``name``.

    Passed as ``skip_registration=`` so that reloading a builder module does not raise
    tfds's "Dataset with name ... already registered".
    """
    from tensorflow_datasets.core import registered

    return name in registered._DATASET_REGISTRY


class OfflineBuilderMixin:
    """Put first in the bases of an embedded builder.

    ``DatasetBuilder.code_path`` (read by ``download_and_prepare`` to look for a
    ``checksums.tsv``) needs the ``importlib_resources`` backport for modules outside
    tensorflow_datasets, which tfds 4.9 does not install on Python >= 3.9
    (tensorflow/datasets#11212). Our builders download nothing, so their code path is simply
    the module file.
    """

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(sys.modules[cls.__module__].__file__)
