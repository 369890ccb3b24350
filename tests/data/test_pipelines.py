"""keras_normreg.data.load: shapes, batching, determinism, normalization, augmentation, errors."""

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")  # tf.data pipelines (see test_arrays.py without TF)
tfds = pytest.importorskip("tensorflow_datasets")

from keras_normreg import data  # noqa: E402
from keras_normreg.data import pipelines  # noqa: E402

# tf.data pipelines: TensorFlow only.
pytestmark = pytest.mark.tf_only

# Constants written out by hand (the documented per-channel train-split statistics).
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)
SVHN_MEAN = np.array([0.4377, 0.4438, 0.4728], np.float32)
SVHN_STD = np.array([0.1980, 0.2010, 0.1970], np.float32)


@pytest.fixture
def mock_tfds():
    # Random uint8 images from the real cifar10 / svhn_cropped feature specs; the mock turns
    # download_and_prepare into a no-op, hence download=True below (no network involved).
    with tfds.testing.mock_data(num_examples=12):
        yield


def _numpy(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def _raw(name, split):
    ds = tfds.builder(name).as_dataset(split=split, as_supervised=True)
    xs, ys = zip(*tfds.as_numpy(ds), strict=True)
    return np.stack(xs), np.array(ys)


# --- basics --------------------------------------------------------------------------------------

def test_mnist1d_test_pipeline_shapes_and_batches(data_dir):
    ds = data.load("mnist1d", "test", batch_size=256, data_dir=data_dir)
    assert ds.element_spec[0].shape.as_list() == [None, 40, 1]
    assert ds.element_spec[0].dtype == tf.float32
    assert ds.element_spec[1].dtype == tf.int64
    sizes = [int(x.shape[0]) for x, _ in ds]
    assert sizes == [256, 256, 256, 232]
    dropped = data.load("mnist1d", "test", batch_size=256, data_dir=data_dir, drop_remainder=True)
    assert dropped.element_spec[0].shape.as_list() == [256, 40, 1]
    assert [int(x.shape[0]) for x, _ in dropped] == [256, 256, 256]


def test_mnist1d_test_split_is_not_shuffled_and_unnormalized(data_dir, mnist1d_reference):
    x, y = _numpy(data.load("mnist1d", "test", batch_size=300, data_dir=data_dir))
    np.testing.assert_array_equal(x[..., 0], mnist1d_reference["x_test"].astype(np.float32))
    np.testing.assert_array_equal(y, mnist1d_reference["y_test"])


def test_train_split_shuffled_deterministically(data_dir, mnist1d_reference):
    def first_epoch(seed):
        return _numpy(data.load("mnist1d", "train", batch_size=500, data_dir=data_dir, seed=seed))

    x1, y1 = first_epoch(42)
    x2, y2 = first_epoch(42)
    x3, _ = first_epoch(7)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert not np.array_equal(y1, mnist1d_reference["y"])  # shuffled...
    np.testing.assert_array_equal(np.sort(y1), np.sort(mnist1d_reference["y"]))  # ...permutation
    np.testing.assert_array_equal(
        np.sort(x1[..., 0], axis=0), np.sort(mnist1d_reference["x"].astype(np.float32), axis=0))


def test_each_epoch_reshuffles_but_reruns_repeat(data_dir):
    def two_epochs():
        ds = data.load("mnist1d", "train", batch_size=4000, data_dir=data_dir, seed=3)
        return [next(iter(ds))[1].numpy() for _ in range(2)]

    a1, a2 = two_epochs()
    b1, b2 = two_epochs()
    assert not np.array_equal(a1, a2)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)


def test_shuffle_flag_and_cache_flag(data_dir, mnist1d_reference):
    x, _ = _numpy(data.load("mnist1d", "train", 1000, data_dir=data_dir, shuffle=False,
                            cache=False))
    np.testing.assert_array_equal(x[..., 0], mnist1d_reference["x"].astype(np.float32))
    xs, _ = _numpy(data.load("mnist1d", "test", 1000, data_dir=data_dir, shuffle=True))
    assert not np.array_equal(xs[..., 0], mnist1d_reference["x_test"].astype(np.float32))


