"""Shared pytest markers for tests that only make sense on some Keras backends.

* ``requires_tensorflow``: the test uses TensorFlow itself (``tf.function``, ``tf.distribute``,
  ``tf.data``, ``tf.summary``, ``tf.GradientTape``); skipped on the JAX and torch backends.
* ``requires_float64``: the test computes in float64 (to machine precision). Skipped on JAX
  unless 64-bit mode is on (``JAX_ENABLE_X64=1``: without it JAX silently computes ``float64``
  arrays in float32).

Which tests `make test` runs again on the JAX and PyTorch backends: those carrying the
``backends`` marker (its JAX and PyTorch sessions select ``-m "not slow and backends"``).
tests/conftest.py gives it to every test in a block folder (``BLOCK_FOLDERS``), so a new test
file there runs on every backend without being listed anywhere, unless its module
(``pytestmark = pytest.mark.tf_only``) or the test itself is marked ``tf_only``. A test module
outside those folders opts in with ``pytestmark = pytest.mark.backends``.
"""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

__all__ = ["BACKEND", "BLOCK_FOLDERS", "FLOAT64", "TESTS", "requires_float64",
           "requires_tensorflow", "runs_on_every_backend", "spawns_backends"]

BACKEND = keras.backend.backend()


def _jax_x64() -> bool:
    import jax  # installed whenever the JAX backend is in use

    return bool(jax.config.jax_enable_x64)


FLOAT64 = BACKEND != "jax" or _jax_x64()

requires_tensorflow = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason=f"uses TensorFlow itself (tf.function / tf.distribute / tf.data / tf.summary); "
    f"Keras backend is {BACKEND!r}",
)

requires_float64 = pytest.mark.skipif(
    not FLOAT64, reason="float64 on JAX needs 64-bit mode: run with JAX_ENABLE_X64=1"
)

#: Tests that start every backend in subprocesses themselves (cross-backend equivalence, JAX
#: data parallelism, TensorFlow hidden): run once, from the TensorFlow session of `make test`,
#: not again from the JAX and torch sessions.
spawns_backends = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="starts its own jax/torch subprocesses: runs once, from the TensorFlow session",
)


#: The tests/ folders of the backend-agnostic blocks: every test in them also runs in the JAX and
#: PyTorch sessions of `make test` unless marked ``tf_only``.
BLOCK_FOLDERS = ("layers", "optimizers", "zoo", "diagnostics", "data")
TESTS = Path(__file__).resolve().parent


def runs_on_every_backend(path, markers) -> bool:
    """Whether the test in file ``path`` carrying the marker names ``markers`` (its own, its
    class's and its module's) runs in every backend's session of `make test`: in a block folder
    and not ``tf_only``, or marked ``backends`` (a module outside the block folders that opts in).
    A test marked both ``backends`` and ``tf_only`` is a contradiction: ValueError."""
    markers = set(markers)
    if {"backends", "tf_only"} <= markers:
        raise ValueError(f"{path} is marked both `backends` and `tf_only`: keep one. "
                         f"Received: markers={sorted(markers)}")
    if "tf_only" in markers:
        return False
    try:
        folder = Path(path).resolve().relative_to(TESTS).parts[0]
    except ValueError:  # not under tests/
        return "backends" in markers
    return folder in BLOCK_FOLDERS or "backends" in markers
