"""keras_normreg._kernels: column sums / norms against NumPy and the hand-derived gradient."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_normreg._kernels import column_norms, column_sums
from tests.helpers import gradients, requires_float64

pytestmark = pytest.mark.backends  # a block's tests: run on every backend (backend_marks.py)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_column_sums_match_numpy():
    x = np.random.default_rng(0).normal(size=(37, 5))
    np.testing.assert_allclose(_np(column_sums(keras.ops.convert_to_tensor(x, "float32"))),
                               x.sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(column_sums(keras.ops.convert_to_tensor(
        [[1.0, 2.0], [3.0, -4.0]]))), [4.0, -2.0])


def test_column_norms_value_and_gradient():
    # Column 0: (3, 4) -> norm 5, d norm / dv = v / 5; column 1: (0, 0) below the floor
    # -> sqrt(floor), zero gradient; column 2: (1, 2) -> sqrt(5).
    v = np.array([[3.0, 0.0, 1.0], [4.0, 0.0, 2.0]], "float32")
    w = keras.ops.convert_to_tensor([1.0, 2.0, 3.0])
    n = column_norms(v, 1e-4)
    _, (gv,) = gradients(lambda v: keras.ops.sum(column_norms(v, 1e-4) * w), [v])
    np.testing.assert_allclose(_np(n), [5.0, 1e-2, np.sqrt(5.0)], rtol=1e-6)
    expected = np.array([[3 / 5, 0.0, 3 / np.sqrt(5)], [4 / 5, 0.0, 6 / np.sqrt(5)]])
    np.testing.assert_allclose(gv, expected, rtol=1e-6)


@requires_float64
def test_column_norms_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    v0 = rng.normal(size=(6, 4))
    w = rng.normal(size=4)

    def f(v):
        return float(np.sum(np.sqrt((v**2).sum(0)) * w))

    wt = keras.ops.convert_to_tensor(w, "float64")
    _, (got,) = gradients(lambda v: keras.ops.sum(column_norms(v, 1e-12) * wt), [v0])
    h = 1e-6
    fd = np.zeros_like(v0)
    for idx in np.ndindex(*v0.shape):
        e = np.zeros_like(v0)
        e[idx] = h
        fd[idx] = (f(v0 + e) - f(v0 - e)) / (2 * h)
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-8)


def test_column_dots_match_numpy():
    """Four column sums of products in one reduction, against float64 NumPy; float32 bound:
    37 terms, |error| <= 37 u sum|a b| (Higham), u = 2**-24, plus one rounding per product."""
    from keras_normreg._kernels import column_dots

    rng = np.random.default_rng(2)
    a, b, c = (rng.normal(size=(37, 5)).astype("float32") for _ in range(3))
    pairs = [(a, a), (b, b), (a, b), (a, c)]
    got = _np(column_dots([(keras.ops.convert_to_tensor(p), keras.ops.convert_to_tensor(q))
                           for p, q in pairs]))
    assert got.shape == (4, 5)
    for row, (p, q) in zip(got, pairs, strict=True):
        p, q = p.astype(np.float64), q.astype(np.float64)
        bound = 38 * 2.0**-24 * np.abs(p * q).sum(0)
        assert np.all(np.abs(row - (p * q).sum(0)) <= bound)
    (single,) = _np(column_dots([(a, c)]))
    np.testing.assert_allclose(single, got[3], rtol=1e-6, atol=1e-6)
