"""The modular arithmetic sets (Power et al., 2022): metadata, NumPy arrays on every backend,
split strings, and the tfds builders where TensorFlow is installed.

References are computed here in plain Python: the equations enumerated with itertools, the
results with Python ints (``pow(b, p - 2, p)`` for the inverse), the order with NumPy's
documented ``default_rng(0).permutation``, and the percent boundaries by hand with tfds' rule
``int(round(percent * n / 100))`` (Python's round: halves to even).
"""

import hashlib
import importlib.util
import itertools
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_normreg import data
from keras_normreg.data import modular
from keras_normreg.data.streams import ArrayEpochs

REPO = Path(__file__).resolve().parents[2]
HAS_TF = all(importlib.util.find_spec(m) is not None
             for m in ("tensorflow", "tensorflow_datasets"))
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow and tensorflow-datasets")

NAMES = ["modular_add", "modular_sub", "modular_mul", "modular_div"]
P = 97
# p = 97: 97 * 97 = 9409 equations; division excludes b = 0: 97 * 96 = 9312.
COUNTS = {"modular_add": 9409, "modular_sub": 9409, "modular_mul": 9409, "modular_div": 9312}
# Hand-derived split sizes, int(round(percent * n / 100)):
#   9409: 30% -> 2822.7 -> 2823 (rest 6586); 50% -> 4704.5 -> 4704 (half to even; rest 4705)
#   9312: 30% -> 2793.6 -> 2794 (rest 6518); 50% -> 4656.0 -> 4656 (rest 4656)
SCHEMES = {  # (train split, validation split): sizes for n = 9409, n = 9312
    ("train[:30%]", "train[30%:]"): {9409: (2823, 6586), 9312: (2794, 6518)},
    ("train[:50%]", "train[50%:]"): {9409: (4704, 4705), 9312: (4656, 4656)},
}


def expected_result(name, a, b, p):
    """(a op b) mod p with Python ints."""
    if name == "modular_add":
        return (a + b) % p
    if name == "modular_sub":
        return (a - b) % p
    if name == "modular_mul":
        return (a * b) % p
    return (a * pow(b, p - 2, p)) % p  # Fermat inverse of b


def all_pairs(name, p):
    """Every (a, b), a-major, as itertools enumerates them (b != 0 for division)."""
    first_b = 1 if name == "modular_div" else 0
    return list(itertools.product(range(p), range(first_b, p)))


def pairs_of(x):
    return [(int(a), int(b)) for a, b in x[:, [0, 2]]]


# --- basics --------------------------------------------------------------------------------------

def test_listed_and_info():
    assert set(NAMES) <= set(data.list_datasets())
    for name in NAMES:
        info = data.info(name)
        assert info.name == name
        assert info.input_shape == (4,)
        assert info.num_classes == 97 and info.vocab_size == 99  # p classes, p + 2 tokens
        assert info.splits == {"train": COUNTS[name]}
        assert info.dtype == "int32"
        assert info.mean == () and info.std == () and info.scale is None
        assert info.augment is None and info.embedded is True
        assert "preprocessing: none" in info.preprocessing
        assert "no augmentation" in info.preprocessing
    assert data.info("mnist1d").dtype == "float32" and data.info("mnist1d").vocab_size is None


def test_info_other_moduli():
    info = data.info("modular_add/p_113")
    assert info.name == "modular_add/p_113"
    assert info.splits == {"train": 113 * 113}
    assert info.num_classes == 113 and info.vocab_size == 115
    assert data.info("modular_div/p_5").splits == {"train": 20}  # 5 * 4
    assert data.info("modular_mul/p_97").name == "modular_mul/default"
    assert data.info("modular_sub/default").splits == {"train": 9409}