def test_autotune_off_by_default_same_batches(data_dir):
    """tf.data autotuning is off unless asked (its iterator teardown stalls fit, see
    bench/bench_pipeline.py); the option changes no batch."""
    off = data.load("mnist1d", "train", 500, data_dir=data_dir, seed=3)
    on = data.load("mnist1d", "train", 500, data_dir=data_dir, seed=3, autotune=True)
    assert off.options().autotune.enabled is False
    assert on.options().autotune.enabled is not False  # TensorFlow's default (on)
    for (xa, ya), (xb, yb) in zip(off, on, strict=True):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    stream, n = data.load_epochs("mnist1d", "train", 500, data_dir=data_dir)
    assert stream.options().autotune.enabled is False and n == 4000
    stream_on, _ = data.load_epochs("mnist1d", "train", 500, data_dir=data_dir, autotune=True)
    assert stream_on.options().autotune.enabled is not False


def test_split_slicing_passes_through(data_dir, mnist1d_reference):
    _, y = _numpy(data.load("mnist1d", "train[:10%]", 1000, data_dir=data_dir, shuffle=False))
    np.testing.assert_array_equal(y, mnist1d_reference["y"][:400])
    _, y = _numpy(data.load("mnist1d", "train+test", 1000, data_dir=data_dir, shuffle=False))
    assert len(y) == 5000
    # A slice of train counts as a training split: shuffled by default.
    _, y = _numpy(data.load("mnist1d", "train[:10%]", 1000, data_dir=data_dir))
    assert not np.array_equal(y, mnist1d_reference["y"][:400])


def test_embedded_set_prepared_on_first_load(tmp_path):
    assert not data.is_prepared("digits", data_dir=tmp_path)
    ds = data.load("digits", "test", 64, data_dir=tmp_path)
    assert ds.element_spec[0].shape.as_list() == [None, 8, 8, 1]
    assert data.is_prepared("digits", data_dir=tmp_path)


