"""keras_normreg.data.arrays: the embedded sets as NumPy arrays, tfds split strings, and the data
package without TensorFlow (lazy pipelines / builders, clear ImportError)."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from keras_normreg import data
from keras_normreg.data import _deps, embedded, splits

REPO = Path(__file__).resolve().parents[2]
HAS_TF = all(importlib.util.find_spec(m) is not None
             for m in ("tensorflow", "tensorflow_datasets"))
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow and tensorflow-datasets")

# Split strings the recipes use, plus a few more tfds forms.
SPLITS = ["train", "test", "train[:90%]", "train[90%:]", "all", "train+test", "train[:50%]",
          "train[50%:]", "test[:12.5%]", "train[-10%:]", "test[10:-10]", "train[10%:20]",
          "train[:90%]+test[:5]"]

# Hand-derived tfds boundaries: int(round(p * n / 100)), Python round (halves to even).
#   digits train has 1437: 90% -> 1293.3 -> 1293; 50% -> 718.5 -> 718 (even); -10% -> -143.7 -> -144
#   digits test has 360: 12.5% -> 45.0
#   mnist1d train has 4000: 90% -> 3600
HAND_SIZES = {
    ("digits", "train[:90%]"): 1293, ("digits", "train[90%:]"): 144,
    ("digits", "train[:50%]"): 718, ("digits", "train[50%:]"): 719,
    ("digits", "train[-10%:]"): 144, ("digits", "test[:12.5%]"): 45,
    ("digits", "all"): 1797, ("mnist1d", "train[:90%]"): 3600, ("mnist1d", "train[90%:]"): 400,
    ("mnist1d", "test[10:-10]"): 980, ("mnist1d", "all"): 5000,
}


def _sha(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# --- basics --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, shape", [("mnist1d", (40, 1)), ("digits", (8, 8, 1))])
@pytest.mark.parametrize("split", ["train", "test"])
def test_shapes_dtypes_and_labels(name, shape, split):
    x, y = data.arrays(name, split)
    n = data.info(name).splits[split]
    assert x.shape == (n, *shape) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert y.min() == 0 and y.max() == data.info(name).num_classes - 1
    assert len(np.unique(y)) == 10
    assert np.all(np.isfinite(x))


def test_arrays_are_fresh_copies():
    x, y = data.arrays("digits", "test")
    assert x.flags.writeable and y.flags.writeable
    x[:] = 0.0
    y[:] = 0
    x2, y2 = data.arrays("digits", "test")
    assert np.abs(x2).max() > 0 and y2.max() == 9


def test_split_joins_concatenate_in_order():
    x_train, y_train = data.arrays("mnist1d", "train")
    x_test, y_test = data.arrays("mnist1d", "test")
    for split in ("all", "train+test", "train + test"):
        x, y = data.arrays("mnist1d", split)
        np.testing.assert_array_equal(x, np.concatenate([x_train, x_test]))
        np.testing.assert_array_equal(y, np.concatenate([y_train, y_test]))
    head, _ = data.arrays("mnist1d", "train[:90%]")
    tail, _ = data.arrays("mnist1d", "train[90%:]")
    np.testing.assert_array_equal(np.concatenate([head, tail]), x_train)


def test_mnist1d_config_name():
    x, y = data.arrays("mnist1d/num_samples_100", "train")
    assert x.shape == (80, 40, 1) and y.shape == (80,)
    x_default, _ = data.arrays("mnist1d/num_samples_5000", "test")
    np.testing.assert_array_equal(x_default, data.arrays("mnist1d", "test")[0])


def test_public_names():
    assert {"arrays", "info", "list_datasets", "DatasetInfo"} <= set(data.__all__)
    assert {"arrays", "load", "load_epochs", "is_prepared"} <= set(dir(data))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        data.nope  # noqa: B018


@needs_tf
def test_tf_names_resolve_lazily_to_the_pipeline_objects():
    from keras_normreg.data import mnist1d, pipelines

    assert data.load is pipelines.load and data.load_epochs is pipelines.load_epochs
    assert data.DatasetNotFoundError is pipelines.DatasetNotFoundError
    assert data.Mnist1d is mnist1d.Mnist1d and data.mnist1d_config is mnist1d.mnist1d_config
    assert "load" in data.__all__ and "Digits" in data.__all__


# --- correctness against independent references -------------------------------------------------

def test_mnist1d_equals_make_dataset(mnist1d_reference):
    x_train, y_train = data.arrays("mnist1d", "train")
    x_test, y_test = data.arrays("mnist1d", "test")
    # mnist1d is served as generated (make_dataset standardizes it): float64 -> float32, channel
    np.testing.assert_array_equal(x_train[..., 0], mnist1d_reference["x"].astype(np.float32))
    np.testing.assert_array_equal(x_test[..., 0], mnist1d_reference["x_test"].astype(np.float32))
    np.testing.assert_array_equal(y_train, mnist1d_reference["y"])
    np.testing.assert_array_equal(y_test, mnist1d_reference["y_test"])


def test_digits_equals_sklearn_split_normalized_by_formula():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.images, bunch.target, test_size=0.2, stratify=bunch.target, random_state=0)
    for split, images, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
        x, y = data.arrays("digits", split)
        expected = ((images / 16.0 - 0.305383) / 0.376119)[..., None]  # float64 formula
        np.testing.assert_allclose(x, expected, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(y, labels)
    x, _ = data.arrays("digits", "train")
    assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-5  # standardized by train statistics


@pytest.mark.parametrize("name, split", sorted(HAND_SIZES))
def test_percent_slices_hand_derived(name, split):
    x, y = data.arrays(name, split)
    assert len(x) == len(y) == HAND_SIZES[(name, split)]


def test_percent_slice_is_the_rounded_prefix():
    x_train, y_train = data.arrays("digits", "train")
    x, y = data.arrays("digits", "train[:90%]")
    np.testing.assert_array_equal(x, x_train[:1293])
    np.testing.assert_array_equal(y, y_train[:1293])
    x, y = data.arrays("digits", "train[90%:]")
    np.testing.assert_array_equal(x, x_train[1293:])
    x, _ = data.arrays("digits", "train[-10%:]")
    np.testing.assert_array_equal(x, x_train[-144:])


def test_resolve_by_hand():
    sizes = {"train": 1437, "test": 360}
    assert splits.resolve("train[:90%]", sizes) == [("train", 0, 1293)]
    assert splits.resolve("train[90%:]", sizes) == [("train", 1293, 1437)]
    assert splits.resolve("train[:50%]", sizes) == [("train", 0, 718)]  # 718.5 -> 718
    assert splits.resolve("test[:62.5%]", sizes) == [("test", 0, 225)]
    assert splits.resolve("all", sizes) == [("train", 0, 1437), ("test", 0, 360)]
    assert splits.resolve("test[-20:]+train[:2]", sizes) == [("test", 340, 360), ("train", 0, 2)]
    assert splits.percent_to_index(50, 1437) == 718 and splits.percent_to_index(50, 1439) == 720


@needs_tf
def test_resolve_equals_tfds_arithmetic():
    """Every boundary equals tfds' own to_absolute() on many split sizes and percents."""
    from tensorflow_datasets.core import splits as tfds_splits

    rng = np.random.default_rng(0)
    specs = [f"train[{a}%:{b}%]" for a, b in [(0, 90), (90, 100), (10, 50), (-30, -5), (33, 67)]]
    specs += ["train[:50%]", "train[50%:]", "train[-50%:]", "train[:12.5%]", "test[2.5%:97.5%]",
              "train[3:-3]", "train[-7:]", "all", "train[:90%]+test", "test[10%:20]"]
    for n_train in [*rng.integers(20, 5000, size=40), 1437, 4000, 101, 199, 1439]:
        n_train = int(n_train)
        sizes = {"train": n_train, "test": 80}
        infos = {s: types.SimpleNamespace(num_examples=n) for s, n in sizes.items()}
        for spec in specs:
            ours = splits.resolve(spec, sizes)
            theirs = tfds_splits.AbstractSplit.from_spec(spec).to_absolute(infos)
            assert [(s, a, b) for s, a, b in ours] == [
                (i.splitname, i.from_ or 0, sizes[i.splitname] if i.to is None else i.to)
                for i in theirs], (spec, n_train)