def test_token_constants():
    assert (modular.op_token(97), modular.eq_token(97), modular.vocab_size(97)) == (97, 98, 99)
    assert modular.num_classes(97) == 97 and modular.DEFAULT_P == 97
    assert modular.SEQUENCE_LENGTH == 4 and modular.SEED == 0
    assert modular.DATASETS == ("modular_add", "modular_div", "modular_mul", "modular_sub")


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_counts_and_token_layout(name):
    x, y = data.arrays(name, "train")
    n = COUNTS[name]
    assert x.shape == (n, 4) and x.dtype == np.int32
    assert y.shape == (n,) and y.dtype == np.int64
    assert np.all(x[:, 1] == P) and np.all(x[:, 3] == P + 1)  # OP = p, EQ = p + 1
    first_b = 1 if name == "modular_div" else 0
    assert x[:, 0].min() == 0 and x[:, 0].max() == P - 1
    assert x[:, 2].min() == first_b and x[:, 2].max() == P - 1
    assert y.min() == 0 and y.max() == P - 1
    assert x.flags.writeable and y.flags.writeable  # fresh copies


def test_arrays_are_fresh_copies():
    x, y = data.arrays("modular_add", "train[:10]")
    x[:] = 0
    y[:] = 0
    x2, _ = data.arrays("modular_add", "train[:10]")
    assert np.all(x2[:, 1] == P)


# --- correctness against independent references -------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("p", [P, 5])
def test_every_pair_once_and_labels(name, p):
    x, y = data.arrays(name if p == P else f"{name}/p_{p}", "train")
    pairs = pairs_of(x)
    assert len(pairs) == len(set(pairs))  # no pair twice
    assert set(pairs) == set(all_pairs(name, p))  # every pair
    for (a, b), label in zip(pairs, y.tolist(), strict=True):
        assert label == expected_result(name, a, b, p)
        if name == "modular_div":
            assert (label * b) % p == a  # the defining property of a / b