def test_pipeline_trains_with_keras_fit(data_dir):
    model = keras.Sequential([keras.Input((40, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    train = data.load("mnist1d", "train", 128, data_dir=data_dir)
    test = data.load("mnist1d", "test", 256, data_dir=data_dir)
    history = model.fit(train, validation_data=test, epochs=2, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]


# --- correctness against NumPy -----------------------------------------------------------------

def test_digits_normalization_matches_numpy(data_dir):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x_train, x_test, _, y_test = train_test_split(
        bunch.images, bunch.target, test_size=0.2, stratify=bunch.target, random_state=0)
    mean, std = (x_train / 16.0).mean(), (x_train / 16.0).std()
    expected = ((x_test / 16.0 - mean) / std)[..., None]
    x, y = _numpy(data.load("digits", "test", 100, data_dir=data_dir))
    np.testing.assert_allclose(x, expected, atol=1e-4)
    np.testing.assert_array_equal(y, y_test)
    # The documented constants are the training-split statistics.
    info = data.info("digits")
    np.testing.assert_allclose(info.mean[0], mean, atol=1e-6)
    np.testing.assert_allclose(info.std[0], std, atol=1e-6)
    # The training pipeline is standardized: mean ~0, std ~1.
    xt, _ = _numpy(data.load("digits", "train", 2000, data_dir=data_dir))
    assert abs(xt.mean()) < 1e-5 and abs(xt.std() - 1) < 1e-5


def test_cifar10_mock_shapes_dtypes_and_normalization(mock_tfds):
    ds = data.load("cifar10", "test", batch_size=5, download=True)
    assert ds.element_spec[0].shape.as_list() == [None, 32, 32, 3]
    assert ds.element_spec[0].dtype == tf.float32
    assert ds.element_spec[1].dtype == tf.int64
    assert [int(x.shape[0]) for x, _ in ds] == [5, 5, 2]
    x, y = _numpy(ds)
    raw, labels = _raw("cifar10", "test")
    assert raw.dtype == np.uint8
    expected = (raw.astype(np.float32) / 255.0 - CIFAR10_MEAN) / CIFAR10_STD
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y, labels)


def test_cifar10_mock_train_augmentation_changes_images(mock_tfds):
    plain, y_plain = _numpy(data.load("cifar10", "train", 4, download=True, shuffle=False,
                                      augment=False))
    aug, y_aug = _numpy(data.load("cifar10", "train", 4, download=True, shuffle=False))
    assert aug.shape == plain.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(y_aug, y_plain)
    assert not np.allclose(aug, plain)
    again, _ = _numpy(data.load("cifar10", "train", 4, download=True, shuffle=False))
    np.testing.assert_array_equal(aug, again)  # same seed -> same crops
    # Test split: no augmentation unless asked for explicitly.
    test_plain, _ = _numpy(data.load("cifar10", "test", 4, download=True))
    test_default, _ = _numpy(data.load("cifar10", "test", 4, download=True, augment=None))
    test_forced, _ = _numpy(data.load("cifar10", "test", 4, download=True, augment=True))
    np.testing.assert_array_equal(test_default, test_plain)
    assert not np.allclose(test_forced, test_plain)


def _windows(padded, size):
    return [padded[i:i + size, j:j + size] for i in range(padded.shape[0] - size + 1)
            for j in range(padded.shape[1] - size + 1)]


def _match(image, candidates):
    return any(np.allclose(image, c, atol=1e-5) for c in candidates)


def test_svhn_mock_default_augmentation_is_crop_without_flip(mock_tfds):
    aug, _ = _numpy(data.load("svhn_cropped", "train", 6, download=True, shuffle=False))
    raw, _ = _raw("svhn_cropped", "train")
    assert aug.shape == (12, 32, 32, 3)
    moved = 0
    for image, source in zip(aug, raw, strict=True):
        padded = np.pad(source.astype(np.float32) / 255.0, [(4, 4), (4, 4), (0, 0)])
        padded = (padded - SVHN_MEAN) / SVHN_STD
        windows = _windows(padded, 32)
        assert _match(image, windows)
        assert not _match(image, [w[:, ::-1] for w in windows if not np.allclose(w, w[:, ::-1])])
        moved += not np.allclose(image, windows[4 * 9 + 4])  # the centred window = no shift
    assert moved > 0


def test_random_crop_flip_against_numpy_windows():
    rng = np.random.default_rng(0)
    image = rng.integers(1, 255, size=(6, 6, 2)).astype(np.float32)
    padded = np.pad(image, [(1, 1), (1, 1), (0, 0)])
    windows = _windows(padded, 6)
    flipped = [w[:, ::-1] for w in windows]
    seen_flip = 0
    for s in range(30):
        seed = tf.constant([s, 17], tf.int64)
        crop = pipelines.random_crop_flip(tf.constant(image), seed, pad=1, flip=False).numpy()
        assert _match(crop, windows)
        out = pipelines.random_crop_flip(tf.constant(image), seed, pad=1, flip=True).numpy()
        in_windows, in_flipped = _match(out, windows), _match(out, flipped)
        assert in_windows or in_flipped
        seen_flip += in_flipped and not in_windows
    assert 0 < seen_flip < 30


# --- errors --------------------------------------------------------------------------------------

def test_missing_tfds_data_raises_clear_error(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as excinfo:
        data.load("cifar10", "train", 32, data_dir=tmp_path)
    message = str(excinfo.value)
    assert isinstance(excinfo.value, FileNotFoundError)
    assert "'cifar10'" in message and str(tmp_path) in message
    assert "download=True" in message and "--download" in message
    assert not (tmp_path / "cifar10").exists()  # nothing was downloaded or created


def test_missing_importlib_resources_reported(monkeypatch, tmp_path):
    def fail(self, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'importlib_resources'",
                                  name="importlib_resources")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    with pytest.raises(ModuleNotFoundError, match="pip install importlib_resources"):
        data.load("mnist", "train", 32, data_dir=tmp_path, download=True)


def test_unknown_dataset():
    with pytest.raises(ValueError, match=r"cifar10.*mnist1d.*Received: name='imagenet'$"):
        data.load("imagenet", "train", 32)
    with pytest.raises(ValueError, match=r"Received: name='mnist1d/big'$"):
        data.load("mnist1d/big", "train", 32)
    with pytest.raises(ValueError, match=r"Received: name='cifar10/x'$"):
        data.info("cifar10/x")


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "32", True, None])
def test_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match=r"`batch_size`.*Received: batch_size="):
        data.load("mnist1d", "train", batch_size)


@pytest.mark.parametrize("split", ["validation", "trian[:10%]", "train+dev", "", 3])
def test_bad_split(split):
    with pytest.raises(ValueError, match=r"`split`.*Received: split="):
        data.load("cifar10", split, 32)


@pytest.mark.parametrize("augment", ["flip", 1, 0.5, [True]])
def test_bad_augment(augment):
    with pytest.raises(ValueError, match=r"`augment`.*Received: augment="):
        data.load("cifar10", "train", 32, augment=augment)


def test_augment_not_available_for_dataset():
    with pytest.raises(ValueError, match=r"no default augmentation.*Received: augment=True"):
        data.load("mnist", "train", 32, augment=True)
    with pytest.raises(ValueError, match=r"rank 3.*Received: augment='crop'"):
        data.load("mnist1d", "train", 32, augment="crop")


@pytest.mark.parametrize("kwargs, argument", [
    ({"shuffle": "yes"}, "shuffle"), ({"seed": 1.5}, "seed"), ({"download": 1}, "download"),
    ({"cache": None}, "cache"), ({"drop_remainder": "no"}, "drop_remainder"),
    ({"autotune": "on"}, "autotune"),
])
def test_bad_flags(kwargs, argument):
    with pytest.raises(ValueError, match=rf"`{argument}`.*Received: {argument}="):
        data.load("cifar10", "train", 32, **kwargs)
    with pytest.raises(ValueError, match=rf"`{argument}`.*Received: {argument}="):
        data.load_epochs("cifar10", "train", 32, **kwargs)


@pytest.mark.parametrize("global_seed", [0, 7])
def test_epoch_stream_under_a_global_seed(data_dir, mnist1d_reference, global_seed):
    """keras.utils.set_random_seed(0) (what train does for train.seed = 0) used to break the
    stream: tf.data compared the pair (global seed, tensor op seed) with (0, 0) in a traced
    function. Any global seed gives a stream whose epochs each hold the split once, in an
    order of their own, and that every iterator repeats."""
    keras.utils.set_random_seed(global_seed)
    try:
        stream, n = data.load_epochs("mnist1d", "train[:300]", 100, data_dir=data_dir, seed=5)
        first = [y.numpy() for _, y in stream.take(6)]
        again = [y.numpy() for _, y in stream.take(6)]
    finally:
        tf.random.set_seed(None)
    assert n == 300
    ref = np.sort(mnist1d_reference["y"][:300])
    epochs = [np.concatenate(first[:3]), np.concatenate(first[3:])]
    for labels in epochs:
        np.testing.assert_array_equal(np.sort(labels), ref)
    assert not np.array_equal(epochs[0], epochs[1])
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_global_seed_zero_stands_apart(data_dir):
    """The stand-in for global seed 0 is a seed of its own: not the stream of global seed 1 or
    of no global seed."""
    def labels(global_seed):
        tf.random.set_seed(global_seed)
        try:
            stream, _ = data.load_epochs("mnist1d", "train[:300]", 300, data_dir=data_dir, seed=5)
            return next(iter(stream))[1].numpy()
        finally:
            tf.random.set_seed(None)

    zero = labels(0)
    assert not np.array_equal(zero, labels(1))
    assert not np.array_equal(zero, labels(None))
    np.testing.assert_array_equal(zero, labels(0))


_WAITER = r"""
import sys
from keras_normreg.data import pipelines
prepared = []
original_prepare, original_once = pipelines._download_and_prepare, pipelines._prepare_once
pipelines._download_and_prepare = lambda b: (prepared.append(b.name), original_prepare(b))[1]
def announced(*args):
    print("waiting", flush=True)
    return original_once(*args)
pipelines._prepare_once = announced
ds = pipelines.load("digits", "train", batch_size=4096, data_dir=sys.argv[1], shuffle=False)
n = sum(int(x.shape[0]) for x, _ in ds)
print("examples", n, "prepared_here", len(prepared), flush=True)
"""


def test_a_second_process_waits_for_the_one_preparing_the_set(tmp_path):
    """Two processes preparing one embedded set in a fresh data_dir: the second waits on the
    dataset folder's lock and reads what the first prepared, instead of preparing it again
    (tfds renames its finished folder into place; two renames of the same folder fail).
    Deterministic order: this process holds the lock, the child announces it has found the set
    unprepared, this process prepares it and releases; the child must then prepare nothing."""
    import os
    import subprocess
    import sys

    from keras_normreg._locks import FileLock

    data_dir = str(tmp_path / "tfds")
    builder = pipelines._builder("digits", None, data_dir)
    assert not builder.is_prepared()
    folder = os.path.dirname(os.fspath(builder.data_dir))
    os.makedirs(folder, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    with FileLock(os.path.join(folder, ".prepare.lock"), "test holds it"):
        child = subprocess.Popen([sys.executable, "-c", _WAITER, data_dir], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert child.stdout.readline().strip() == "waiting"
            pipelines._download_and_prepare(builder)
        except BaseException:
            child.kill()
            raise
    out, _ = child.communicate(timeout=300)
    assert child.returncode == 0
    # digits: sklearn's 1797 examples, test_size 0.2 rounded up = 360, so 1437 to train
    assert out.split() == ["examples", "1437", "prepared_here", "0"]