@needs_tf
@pytest.mark.parametrize("name", ["mnist1d", "digits"])
def test_equal_to_unshuffled_unaugmented_pipeline(name, data_dir):
    """Bit-for-bit the pipeline's examples, on every split form (percent slices included)."""
    for split in SPLITS:
        ds = data.load(name, split, 10_000, data_dir=data_dir, shuffle=False, augment=False)
        batches = [(x.numpy(), y.numpy()) for x, y in ds]
        x_tf = np.concatenate([b[0] for b in batches])
        y_tf = np.concatenate([b[1] for b in batches])
        x, y = data.arrays(name, split)
        np.testing.assert_array_equal(x, x_tf, err_msg=split)
        np.testing.assert_array_equal(y, y_tf, err_msg=split)


@needs_tf
@pytest.mark.parametrize("name, key", [("mnist1d", "x"), ("digits", "image")])
def test_builders_store_the_embedded_arrays(name, key, data_dir):
    """One code path: tfds.load yields embedded.stored_splits' arrays, in order."""
    import tensorflow_datasets as tfds

    for split, (x_stored, y_stored) in embedded.stored_splits(name).items():
        examples = list(tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir)))
        np.testing.assert_array_equal(np.stack([e[key] for e in examples]), x_stored)
        np.testing.assert_array_equal(np.array([e["label"] for e in examples]), y_stored)


