"""``load()``: batched tf.data pipelines of ``(features float32, label int64)`` ready for ``fit``
(the modular arithmetic sets: ``(tokens int32, label int64)``, the tokens as stored).

Order of the stages::

    tfds as_dataset(as_supervised=True)        raw uint8 images / float32 embedded features
    -> cache()                                 if cache=True and the split is < ~1 GiB as stored
    -> shuffle(seed, reshuffle each epoch)     training splits by default
    -> map: float32, scale, augment, normalize augmentation only where asked / by default
                                               (token sets: int32, nothing else)
    -> batch(batch_size, drop_remainder) -> prefetch(AUTOTUNE)
    -> with_options(autotune.enabled=False)   unless autotune=True

Caching happens before the float conversion, so CIFAR-10's training split takes its uint8 size
(150 MB) in memory. Random augmentation draws its per-example seeds from
``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`` and uses stateless image ops,
so a pipeline built twice with the same ``seed`` yields the same batches, epoch after epoch,
while each epoch sees a fresh shuffle and fresh crops.

``load_epochs()`` chains the same stages into an endless stream of epochs whose shuffle and
augmentation seeds are a function of ``(seed, epoch index)`` instead of the number of iterators
made so far, so every iterator yields the same batches (what training under a distribution
strategy needs: Keras opens an extra iterator there; see :mod:`keras_normreg.distribute`).

tf.data's autotuning is off by default (``autotune=False``): with it on, Keras' deletion of
the iterators (when ``fit`` returns, and after a validation pass) sometimes blocked with no CPU
in use -- up to 5 s after the last epoch, about a quarter of the wall time of a short tuning
trial -- and never with it off, while the augmented image pipeline ran as fast without it
(``bench/bench_pipeline.py``). Without
autotuning, ``AUTOTUNE`` parallel maps use TensorFlow's default parallelism (the CPU count, at
most 16).

Data never leaves the network unannounced: the tfds sets (cifar10, cifar100, mnist,
fashion_mnist, svhn_cropped) are downloaded only with ``download=True``; otherwise missing data
raise :class:`DatasetNotFoundError`. The embedded sets (mnist1d, digits, modular_*) are
generated locally on first use, with no network involved.
"""

from __future__ import annotations

import numbers
import os
import random
import types

from keras_normreg.data._deps import require_tfds

require_tfds(__name__)

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from keras_normreg._locks import FileLock  # noqa: E402
from keras_normreg._utils import check_bool, check_number, received  # noqa: E402
from keras_normreg.data import mnist1d as _mnist1d  # noqa: E402
from keras_normreg.data import modular as _modular  # noqa: E402
from keras_normreg.data import modular_builders as _modular_builders  # noqa: E402
from keras_normreg.data import registry  # noqa: E402
from keras_normreg.data.splits import split_bases as _split_bases  # noqa: E402

CACHE_LIMIT_BYTES = 1 << 30  # cache splits smaller than ~1 GiB as stored
SHUFFLE_BUFFER_LIMIT = 100_000  # examples
_AUGMENT_STRINGS = {"default": None, "none": False, "crop": "crop", "crop_flip": "crop_flip"}


class DatasetNotFoundError(FileNotFoundError):
    """A tfds dataset is not prepared in the data directory and ``download`` was False."""


def _builder(base: str, config: str | None, data_dir):
    data_dir = None if data_dir is None else str(data_dir)
    if base == "mnist1d" and config is not None:
        return tfds.builder(base, config=_mnist1d.config_from_name(config), data_dir=data_dir)
    if base in _modular.DATASETS and config is not None:
        return tfds.builder(base, config=_modular_builders.config_from_name(config),
                            data_dir=data_dir)
    return tfds.builder(base, data_dir=data_dir)


def is_prepared(name: str, data_dir=None) -> bool:
    """Whether dataset ``name`` is prepared (ready to read) in ``data_dir``.

    ``data_dir=None`` means tfds's default directory (``TFDS_DATA_DIR`` when it was set before
    ``tensorflow_datasets`` was imported, else ``~/tensorflow_datasets``).
    """
    base, config, _ = registry.resolve(name)
    return _builder(base, config, data_dir).is_prepared()


