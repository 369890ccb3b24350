"""The embedded sets' arrays, generated with NumPy only (no TensorFlow, no tensorflow-datasets).

One code path: the tfds builders (:mod:`keras_normreg.data.mnist1d`,
:mod:`keras_normreg.data.digits`) write exactly the arrays :func:`stored_splits` returns, in the
same order, and :func:`keras_normreg.data.arrays` serves them (preprocessed) without TensorFlow.

``mnist1d``: ``mnist1d.data.make_dataset(get_dataset_args())`` with ``num_samples`` changed for
the larger configs (never the package's download path); features ``float32`` of shape
``(40, 1)`` (the generator's ``float64`` values rounded to ``float32``, plus a channel axis).

``digits``: scikit-learn's bundled 8x8 digits, ``train_test_split(test_size=0.2,
stratify=labels, random_state=0)``; features ``float32`` of shape ``(8, 8, 1)`` with the raw
intensities 0..16.

Labels are ``int64`` (what tfds' ``ClassLabel`` yields).
"""

from __future__ import annotations

import functools
import random
import re

import numpy as np

from keras_normreg._utils import check_number, received

# --- mnist1d -------------------------------------------------------------------------------------

SEQUENCE_LENGTH = 40
MNIST1D_NUM_CLASSES = 10
DEFAULT_NUM_SAMPLES = 5000
TRAIN_FRACTION = 0.8
_CONFIG_NAME = re.compile(r"^num_samples_(\d+)$")


def mnist1d_split_sizes(num_samples: int) -> dict[str, int]:
    """Split sizes ``make_dataset`` produces for ``num_samples`` (it keeps ``num_samples // 10``
    samples per class and puts the first ``int(0.8 * total)`` in ``train``)."""
    total = (num_samples // MNIST1D_NUM_CLASSES) * MNIST1D_NUM_CLASSES
    train = int(total * TRAIN_FRACTION)
    return {"train": train, "test": total - train}


def check_num_samples(num_samples) -> int:
    """Validate a total sample count of mnist1d (a positive multiple of 10); return it."""
    check_number("num_samples", num_samples, low=MNIST1D_NUM_CLASSES, integer=True)
    if num_samples % MNIST1D_NUM_CLASSES:
        raise ValueError(
            f"Argument `num_samples` must be a multiple of {MNIST1D_NUM_CLASSES}. "
            f"{received('num_samples', num_samples)}"
        )
    return int(num_samples)


def mnist1d_config_name(num_samples: int) -> str:
    """The tfds config name of ``num_samples``: ``"default"`` or ``"num_samples_<N>"``."""
    return "default" if num_samples == DEFAULT_NUM_SAMPLES else f"num_samples_{num_samples}"


def num_samples_from_config_name(config_name: str) -> int | None:
    """``"default"`` or ``"num_samples_<N>"`` -> N; None when the name does not parse."""
    if config_name == "default":
        return DEFAULT_NUM_SAMPLES
    match = _CONFIG_NAME.match(config_name)
    if match is None:
        return None
    num_samples = int(match.group(1))
    if num_samples < MNIST1D_NUM_CLASSES or num_samples % MNIST1D_NUM_CLASSES:
        return None
    return num_samples


def generate(num_samples: int = DEFAULT_NUM_SAMPLES) -> dict[str, np.ndarray]:
    """Run the reference generator; return its ``x``, ``y``, ``x_test``, ``y_test`` arrays.

    ``make_dataset`` reseeds the global ``random`` and ``numpy.random`` generators; their states
    are restored afterwards so that preparing the data does not change the caller's randomness.
    """
    from mnist1d.data import get_dataset_args, make_dataset  # heavy import (matplotlib)

    args = get_dataset_args()
    args.num_samples = int(num_samples)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {key: data[key] for key in ("x", "y", "x_test", "y_test")}


def mnist1d_splits(num_samples: int = DEFAULT_NUM_SAMPLES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (x, y), "test": (x, y)}`` as stored: ``x`` float32 ``(n, 40, 1)``, ``y`` int64."""
    data = generate(num_samples)

    def stored(x, y):
        return np.asarray(x, dtype=np.float32)[..., None], np.asarray(y, dtype=np.int64)

    return {"train": stored(data["x"], data["y"]), "test": stored(data["x_test"], data["y_test"])}


# --- digits --------------------------------------------------------------------------------------

DIGITS_NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
NUM_EXAMPLES = 1797
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def digits_split_sizes() -> dict[str, int]:
    """Sizes of the fixed split (``train_test_split`` rounds the test size up)."""
    test = int(np.ceil(NUM_EXAMPLES * TEST_FRACTION))
    return {"train": NUM_EXAMPLES - test, "test": test}


def digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The fixed stratified split: ``{"train": (images, labels), "test": (images, labels)}``,
    images float32 ``(n, 8, 8, 1)`` with the raw intensities, labels int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[..., None]
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


# --- both ----------------------------------------------------------------------------------------

def stored_splits(base: str, num_samples: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The stored arrays of embedded set ``base`` (``"mnist1d"`` or ``"digits"``), cached and
    read-only: ``{split: (features, labels)}`` in tfds' order (the builders' order).

    ``num_samples``: the mnist1d total (None: the default 5000); must be None for digits.
    """
    if base == "mnist1d":
        return _stored(base, check_num_samples(
            DEFAULT_NUM_SAMPLES if num_samples is None else num_samples))
    if base == "digits" and num_samples is None:
        return _stored(base, None)
    raise ValueError(
        "Argument `base` must be 'mnist1d' or 'digits' (num_samples only for mnist1d). "
        f"{received('base', base)}, {received('num_samples', num_samples)}"
    )


@functools.lru_cache(maxsize=4)
def _stored(base: str, num_samples: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    splits = mnist1d_splits(num_samples) if base == "mnist1d" else digits_splits()
    for arrays in splits.values():
        for array in arrays:
            array.flags.writeable = False
    return splits