# --- without TensorFlow (subprocesses that hide it) -----------------------------------------------

_HIDE_TF = """
import sys
sys.modules["tensorflow"] = None
sys.modules["tensorflow_datasets"] = None
"""

# Runs the data-level checks; prints one JSON line. Exceptions other than the expected ones fail.
_CHECKS = """
import hashlib, json
import numpy as np
x, y = data.arrays("mnist1d", "test")
xd, yd = data.arrays("digits", "train[:90%]")
errors = {}
for name in ("load", "load_epochs", "is_prepared", "DatasetNotFoundError", "Mnist1d", "pipelines"):
    try:
        getattr(data, name)
    except ImportError as error:
        errors[name] = str(error)
try:
    from keras_normreg.data import pipelines  # noqa
except ImportError as error:
    errors["import pipelines"] = str(error)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_datasets")
                and sys.modules[m] is not None)
print(json.dumps({
    "mnist1d": [list(x.shape), str(x.dtype), str(y.dtype),
                hashlib.sha256(x.tobytes()).hexdigest(), hashlib.sha256(y.tobytes()).hexdigest()],
    "digits": [list(xd.shape), hashlib.sha256(xd.tobytes()).hexdigest()],
    "info": data.info("digits").splits, "list": data.list_datasets(), "all": data.__all__,
    "errors": errors, "tf_loaded": loaded,
}))
"""


def _run(code, tmp_path):
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=str(REPO), MPLBACKEND="Agg", TFDS_DATA_DIR=str(tmp_path))
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def _check_no_tf_report(stdout):
    report = json.loads(stdout.strip().splitlines()[-1])
    x, y = data.arrays("mnist1d", "test")  # in this process (TensorFlow or not)
    xd, _ = data.arrays("digits", "train[:90%]")
    assert report["mnist1d"] == [[1000, 40, 1], "float32", "int64", _sha(x), _sha(y)]
    assert report["digits"] == [[1293, 8, 8, 1], _sha(xd)]
    assert report["info"] == {"train": 1437, "test": 360}
    assert report["list"] == data.list_datasets()
    assert report["all"] == ["DatasetInfo", "arrays", "info", "list_datasets"]
    assert report["tf_loaded"] == []
    assert set(report["errors"]) == {"load", "load_epochs", "is_prepared",
                                     "DatasetNotFoundError", "Mnist1d", "pipelines",
                                     "import pipelines"}
    for message in report["errors"].values():
        assert "pip install 'keras_normreg[cpu]'" in message
        assert "data.arrays(" in message
        assert "tensorflow and tensorflow_datasets cannot be imported" in message
    assert report["errors"]["load"].startswith("keras_normreg.data.load needs TensorFlow")
    assert report["errors"]["import pipelines"].startswith(
        "keras_normreg.data.pipelines needs TensorFlow")