def _missing_error(name: str, builder) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"Dataset '{name}' is not prepared in data_dir '{builder.data_dir_root}' "
        f"(looked for {builder.data_dir}). Pass download=True (Python) or --download (CLI) "
        "to download and prepare it with tensorflow-datasets, or place the prepared tfds "
        "data there (or point data_dir / TFDS_DATA_DIR at a directory that holds it)."
    )


#: How long a process waits for another one preparing the same dataset (the embedded sets take
#: seconds; a download of a real set can take many minutes).
PREPARE_LOCK_TIMEOUT_S = 3600.0


def _prepare_once(base, config, data_dir, builder):
    """Prepare ``builder``'s dataset with one process at a time per dataset folder: tfds renames
    its finished folder into place, and two processes preparing the same set at once (two
    trainings, a tuning chief and its workers on a fresh machine) make the second rename fail.
    The second process waits on the lock, then finds the set prepared and reads it. Returns the
    builder to read from (a fresh one when another process prepared the set meanwhile)."""
    folder = os.path.dirname(os.fspath(builder.data_dir))
    os.makedirs(folder, exist_ok=True)
    lock = FileLock(os.path.join(folder, ".prepare.lock"), f"preparing {builder.name}",
                    timeout=PREPARE_LOCK_TIMEOUT_S)
    with lock:
        fresh = _builder(base, config, data_dir)
        if fresh.is_prepared():
            return fresh
        _download_and_prepare(fresh)
        return fresh


def _download_and_prepare(builder) -> None:
    try:
        builder.download_and_prepare()
    except ModuleNotFoundError as error:
        if error.name != "importlib_resources":
            raise
        # tensorflow-datasets 4.9 needs the backport for any builder's checksums lookup but
        # declares it only for Python < 3.9 (tensorflow/datasets#11212).
        raise ModuleNotFoundError(
            f"tensorflow-datasets needs the `importlib_resources` package to prepare "
            f"'{builder.name}' (tensorflow/datasets#11212). Install it with "
            "`pip install importlib_resources`.",
            name="importlib_resources",
        ) from error


def _augment_mode(augment, spec, is_train: bool):
    """``augment`` argument -> None (no augmentation), "crop" or "crop_flip"."""
    if isinstance(augment, str):
        if augment not in _AUGMENT_STRINGS:
            raise ValueError(
                "Argument `augment` must be None, a bool or one of "
                f"{sorted(_AUGMENT_STRINGS)}. {received('augment', augment)}"
            )
        augment = _AUGMENT_STRINGS[augment]
    if augment is None:
        return spec.augment if is_train else None
    if augment is False:
        return None
    if augment is True:
        if spec.augment is None:
            raise ValueError(
                "Argument `augment` is True but this dataset has no default augmentation; "
                f"pass 'crop' or 'crop_flip' to choose one explicitly. {received('augment', augment)}"
            )
        return spec.augment
    if augment in registry.AUGMENTATIONS:
        if len(spec.input_shape) != 3:
            raise ValueError(
                f"Argument `augment` ({augment!r}) needs images of rank 3; this dataset has "
                f"input_shape={spec.input_shape}. {received('augment', augment)}"
            )
        return augment
    raise ValueError(
        "Argument `augment` must be None, a bool or one of "
        f"{sorted(_AUGMENT_STRINGS)}. {received('augment', augment)}"
    )


def random_crop_flip(image, seed, *, pad: int, flip: bool):
    """Zero-pad ``pad`` pixels on each side, take a random crop of the original size, and (if
    ``flip``) mirror left-right with probability 1/2. ``seed``: int tensor of shape (2,).
    Stateless, so the result is a function of (image, seed)."""
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    height, width, channels = image.shape
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, (height, width, channels), seed=seeds[0])
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    return image


def _preprocess_fn(spec, augment_mode):
    mean = tf.constant(spec.mean, tf.float32)
    std = tf.constant(spec.std, tf.float32)
    pad = registry.crop_padding(spec)
    identity = spec.mean == (0.0,) and spec.std == (1.0,)

    def tokens(x, label, seed=None):  # token ids (the modular sets): as stored
        del seed
        return tf.ensure_shape(tf.cast(x, spec.dtype), spec.input_shape), label

    if spec.dtype != "float32":
        return tokens

    def preprocess(x, label, seed=None):
        x = tf.cast(x, tf.float32)
        if spec.scale is not None:
            x = x / spec.scale
        if augment_mode is not None:
            x = random_crop_flip(x, seed, pad=pad, flip=augment_mode == "crop_flip")
        if not identity:
            x = (x - mean) / std
        x = tf.ensure_shape(x, spec.input_shape)
        return x, label

    return preprocess


