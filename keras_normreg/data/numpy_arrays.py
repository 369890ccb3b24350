"""``arrays()``: the embedded datasets (mnist1d, digits, modular_*) as NumPy arrays, without
TensorFlow.

The arrays are those the tfds builders store (they come from :mod:`keras_normreg.data.embedded`
and, for the modular arithmetic sets, :mod:`keras_normreg.data.modular`),
read in the same order and preprocessed like :func:`keras_normreg.data.load` does without
augmentation and shuffling (the constants of :mod:`keras_normreg.data.registry`), so
``arrays(name, split)`` equals the unshuffled, unaugmented ``load(name, split, ...)`` batches
concatenated. Splits follow tfds' split strings, percent rounding included
(:mod:`keras_normreg.data.splits`).
"""

from __future__ import annotations

import numpy as np

from keras_normreg._utils import received
from keras_normreg.data import embedded, modular, registry, splits

EMBEDDED = tuple(name for name in registry.list_datasets() if registry.resolve(name)[2].embedded)
_SETS = tuple(name for name in EMBEDDED if name not in modular.DATASETS)


def preprocess(x: np.ndarray, spec) -> np.ndarray:
    """The pipeline's deterministic preprocessing in float32: cast, ``/ scale``, ``(x - mean) /
    std`` (skipped for mean 0, std 1); token sets (``spec.dtype`` not float32) are only copied
    in their dtype. Returns a new array."""
    if spec.dtype != "float32":
        return np.array(x, dtype=spec.dtype)
    x = np.array(x, dtype=np.float32)
    if spec.scale is not None:
        x = x / np.float32(spec.scale)
    if not (spec.mean == (0.0,) and spec.std == (1.0,)):
        x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return x


def arrays(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of an embedded dataset as NumPy arrays (no TensorFlow needed).

    Args:
        name: ``"mnist1d"``, ``"digits"`` or ``"mnist1d/num_samples_<N>"`` (a larger MNIST-1D;
            generated on first use); ``"modular_add"``, ``"modular_sub"``, ``"modular_mul"``,
            ``"modular_div"`` or ``"modular_add/p_<prime>"`` (another modulus than 97).
        split: tfds split string: ``"train"``, ``"test"``, ``"all"``, sliced (``"train[:90%]"``,
            ``"train[90%:]"``, ``"test[:100]"``) or joined (``"train+test"``); percent bounds
            are rounded as tfds rounds them.

    Returns:
        ``(x, y)``: ``x`` float32 of shape ``(n,) + info(name).input_shape``, preprocessed like
        :func:`keras_normreg.data.load` (digits: ``(x / 16 - 0.305383) / 0.376119``; mnist1d:
        as generated; the modular sets: int32 tokens ``[a, OP, b, EQ]`` as stored, see
        :mod:`keras_normreg.data.modular`); ``y`` int64 labels in ``[0, num_classes)``. Order:
        the tfds order (unshuffled). Fresh arrays: the caller may modify them.

    Raises:
        ValueError: unknown ``name``, a dataset that is not embedded (read it with
            :func:`keras_normreg.data.load`), or a bad ``split``.
    """
    base, config, spec = registry.resolve(name)
    if not spec.embedded:
        raise ValueError(
            f"Argument `name` must name an embedded dataset {list(_SETS)} (or "
            f"'mnist1d/num_samples_<N>') or a modular arithmetic set {list(modular.DATASETS)} "
            f"(or 'modular_add/p_<prime>'); {base!r} is read with tensorflow-datasets: use "
            f"keras_normreg.data.load(). {received('name', name)}"
        )
    parts = splits.resolve(split, spec.splits)
    if base in modular.DATASETS:
        stored = modular.stored_splits(base, None if config is None else
                                       modular.p_from_config_name(config))
    else:
        num_samples = None if config is None else embedded.num_samples_from_config_name(config)
        stored = embedded.stored_splits(base, num_samples)
    xs = [stored[s][0][start:stop] for s, start, stop in parts]
    ys = [stored[s][1][start:stop] for s, start, stop in parts]
    x = preprocess(np.concatenate(xs) if len(xs) > 1 else xs[0], spec)
    y = np.array(np.concatenate(ys) if len(ys) > 1 else ys[0], dtype=np.int64)
    return x, y
