"""Every zoo model (``zoo.list_models()``) x the normalization choices: forward shape, finite
outputs, one SGD train step, and .keras save/load (safe_mode=True) with equal outputs.

Fast suite, at a small input (16x16 images): every model with its default norm (``norm`` left
unset: ``"batch"`` for the CNN families, pre-LN ``"layer"`` for the transformers; full size,
except the slow-marked entries: >= ~5M parameters, resnet110, vit_cifar), and every norm the
family accepts (``spec.norms``, else the whole table) on one model of each family;
slow-marked entries and the every-norm rows are built at reduced size through the entry's own
overrides (``REDUCED``). The full-size grid (every model x every norm it accepts at the
entry's own input shape) is marked slow. Token models (``vocab_size``) get random token ids.
"""

import keras
import numpy as np
import pytest

from keras_normreg import _compat, layers, zoo
from tests.helpers import assert_saved_model_equal

# Every model x every norm with a train step and a save: TensorFlow only (the families' and
# the zoo layers' tests in this folder run on every backend).
pytestmark = pytest.mark.tf_only

NORMS = layers.normalization_names()
NUM_CLASSES = 5

#: Overrides that make an entry cheap, per family (a new slow family must add one here).
REDUCED = {
    "resnet": {"depth": 8, "width": 4},
    "preact_resnet": {"width": 8},
    "vgg": {"width": 8},
    "wide_resnet": {"depth": 10, "widen_factor": 1},
    "transformer": {"width": 16, "depth": 1, "heads": 2},
}
#: The model of each family that gets every norm in the fast suite.
EVERY_NORM = ("mlp", "cnn1d", "cnn_digits", "resnet20", "preact_resnet18", "vgg11", "wrn16_4",
              "vit_digits")


def norms_of(name):
    """The norms zoo model ``name`` accepts (its family's, else the whole table)."""
    spec = zoo.get_spec(name)
    return NORMS if spec.norms is None else spec.norms


def small_input(spec):
    shape = spec.input_shape
    if len(shape) == 3 and shape[0] > 16:
        return (16, 16, shape[2])
    return shape


def reduced(spec, norm):
    if not spec.slow and (norm is None or spec.family not in REDUCED):
        return {}
    if spec.family not in REDUCED:
        raise AssertionError(f"slow zoo family {spec.family!r} needs reduced overrides in "
                             "tests/zoo/test_whole_zoo.py::REDUCED")
    return REDUCED[spec.family]


def check_model(name, norm, tmp_path, *, input_shape, overrides, finite_after_step=True):
    model = zoo.create(name, norm=norm, num_classes=NUM_CLASSES, input_shape=input_shape,
                       **overrides)
    rng = np.random.default_rng(0)
    vocab = zoo.get_spec(name).defaults.get("vocab_size")
    if vocab is not None:
        x = rng.integers(0, vocab, size=(2, *input_shape)).astype("int32")
    else:
        x = rng.normal(size=(2, *input_shape)).astype("float32")
    y = np.array([0, NUM_CLASSES - 1])

    out = keras.ops.convert_to_numpy(model(x, training=False))
    assert out.shape == (2, NUM_CLASSES)
    assert np.isfinite(out).all()

    before = [v.numpy() for v in model.trainable_weights]
    model.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    loss = float(np.asarray(model.train_on_batch(x, y)).reshape(-1)[0])
    assert np.isfinite(loss)
    # Keras' trainers rebuild the whole model symbolically before every train_on_batch /
    # fit / evaluate call while any nested layer is unbuilt: none may be left unbuilt.
    unbuilt = [layer.name for layer in _compat.flatten_layers(model, include_self=True)
               if not layer.built]
    assert unbuilt == []
    after = [v.numpy() for v in model.trainable_weights]
    changed = sum(not np.array_equal(b, a) for b, a in zip(before, after, strict=True))
    # zero_init_residual: the first step cannot move the weights behind a zeroed layer
    share = 4 if overrides.get("zero_init_residual") else 2
    assert changed >= len(before) // share, (changed, len(before))
    if finite_after_step:
        assert np.isfinite(keras.ops.convert_to_numpy(model(x, training=False))).all()

    loaded = assert_saved_model_equal(model, x, tmp_path, atol=1e-5)
    assert loaded.count_params() == model.count_params()
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]


# None: the entry's default norm (create() without norm=)
FAST_GRID = [(name, None) for name in zoo.list_models()] + [
    (name, norm) for name in EVERY_NORM for norm in norms_of(name)
    if norm != zoo.get_spec(name).default_norm]
FULL_GRID = [(name, norm) for name in zoo.list_models() for norm in norms_of(name)]


@pytest.mark.parametrize("name,norm", FAST_GRID)
def test_zoo_model_small(name, norm, tmp_path):
    spec = zoo.get_spec(name)
    check_model(name, norm, tmp_path, input_shape=small_input(spec), overrides=reduced(spec, norm))


def test_fast_grid_covers_every_model_and_norm():
    assert {n for n, _ in FAST_GRID} == set(zoo.list_models())
    effective = {m if m is not None else zoo.get_spec(n).default_norm for n, m in FAST_GRID}
    assert effective - {None} == set(NORMS)
    families = {zoo.get_spec(n).family for n in zoo.list_models()}
    assert families == {zoo.get_spec(n).family for n in EVERY_NORM}
    # every family gets every norm it accepts, its default included
    for name in EVERY_NORM:
        spec = zoo.get_spec(name)
        got = {m for n, m in FAST_GRID if n == name}
        assert got == {None} | (set(norms_of(name)) - {spec.default_norm}), name
        assert spec.default_norm is None or spec.default_norm in norms_of(name)
    assert "transformer" in families and set(norms_of("vit_digits")) == {"layer", "rms", "none"}
    assert set(FULL_GRID) >= {(n, m) for n, m in FAST_GRID if m is not None}


@pytest.mark.slow
@pytest.mark.parametrize("name,norm", FULL_GRID)
def test_zoo_model_full_size(name, norm, tmp_path):
    """Without a norm layer, deep post-activation ResNets explode at He initialization (logits
    ~2e3 / 1e5 / 1e9 for ResNet-44 / 56 / 110; one SGD step then gives NaN): those are built
    with ``zero_init_residual=True``, which "weight_fixed" cannot use, so there the weights
    after the step are allowed to be non-finite (the step itself must still run)."""
    spec = zoo.get_spec(name)
    overrides = {}
    if norm in ("none", "weight") and "zero_init_residual" in spec.options:
        overrides["zero_init_residual"] = True
    deep_fixed = (norm == "weight_fixed" and spec.family == "resnet"
                  and spec.defaults["depth"] >= 44)
    check_model(name, norm, tmp_path, input_shape=spec.input_shape, overrides=overrides,
                finite_after_step=not deep_fixed)
