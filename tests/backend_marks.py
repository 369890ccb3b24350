"""Shared pytest markers for tests that only make sense on some Keras backends.

* ``requires_tensorflow``: the test uses TensorFlow itself (``tf.function``, ``tf.distribute``,
  ``tf.data``, ``tf.summary``, ``tf.GradientTape``); skipped on the JAX and torch backends.
* ``requires_float64``: the test computes in float64. Skipped on JAX unless 64-bit mode is on
  (``JAX_ENABLE_X64=1``: without it JAX silently computes ``float64`` arrays in float32).
* ``requires_float64_ops``: the test checks float64 results of ``keras.ops`` to machine
  precision. As ``requires_float64``, and also skipped on torch, where Keras' type promotion
  (``keras.src.backend.common.dtypes.BIT64_TO_BIT32_DTYPE``, "aligned with JAX's default")
  makes ``ops.maximum`` / ``ops.where`` / ... of two float64 tensors float32.
"""

from __future__ import annotations

import keras
import pytest

__all__ = ["BACKEND", "requires_float64", "requires_float64_ops", "requires_tensorflow"]

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

requires_float64_ops = pytest.mark.skipif(
    not FLOAT64 or BACKEND == "torch",
    reason="float64 keras.ops to machine precision: not on torch (Keras promotes float64 "
    "results of ops.maximum/ops.where to float32 there); on JAX only with JAX_ENABLE_X64=1",
)
