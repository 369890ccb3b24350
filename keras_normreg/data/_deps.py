"""Whether TensorFlow and tensorflow-datasets can be imported, and the error when they cannot.

NumPy only: imported by ``keras_normreg.data`` (to decide whether to register the tfds builders,
and to explain a missing dependency) and first thing by the TensorFlow-only modules
(``pipelines``, the tfds builders) so that importing them without TensorFlow says what to do.
"""

from __future__ import annotations

import importlib.util

TF_MODULES = ("tensorflow", "tensorflow_datasets")


def missing_modules() -> list[str]:
    """The TensorFlow modules (of :data:`TF_MODULES`) that cannot be imported; none imported.

    A module set to None in ``sys.modules`` (the standard way to hide one) counts as missing.
    """
    return [name for name in TF_MODULES if importlib.util.find_spec(name) is None]


def tfds_available() -> bool:
    """True when both TensorFlow and tensorflow-datasets are installed."""
    return not missing_modules()


def missing_error(what: str, missing: list[str]) -> ImportError:
    return ImportError(
        f"{what} needs TensorFlow and tensorflow-datasets (tf.data pipelines and the tfds "
        f"builders), but {' and '.join(missing)} cannot be imported. Install TensorFlow with "
        "`pip install 'keras_normreg[cpu]'` (or 'keras_normreg[gpu]' for CUDA GPUs). Without "
        "it, the embedded datasets are available as NumPy arrays: "
        "`keras_normreg.data.arrays('mnist1d', 'train')` (also 'digits', and splits such as "
        "'test' or 'train[:90%]').",
        name=missing[0],
    )


def require_tfds(what: str) -> None:
    """Raise the :func:`missing_error` ImportError unless TensorFlow and tfds are installed."""
    missing = missing_modules()
    if missing:
        raise missing_error(what, missing)
