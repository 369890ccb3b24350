"""Static metadata of every dataset ``keras_normreg.data`` knows, and ``info()`` / ``list_datasets()``.

The table below is known ahead of time, so :func:`info` answers without the data on disk.

Preprocessing (applied by :func:`keras_normreg.data.load`, all in float32 except the integer
tokens of the modular sets):

============== ========= ======================================= =======================================
dataset        scale     mean (per channel)                      std (per channel)
============== ========= ======================================= =======================================
cifar10        x / 255   (0.4914, 0.4822, 0.4465)                (0.2470, 0.2435, 0.2616)
cifar100       x / 255   (0.5071, 0.4865, 0.4409)                (0.2673, 0.2564, 0.2762)
mnist          x / 255   (0.1307,)                               (0.3081,)
fashion_mnist  x / 255   (0.2860,)                               (0.3530,)
svhn_cropped   x / 255   (0.4377, 0.4438, 0.4728)                (0.1980, 0.2010, 0.1970)
digits         x / 16    (0.305383,) one constant for all pixels (0.376119,)
mnist1d        none      (0.0,)                                  (1.0,)
modular_*      none      none: ``()``                            none: ``()``
============== ========= ======================================= =======================================

The image constants are the per-channel mean and standard deviation of each training split
(after scaling to [0, 1]), the values in common use. ``digits`` is standardized with one fixed
pair of constants: the mean and standard deviation of all pixels of its training split after
``x / 16`` (per-pixel statistics are avoided because border pixels are constant zero in training).
``mnist1d`` is left as generated: ``make_dataset`` already centres the whole set to mean 0 and
standard deviation 1 (training split: mean -0.0003, std 0.998).
The modular arithmetic sets (``modular_add``, ``modular_sub``, ``modular_mul``, ``modular_div``;
:mod:`keras_normreg.data.modular`) are token ids for an embedding: served as stored, ``int32``
(``DatasetInfo.dtype``), with no scaling and no normalization (``mean == std == ()``);
``DatasetInfo.vocab_size`` is ``p + 2``.

Default training augmentation: pad-4 (zeros) random crop + horizontal flip for cifar10/cifar100;
pad-4 random crop without flip for svhn_cropped (digits are not mirror-symmetric); none otherwise.
"""

from __future__ import annotations

import dataclasses
import math

from keras_normreg._utils import received
from keras_normreg.data import embedded, modular