def load(name: str, split: str, batch_size: int, data_dir=None, augment=None, shuffle=None,
         seed: int | None = 42, download: bool = False, cache: bool = True,
         drop_remainder: bool = False, autotune: bool = False) -> tf.data.Dataset:
    """Batched ``tf.data`` pipeline of ``(features float32, label int64)`` pairs for ``fit``
    (``int32`` token features for the modular arithmetic sets).

    Args:
        name: one of :func:`keras_normreg.data.list_datasets` (``"mnist1d/num_samples_<N>"``
            selects a larger MNIST-1D, ``"modular_add/p_<prime>"`` another modulus).
        split: tfds split string: ``"train"``, ``"test"``, ``"extra"`` (svhn_cropped),
            ``"all"``, sliced (``"train[:90%]"``) or joined (``"train+extra"``); passed to tfds
            as is. A split is a *training split* when all its parts are ``train`` (or
            ``extra``), slices included -- so pass ``augment=False, shuffle=False`` when a slice
            of ``train`` serves as validation data.
        batch_size: positive int.
        data_dir: tfds data directory; None means tfds's default (``TFDS_DATA_DIR`` or
            ``~/tensorflow_datasets``).
        augment: None: the dataset's default augmentation on training splits, none elsewhere;
            False (or ``"none"``): no augmentation; True: the dataset's default augmentation on
            any split (ValueError for a dataset without one); ``"crop"`` / ``"crop_flip"``:
            that augmentation on any split (image sets only). ``"default"`` equals None.
        shuffle: None: shuffle training splits only; or a bool.
        seed: seed of the shuffle and of the augmentation (None: not reproducible).
        download: let tfds download and prepare a missing tfds dataset. Without it, missing
            data raise :class:`DatasetNotFoundError`. The embedded sets (mnist1d, digits,
            modular_*) are always prepared locally when missing, without network.
        cache: cache the split in memory when it is under ~1 GiB as stored.
        drop_remainder: drop the last partial batch.
        autotune: keep tf.data's autotuning on (off by default: see the module docstring).

    Returns:
        A ``tf.data.Dataset`` of ``(x, y)`` batches, prefetched.

    Raises:
        ValueError: unknown ``name`` or ``split``, bad ``batch_size``, ``augment``, ``shuffle``,
            ``seed`` or flags.
        DatasetNotFoundError: (a ``FileNotFoundError``) data missing and ``download=False``.
    """
    src = _open(name, split, batch_size, data_dir, augment, shuffle, seed, download, cache,
                drop_remainder, autotune, reshuffle=True)
    return _finish(_stages(src, src.seed, src.seed, reshuffle=True), src.autotune)


def _finish(ds, autotune: bool):
    """``prefetch(AUTOTUNE)``, and tf.data's autotuning off unless ``autotune``."""
    ds = ds.prefetch(tf.data.AUTOTUNE)
    if autotune:
        return ds
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def _open(name, split, batch_size, data_dir, augment, shuffle, seed, download, cache,
          drop_remainder, autotune, reshuffle):
    base, config, spec = registry.resolve(name)
    check_number("batch_size", batch_size, low=1, integer=True)
    bases = _split_bases(split, spec)
    is_train = all(b in spec.train_splits for b in bases)
    augment_mode = _augment_mode(augment, spec, is_train)
    if shuffle is not None:
        check_bool("shuffle", shuffle)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"Argument `seed` must be an int or None. {received('seed', seed)}")
    check_bool("download", download)
    check_bool("cache", cache)
    check_bool("drop_remainder", drop_remainder)
    check_bool("autotune", autotune)
    shuffle = is_train if shuffle is None else shuffle
    seed = None if seed is None else int(seed)

    builder = _builder(base, config, data_dir)
    if not builder.is_prepared():
        if not (spec.embedded or download):
            raise _missing_error(name, builder)
        builder = _prepare_once(base, config, data_dir, builder)

    read_config = (tfds.ReadConfig(shuffle_seed=seed) if reshuffle else
                   tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=False))
    ds = builder.as_dataset(
        split=split,
        as_supervised=True,
        shuffle_files=shuffle and not cache,
        read_config=read_config,
    )
    num_examples = int(ds.cardinality())
    if cache and 0 <= num_examples * registry.example_bytes(spec) < CACHE_LIMIT_BYTES:
        ds = ds.cache()
    # the validated, opened (and maybe cached) split, before shuffling and preprocessing
    return types.SimpleNamespace(
        ds=ds, spec=spec, augment_mode=augment_mode, shuffle=shuffle, seed=seed,
        num_examples=num_examples, batch_size=batch_size, drop_remainder=drop_remainder,
        autotune=autotune)