def test_data_package_without_tensorflow(tmp_path):
    """keras_normreg.data alone (the package __init__ bypassed) never needs TensorFlow."""
    code = _HIDE_TF + f"""
import types
package = types.ModuleType("keras_normreg")
package.__path__ = [{str(REPO / "keras_normreg")!r}]
sys.modules["keras_normreg"] = package
from keras_normreg import data
""" + _CHECKS
    result = _run(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_no_tf_report(result.stdout)


def test_keras_normreg_import_without_tensorflow(tmp_path):
    """``from keras_normreg import data`` on the jax backend with TensorFlow hidden."""
    code = _HIDE_TF + """
import traceback
try:
    import keras_normreg
except ImportError as error:
    frame = traceback.extract_tb(error.__traceback__)[-1]
    print("PACKAGE-IMPORT-FAILED", frame.filename, "|", error)
    sys.exit(3)
from keras_normreg import data
""" + _CHECKS
    result = _run(code, tmp_path)
    if result.returncode == 3:
        where = result.stdout.split("PACKAGE-IMPORT-FAILED", 1)[1].strip()
        assert f"keras_normreg{os.sep}data{os.sep}" not in where.split("|")[0], where
        pytest.skip(f"keras_normreg itself does not import without TensorFlow yet: {where}")
    assert result.returncode == 0, result.stderr[-3000:]
    _check_no_tf_report(result.stdout)


# --- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cifar10", "mnist", "svhn_cropped"])
def test_not_embedded(name):
    with pytest.raises(ValueError, match=rf"embedded dataset \['digits', 'mnist1d'\].*"
                                         rf"data\.load\(\)\. Received: name='{name}'$"):
        data.arrays(name, "train")


@pytest.mark.parametrize("name", ["imagenet", "mnist1d/big", "digits/x", None])
def test_unknown_name(name):
    with pytest.raises(ValueError, match=r"Received: name="):
        data.arrays(name, "train")


@pytest.mark.parametrize("split, why", [
    ("validation", "Unknown split 'validation'"),
    ("train+dev", "Unknown split 'dev'"),
    ("", "non-empty string"),
    (3, "non-empty string"),
    ("train[:110%]", r"\[-100, 100\]"),
    ("train[:5000]", "does not fit a split of 1437"),
    ("train[10:10]", "selects no examples"),
    ("train[50:10]", "selects no examples"),
    ("train[90%:10%]", "selects no examples"),
    ("all[:10%]", "'all' cannot be sliced"),
    ("train[1shard]", "not a \\[from:to\\] slice"),
    ("train[:2shard]", "shard slices"),
    ("train[5]", "not a \\[from:to\\] slice"),
    ("train[1.5:]", "bad number"),
    ("train[a:b]", "unrecognized slice"),
    ("train[:]", "unrecognized slice"),
    ("tr ain", "unrecognized part"),
])
def test_bad_split(split, why):
    with pytest.raises(ValueError, match=rf"{why}.*Received: split=") as excinfo:
        data.arrays("digits", split)
    assert "Argument `split`" in str(excinfo.value)
    assert str(excinfo.value).endswith(f"Received: split={split!r}")


def test_stored_splits_rejects_bad_base():
    with pytest.raises(ValueError, match=r"`base`.*Received: base='cifar10'"):
        embedded.stored_splits("cifar10")
    with pytest.raises(ValueError, match=r"`base`.*Received: num_samples=100"):
        embedded.stored_splits("digits", 100)
    with pytest.raises(ValueError, match=r"multiple of 10.*Received: num_samples=15"):
        embedded.stored_splits("mnist1d", 15)


def test_missing_tensorflow_error_in_process(monkeypatch):
    """__getattr__ checks the dependencies before importing (names not yet cached)."""
    monkeypatch.setattr(_deps, "missing_modules", lambda: ["tensorflow"])
    with pytest.raises(ImportError, match=r"^keras_normreg\.data\.load needs TensorFlow.*"
                                          r"tensorflow cannot be imported.*"
                                          r"pip install 'keras_normreg\[cpu\]'.*data\.arrays\("):
        data.__getattr__("load")
    with pytest.raises(ImportError) as excinfo:
        _deps.require_tfds("keras_normreg.data.pipelines")
    assert excinfo.value.name == "tensorflow"