AUGMENTATIONS = ("crop", "crop_flip")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What :func:`info` returns.

    Attributes:
        name: dataset name as given to :func:`keras_normreg.data.load`.
        input_shape: shape of one example as the pipeline yields it (no batch axis).
        num_classes: number of labels.
        splits: ``{split name: number of examples}``.
        preprocessing: human-readable description of what the pipeline does.
        mean, std: normalization constants (per channel; one value for single-channel data).
        scale: the divisor applied before normalization (None: no scaling).
        augment: default augmentation on training splits (``"crop_flip"``, ``"crop"`` or None).
        embedded: True for the sets generated offline (mnist1d, digits, modular_*), which
            :func:`keras_normreg.data.arrays` serves on every backend.
        dtype: dtype of the features as served: ``"float32"``, or ``"int32"`` for the token ids
            of the modular sets (mean and std are then empty: no normalization).
        vocab_size: number of token ids of a token dataset (``p + 2`` for the modular sets);
            None for the others.
    """

    name: str
    input_shape: tuple
    num_classes: int
    splits: dict
    preprocessing: str
    mean: tuple
    std: tuple
    scale: float | None
    augment: str | None
    embedded: bool
    dtype: str = "float32"
    vocab_size: int | None = None


@dataclasses.dataclass(frozen=True)
class _Spec:
    input_shape: tuple
    num_classes: int
    splits: dict
    mean: tuple
    std: tuple
    scale: float | None
    augment: str | None
    embedded: bool
    storage_dtype_bytes: int  # bytes per scalar as stored (for the cache-size estimate)
    train_splits: tuple = ("train",)
    dtype: str = "float32"  # features as served; not "float32": tokens, used as stored
    vocab_size: int | None = None


def _modular_spec(name: str, p: int) -> _Spec:
    """The spec of a modular arithmetic set with modulus ``p`` (int32 tokens, no preprocessing)."""
    return _Spec((modular.SEQUENCE_LENGTH,), modular.num_classes(p), modular.split_sizes(name, p),
                 (), (), None, None, True, 4, dtype="int32", vocab_size=modular.vocab_size(p))


_SPECS: dict[str, _Spec] = {
    "cifar10": _Spec((32, 32, 3), 10, {"train": 50000, "test": 10000},
                     (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 255.0, "crop_flip",
                     False, 1),
    "cifar100": _Spec((32, 32, 3), 100, {"train": 50000, "test": 10000},
                      (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 255.0, "crop_flip",
                      False, 1),
    "mnist": _Spec((28, 28, 1), 10, {"train": 60000, "test": 10000},
                   (0.1307,), (0.3081,), 255.0, None, False, 1),
    "fashion_mnist": _Spec((28, 28, 1), 10, {"train": 60000, "test": 10000},
                           (0.2860,), (0.3530,), 255.0, None, False, 1),
    "svhn_cropped": _Spec((32, 32, 3), 10, {"train": 73257, "test": 26032, "extra": 531131},
                          (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 255.0, "crop",
                          False, 1, ("train", "extra")),
    "digits": _Spec(embedded.IMAGE_SHAPE, embedded.DIGITS_NUM_CLASSES,
                    embedded.digits_split_sizes(), (0.305383,), (0.376119,), 16.0, None, True, 4),
    "mnist1d": _Spec((embedded.SEQUENCE_LENGTH, 1), embedded.MNIST1D_NUM_CLASSES,
                     embedded.mnist1d_split_sizes(embedded.DEFAULT_NUM_SAMPLES),
                     (0.0,), (1.0,), None, None, True, 4),
    **{name: _modular_spec(name, modular.DEFAULT_P) for name in modular.DATASETS},
}


def list_datasets() -> list[str]:
    """Sorted names accepted by :func:`keras_normreg.data.load` and :func:`info`.

    ``mnist1d`` also accepts a config: ``"mnist1d/num_samples_50000"`` (any multiple of 10);
    the modular sets a modulus: ``"modular_add/p_113"`` (any prime in [3, 4093]).
    """
    return sorted(_SPECS)


def _unknown(name) -> ValueError:
    return ValueError(
        f"Unknown dataset. Argument `name` must be one of {list_datasets()} "
        f"(mnist1d also as 'mnist1d/num_samples_<N>', the modular sets as "
        f"'modular_add/p_<prime>'). {received('name', name)}"
    )


def resolve(name) -> tuple[str, str | None, _Spec]:
    """``name`` -> (base name, config name or None, spec); ValueError for unknown names."""
    if not isinstance(name, str):
        raise _unknown(name)
    base, _, config = name.partition("/")
    if base not in _SPECS:
        raise _unknown(name)
    spec = _SPECS[base]
    if not config:
        return base, None, spec
    if base in modular.DATASETS:
        p = modular.p_from_config_name(config)
        if p is None:
            raise _unknown(name)
        problem = modular.prime_problem(p)
        if problem is not None:
            raise ValueError(
                f"Argument `name` selects the modulus with '{base}/p_<p>', and p must be a "
                f"prime in [3, {modular.MAX_P}]; {problem}. {received('name', name)}"
            )
        return base, modular.config_name(p), _modular_spec(base, p)
    if base != "mnist1d":
        raise _unknown(name)
    num_samples = embedded.num_samples_from_config_name(config)
    if num_samples is None:
        raise _unknown(name)
    spec = dataclasses.replace(spec, splits=embedded.mnist1d_split_sizes(num_samples))
    return base, embedded.mnist1d_config_name(num_samples), spec


def _fmt(values: tuple) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def describe(spec: _Spec) -> str:
    """The ``preprocessing`` text of :class:`DatasetInfo`."""
    if spec.dtype != "float32":
        return (f"{spec.dtype} token ids as stored, vocabulary {spec.vocab_size}; "
                f"preprocessing: none (no scaling, no normalization); no augmentation")
    steps = ["cast to float32"]
    if spec.scale is not None:
        steps.append(f"divide by {spec.scale:g}")
    if spec.mean == (0.0,) and spec.std == (1.0,):
        steps.append("no normalization (the generator already standardizes the set)")
    elif len(spec.mean) == 1:
        steps.append(f"(x - {spec.mean[0]:g}) / {spec.std[0]:g}")
    else:
        steps.append(f"per-channel (x - mean) / std, mean={_fmt(spec.mean)}, std={_fmt(spec.std)}")
    if spec.augment is None:
        steps.append("no augmentation by default")
    else:
        pad = crop_padding(spec)
        what = f"pad-{pad} random crop" + (" + horizontal flip" if spec.augment == "crop_flip" else "")
        steps.append(f"training augmentation: {what}")
    return "; ".join(steps)


def info(name: str, data_dir=None) -> DatasetInfo:
    """Static metadata of dataset ``name`` (no data needed on disk).

    Args:
        name: one of :func:`list_datasets` (or ``"mnist1d/num_samples_<N>"``,
            ``"modular_add/p_<prime>"``).
        data_dir: accepted for symmetry with :func:`keras_normreg.data.load`; the metadata is
            static, so it is not read.

    Returns:
        A frozen :class:`DatasetInfo`.
    """
    del data_dir
    base, config, spec = resolve(name)
    return DatasetInfo(
        name=base if config is None else f"{base}/{config}",
        input_shape=tuple(spec.input_shape),
        num_classes=spec.num_classes,
        splits=dict(spec.splits),
        preprocessing=describe(spec),
        mean=spec.mean,
        std=spec.std,
        scale=spec.scale,
        augment=spec.augment,
        embedded=spec.embedded,
        dtype=spec.dtype,
        vocab_size=spec.vocab_size,
    )


def crop_padding(spec: _Spec) -> int:
    """Zero padding of the random-crop augmentation: ``height // 8`` (4 for 32x32 images)."""
    return max(1, spec.input_shape[0] // 8)


def example_bytes(spec: _Spec) -> int:
    """Bytes of one stored example (features only), for the cache-size decision."""
    return math.prod(spec.input_shape) * spec.storage_dtype_bytes
