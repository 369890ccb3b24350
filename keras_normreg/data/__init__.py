"""Datasets: tf.data pipelines over tensorflow-datasets, plus embedded offline sets.

The embedded sets need no network:

- ``mnist1d``, generated with the reference generator of the ``mnist1d`` package;
- ``digits``, scikit-learn's bundled 8x8 digits;
- ``modular_add``, ``modular_sub``, ``modular_mul``, ``modular_div``: every equation
  ``a op b = c (mod p)`` as int32 tokens (Power et al., 2022, "Grokking"), generated with NumPy;
  one split ``train`` in a fixed order, cut with percent slices (``"train[:30%]"`` /
  ``"train[30%:]"``); see :mod:`keras_normreg.data.modular`.

Without TensorFlow (any Keras backend): :func:`arrays` gives the embedded sets as NumPy arrays
(preprocessed like the pipelines, tfds split strings such as ``"train[:90%]"``), and
:func:`info`, :func:`list_datasets`, :class:`DatasetInfo` give the static metadata.

With TensorFlow and tensorflow-datasets installed, importing this package also registers the
embedded sets as real tfds builders (:mod:`keras_normreg.data.mnist1d`,
:mod:`keras_normreg.data.digits`, :mod:`keras_normreg.data.modular_builders`), so
``tfds.load("mnist1d", split="test")`` works after ``import keras_normreg``; and :func:`load`
(batched tf.data pipelines), :func:`load_epochs`, :func:`is_prepared`,
:class:`DatasetNotFoundError`, :class:`Mnist1d`, :class:`Digits`, :class:`Mnist1dConfig`,
:func:`mnist1d_config`, :class:`ModularAdd`, :class:`ModularSub`, :class:`ModularMul`,
:class:`ModularDiv`, :class:`ModularConfig` and :func:`modular_config` are available. Those are imported lazily on
first access (PEP 562); without TensorFlow, accessing them raises an ImportError that says what
to install. Preprocessing constants are documented in :mod:`keras_normreg.data.registry`.
"""

import importlib

import keras

from keras_normreg.data import _deps
from keras_normreg.data.numpy_arrays import arrays
from keras_normreg.data.registry import DatasetInfo, info, list_datasets

# TensorFlow-only names -> the submodule that defines them (imported on first access).
_LAZY = {
    "load": "pipelines",
    "load_epochs": "pipelines",
    "is_prepared": "pipelines",
    "DatasetNotFoundError": "pipelines",
    "Digits": "digits",
    "Mnist1d": "mnist1d",
    "Mnist1dConfig": "mnist1d",
    "mnist1d_config": "mnist1d",
    "ModularAdd": "modular_builders",
    "ModularSub": "modular_builders",
    "ModularMul": "modular_builders",
    "ModularDiv": "modular_builders",
    "ModularConfig": "modular_builders",
    "modular_config": "modular_builders",
}
_LAZY_MODULES = ("pipelines", "digits", "mnist1d", "modular_builders", "_common")

__all__ = ["DatasetInfo", "arrays", "info", "list_datasets"]


def register_tfds_builders() -> None:
    """Register the embedded sets (mnist1d, digits, modular_*) as tfds builders, so that
    ``tfds.load("mnist1d")`` works; imports TensorFlow. Done at import on the TensorFlow
    backend and on first use of a tf.data name (``load``, ...) on the others; idempotent."""
    for module in ("digits", "mnist1d", "modular_builders"):
        importlib.import_module(f"{__name__}.{module}")


if _deps.tfds_available():
    __all__ += sorted([*_LAZY, "register_tfds_builders"])
    if keras.backend.backend() == "tensorflow":
        # ``tfds.load("mnist1d")`` works after ``import keras_normreg``, as it always has. On
        # the JAX and torch backends TensorFlow is imported only when a tf.data name is used.
        register_tfds_builders()


def __getattr__(name):
    module = _LAZY.get(name, name if name in _LAZY_MODULES else None)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    missing = _deps.missing_modules()
    if missing:
        raise _deps.missing_error(f"keras_normreg.data.{name}", missing)
    register_tfds_builders()
    value = importlib.import_module(f"{__name__}.{module}")
    if name in _LAZY:
        value = getattr(value, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