def test_division_by_hand():
    # p = 7: 3 * 5 = 15 = 1 (mod 7), so 1 / 3 = 5, 2 / 3 = 10 mod 7 = 3; 6 * 6 = 36 = 1: 1 / 6 = 6
    x, y = data.arrays("modular_div/p_7", "train")
    label = {(int(a), int(b)): int(c) for (a, _, b, _), c in zip(x, y, strict=True)}
    assert label[(1, 3)] == 5 and label[(2, 3)] == 3 and label[(1, 6)] == 6
    assert label[(0, 4)] == 0
    assert x.shape == (42, 4) and (x[:, 2] != 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_order_is_the_documented_permutation(name):
    """The a-major enumeration permuted by numpy.random.default_rng(0).permutation(n)."""
    x, _ = data.arrays(name, "train")
    pairs = all_pairs(name, P)
    order = np.random.default_rng(0).permutation(len(pairs))
    assert pairs_of(x) == [pairs[i] for i in order]


@pytest.mark.parametrize("name", ["modular_add", "modular_div"])
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_split_schemes_partition_the_equations(name, scheme):
    train_split, val_split = scheme
    x_train, y_train = data.arrays(name, train_split)
    x_val, y_val = data.arrays(name, val_split)
    n = COUNTS[name]
    assert (len(x_train), len(x_val)) == SCHEMES[scheme][n]
    assert len(y_train) == len(x_train) and len(y_val) == len(x_val)
    train, val = set(pairs_of(x_train)), set(pairs_of(x_val))
    assert len(train) == len(x_train) and len(val) == len(x_val)
    assert not train & val  # no pair in two splits
    assert train | val == set(all_pairs(name, P))  # every pair in one of them
    x_all, _ = data.arrays(name, "train")
    np.testing.assert_array_equal(np.concatenate([x_train, x_val]), x_all)  # a prefix cut
    np.testing.assert_array_equal(data.arrays(name, "all")[0], x_all)


def test_deterministic_when_regenerated():
    before = {name: data.arrays(name, "train") for name in NAMES}
    modular._stored.cache_clear()
    for name in NAMES:
        x, y = data.arrays(name, "train")
        np.testing.assert_array_equal(x, before[name][0])
        np.testing.assert_array_equal(y, before[name][1])
    x1, y1 = modular.generate("modular_mul", 11)
    x2, y2 = modular.generate("modular_mul", 11)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_same_arrays_in_a_fresh_process_without_tensorflow(tmp_path):
    """The NumPy path alone (TensorFlow hidden, JAX backend) gives the same arrays."""
    code = """
import sys, hashlib
sys.modules["tensorflow"] = None
sys.modules["tensorflow_datasets"] = None
import types
package = types.ModuleType("keras_normreg")
package.__path__ = [sys.argv[1]]
sys.modules["keras_normreg"] = package
from keras_normreg import data
x, y = data.arrays("modular_div", "train[:30%]")
print(x.dtype, y.dtype, x.shape,
      hashlib.sha256(x.tobytes()).hexdigest(), hashlib.sha256(y.tobytes()).hexdigest())
loaded = [m for m in sys.modules if m.split(".")[0] == "tensorflow" and sys.modules[m]]
print("tf loaded:", loaded)
"""
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code, str(REPO / "keras_normreg")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    x, y = data.arrays("modular_div", "train[:30%]")
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == (f"int32 int64 (2794, 4) {hashlib.sha256(x.tobytes()).hexdigest()} "
                         f"{hashlib.sha256(y.tobytes()).hexdigest()}")
    assert lines[-1] == "tf loaded: []"


def test_array_epochs_and_fit_on_this_backend():
    """The epoch stream keeps the int32 tokens, visits every example once per epoch, and an
    embedding model trains on it with the current Keras backend."""
    x, y = data.arrays("modular_add", "train[:2%]")  # 2% of 9409: 188.18 -> 188
    assert len(x) == 188
    stream = ArrayEpochs(x, y, 50, seed=3)
    assert len(stream) == 4  # ceil(188 / 50)
    batches = [stream[i] for i in range(len(stream))]
    assert all(b[0].dtype == np.int32 and b[1].dtype == np.int64 for b in batches)
    seen = np.concatenate([b[0] for b in batches])
    assert sorted(pairs_of(seen)) == sorted(pairs_of(x))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,), dtype="int32"),
                              keras.layers.Embedding(data.info("modular_add").vocab_size, 8),
                              keras.layers.Flatten(),
                              keras.layers.Dense(data.info("modular_add").num_classes)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(stream, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


# --- the tfds builders (TensorFlow) ----------------------------------------------------------------

@pytest.fixture(scope="module")
def modular_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds_modular"))


@needs_tf
@pytest.mark.parametrize("name", NAMES)
def test_load_equals_arrays(name, modular_dir):
    """data.load (tf.data) yields the arrays' examples, in order, unshuffled; p = 11 keeps the
    preparation small."""
    tf_name = f"{name}/p_11"
    for split in ("train", "train[:30%]", "train[30%:]"):
        ds = data.load(tf_name, split, 1000, data_dir=modular_dir, shuffle=False)
        assert ds.element_spec[0].dtype.name == "int32" and ds.element_spec[1].dtype.name == "int64"
        batches = [(x.numpy(), y.numpy()) for x, y in ds]
        x, y = data.arrays(tf_name, split)
        np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
        np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)


@needs_tf
def test_tfds_builder_default_p(modular_dir):
    import tensorflow_datasets as tfds

    ds = data.load("modular_add", "train", 4096, data_dir=modular_dir)  # prepares p = 97
    builder = tfds.builder("modular_add", data_dir=modular_dir)
    assert builder.builder_config.name == "default" and builder.builder_config.p == 97
    assert builder.info.splits["train"].num_examples == 9409
    assert builder.info.features["label"].num_classes == 97
    raw = tfds.load("modular_add", split="train[:5]", data_dir=modular_dir)
    assert raw.element_spec["x"].shape == (4,) and raw.element_spec["x"].dtype.name == "int32"
    examples = list(tfds.as_numpy(raw))
    x, y = data.arrays("modular_add", "train[:5]")
    np.testing.assert_array_equal(np.stack([e["x"] for e in examples]), x)
    np.testing.assert_array_equal([e["label"] for e in examples], y)
    shuffled = np.concatenate([b[0].numpy() for b in ds])  # training split: shuffled
    assert sorted(pairs_of(shuffled)) == sorted(all_pairs("modular_add", 97))