def _stages(src, shuffle_seed, augment_seed, reshuffle):
    """shuffle -> preprocess (+ augmentation) -> batch, over ``src.ds``."""
    ds = src.ds
    if src.shuffle:
        buffer = src.num_examples if src.num_examples > 0 else 10_000
        ds = ds.shuffle(min(buffer, SHUFFLE_BUFFER_LIMIT), seed=shuffle_seed,
                        reshuffle_each_iteration=reshuffle)
    preprocess = _preprocess_fn(src.spec, src.augment_mode)
    if src.augment_mode is not None:
        seeds = tf.data.Dataset.random(seed=augment_seed,
                                       rerandomize_each_iteration=reshuffle).batch(
            2, drop_remainder=True)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda xy, s: preprocess(xy[0], xy[1], s), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(src.batch_size, drop_remainder=src.drop_remainder)


#: What an epoch stream's traced function uses in place of TensorFlow's global seed 0 (not
#: 2**31 - 1: TensorFlow reduces seeds modulo 2**31 - 1, which would make it 0 again).
_GLOBAL_SEED_ZERO = (1 << 31) - 2


def load_epochs(name: str, split: str, batch_size: int, data_dir=None, augment=None,
                shuffle=None, seed: int | None = 42, download: bool = False, cache: bool = True,
                drop_remainder: bool = False, autotune: bool = False,
                start_epoch: int = 0) -> tuple[tf.data.Dataset, int]:
    """An endless stream of epochs whose randomness is a function of ``(seed, epoch)``.

    Same arguments and stages as :func:`load`, but the returned dataset repeats forever and
    epoch ``e`` (counting from ``start_epoch``, 0 by default, on every new iterator) is
    shuffled and augmented with seeds
    ``stateless_uniform(seed=[seed, e])``, with ``reshuffle_each_iteration=False`` and a fixed
    file order. So *every* iterator yields the same batches, however many iterators a trainer
    creates (Keras' distributed ``fit`` opens an extra one to build the model): train it with
    ``steps_per_epoch``. Batches never straddle two epochs. ``seed=None`` draws a random seed
    once. With TensorFlow's global seed set (``keras.utils.set_random_seed``; ``train`` sets
    it to ``train.seed`` before building its pipelines) that seed enters too, as in every
    seeded tf.data op. ``start_epoch`` = k starts the stream at epoch k (a run resumed after k
    finished epochs): its first batches are those epoch k of a stream started at 0 yields.

    Returns:
        ``(dataset, num_examples)``: the batched, prefetched stream and the examples per epoch.
    """
    check_number("start_epoch", start_epoch, low=0, integer=True)
    src = _open(name, split, batch_size, data_dir, augment, shuffle, seed, download, cache,
                drop_remainder, autotune, reshuffle=False)
    if src.num_examples < 0:
        raise ValueError(f"The size of split {split!r} of {name!r} is unknown; an epoch stream "
                         f"needs it. {received('split', split)}")
    base_seed = (random.SystemRandom().randrange(1 << 62) if src.seed is None
                 else src.seed % (1 << 63))

    def one_epoch(epoch):
        if tf.compat.v1.get_default_graph().seed == 0:
            # TensorFlow's global seed 0 (keras.utils.set_random_seed(0)): tf.data pairs it
            # with the op seed and compares the pair with (0, 0), which a tensor op seed
            # cannot answer in a traced function. The traced function (only) gets another
            # graph seed; no other global seed is touched.
            tf.random.set_seed(_GLOBAL_SEED_ZERO)
        pair = tf.random.stateless_uniform(
            [2], seed=tf.stack([tf.constant(base_seed, tf.int64), epoch]), minval=None,
            maxval=None, dtype=tf.int64)
        return _stages(src, pair[0], pair[1], reshuffle=False)

    ds = tf.data.Dataset.range(int(start_epoch), 1 << 62).flat_map(one_epoch)
    return _finish(ds, src.autotune), src.num_examples
