"""Shared pytest markers for tests that only make sense on some Keras backends.

* ``requires_tensorflow``: the test uses TensorFlow itself (``tf.function``, ``tf.distribute``,
  ``tf.data``, ``tf.summary``, ``tf.GradientTape``); skipped on the JAX and torch backends.
* ``requires_float64``: the test computes in float64 (to machine precision). Skipped on JAX
  unless 64-bit mode is on (``JAX_ENABLE_X64=1``: without it JAX silently computes ``float64``
  arrays in float32).
"""

from __future__ import annotations

import keras
import pytest

__all__ = ["BACKEND", "FLOAT64", "requires_float64", "requires_tensorflow", "spawns_backends"]

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