@needs_tf
def test_load_epochs_and_lazy_names(modular_dir):
    stream, n = data.load_epochs("modular_mul/p_11", "train[:50%]", 16, data_dir=modular_dir)
    assert n == 60  # 50% of 121: 60.5 -> 60 (half to even)
    x, _ = next(iter(stream))
    assert x.dtype.name == "int32" and tuple(x.shape) == (16, 4)
    from keras_normreg.data import modular_builders

    assert data.ModularAdd is modular_builders.ModularAdd
    assert data.modular_config(113) is modular_builders.BUILDER_CONFIGS[1]
    assert data.modular_config(11).name == "p_11"
    assert modular_builders.config_from_name("p_91") is None
    assert modular_builders.config_from_name("default").p == 97


# --- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("p, why", [
    (91, r"p=91 is not prime \(91 = 7 x 13\)"),
    (4, r"p=4 is not prime \(4 = 2 x 2\)"),
    (2, r"p=2 is outside \[3, 4093\]"),
    (1, r"outside"),
    (-7, r"outside"),
    (4099, r"outside"),  # prime, but above MAX_P
    (2.5, r"must be an integer"),
    ("97", r"must be an integer"),
    (True, r"must be an integer"),
    (None, r"must be an integer"),
])
def test_bad_p(p, why):
    with pytest.raises(ValueError, match=rf"Argument `p`.*{why}.*Received: p=") as excinfo:
        modular.generate("modular_add", p)
    assert str(excinfo.value).endswith(f"Received: p={p!r}")


@pytest.mark.parametrize("name, why", [
    ("modular_add/p_91", r"p=91 is not prime \(91 = 7 x 13\)"),
    ("modular_div/p_2", r"p=2 is outside \[3, 4093\]"),
    ("modular_mul/p_1", r"p=1 is outside"),
])
def test_bad_p_in_name(name, why):
    for call in (data.info, lambda n: data.arrays(n, "train")):
        with pytest.raises(ValueError, match=rf"must be a prime.*{why}") as excinfo:
            call(name)
        assert str(excinfo.value).endswith(f"Received: name={name!r}")


@pytest.mark.parametrize("name", ["modular_pow", "modular_add/q_7", "modular_add/p_",
                                  "modular_add/p_7x", "Modular_add", "modular"])
def test_unknown_names(name):
    with pytest.raises(ValueError, match=r"'modular_add/p_<prime>'.*Received: name="):
        data.info(name)
    with pytest.raises(ValueError, match=r"Received: name="):
        data.arrays(name, "train")


def test_generator_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"\['modular_add', .*Received: name='modular_pow'$"):
        modular.generate("modular_pow")


def test_no_test_split():
    with pytest.raises(ValueError, match=r"Unknown split 'test'.*\['train', 'all'\].*"
                                         r"Received: split='test'$"):
        data.arrays("modular_add", "test")


def test_division_by_zero_refused():
    with pytest.raises(ValueError, match=r"`b`.*no multiple of p=7.*Received: b=0$"):
        modular.results("modular_div", [1, 2], [3, 0], 7)


@needs_tf
def test_no_augmentation(modular_dir):
    with pytest.raises(ValueError, match=r"rank 3.*Received: augment='crop'"):
        data.load("modular_add/p_11", "train", 8, data_dir=modular_dir, augment="crop")
    with pytest.raises(ValueError, match=r"no default augmentation.*Received: augment=True"):
        data.load("modular_add/p_11", "train", 8, data_dir=modular_dir, augment=True)
    with pytest.raises(ValueError, match=r"Argument `p`.*Received: p=91"):
        data.modular_config(91)
