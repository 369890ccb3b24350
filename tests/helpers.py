"""Test helpers shared by the suite (Keras' own TestCase is private, so we keep ours here)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import keras
import numpy as np


def assert_config_roundtrip(obj, *, compare=None):
    """get_config -> from_config gives an object with an identical config."""
    config = obj.get_config()
    clone = obj.__class__.from_config(config)
    assert clone.get_config() == config, (clone.get_config(), config)
    if compare is not None:
        compare(obj, clone)
    return clone


def assert_serialize_roundtrip(obj):
    """keras.saving.serialize/deserialize (registered name lookup) gives the same class and config."""
    ser = keras.saving.serialize_keras_object(obj)
    clone = keras.saving.deserialize_keras_object(ser, safe_mode=True)
    assert type(clone) is type(obj), (type(clone), type(obj))
    assert clone.get_config() == obj.get_config()
    return clone


def assert_saved_model_equal(model, x, tmp_path, *, atol=1e-6, training=False, custom_objects=None):
    """Save ``model`` to .keras, load it with safe_mode=True and compare outputs on ``x``."""
    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, custom_objects=custom_objects)
    y0 = keras.ops.convert_to_numpy(model(x, training=training))
    y1 = keras.ops.convert_to_numpy(loaded(x, training=training))
    np.testing.assert_allclose(y1, y0, atol=atol, rtol=0)
    return loaded


def numeric_grad(f, x, eps=1e-3):
    """Central finite differences of scalar f at float64 array x."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        xp = x.copy()
        xm = x.copy()
        xp[i] += eps
        xm[i] -= eps
        g[i] = (f(xp) - f(xm)) / (2 * eps)
    return g


# ----------------------------------------------------------------------------- backends
# The backend markers live in tests/backend_marks.py; re-exported here for the helpers below.
from tests.backend_marks import BACKEND, requires_float64  # noqa: E402, F401


def gradients(fn, inputs=(), variables=()):
    """``(value, grads)`` of the scalar ``fn(*inputs)``: grads w.r.t. each input, then each
    Keras variable, as NumPy arrays, on the current backend (``tf.GradientTape``,
    ``jax.grad`` over a ``keras.StatelessScope``, ``torch.autograd.grad``). Assignments made
    by ``fn`` (e.g. moving statistics) are applied on TensorFlow and torch, not on JAX."""
    variables = list(variables)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        xs = [tf.convert_to_tensor(x) for x in inputs]
        with tf.GradientTape() as tape:
            for x in xs:
                tape.watch(x)
            out = fn(*xs)
        grads = tape.gradient(out, xs + [v.value for v in variables])
    elif BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        def value(xs, values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
                return fn(*xs)

        xs = [jnp.asarray(x) for x in inputs]
        out, (gx, gv) = jax.value_and_grad(value, argnums=(0, 1))(
            xs, [v.value for v in variables])
        grads = list(gx) + list(gv)
    elif BACKEND == "torch":
        import torch

        xs = [keras.ops.convert_to_tensor(x).detach().requires_grad_(True) for x in inputs]
        out = fn(*xs)
        grads = torch.autograd.grad(out, xs + [v.value for v in variables])
    else:  # pragma: no cover
        raise NotImplementedError(BACKEND)
    return (keras.ops.convert_to_numpy(out),
            [keras.ops.convert_to_numpy(g) for g in grads])


# ------------------------------------------------------------------------------ bench/
BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str):
    """Import ``bench/<name>.py`` (bench/ is scripts, not a package) once per session."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    module_name = f"_bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
