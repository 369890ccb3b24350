"""keras_normreg._kernels: column sums / norms against NumPy and the hand-derived gradient."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_normreg._kernels import column_norms, column_sums, max_min_over_axis1, scaled_matmul
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


def test_scaled_matmul_value_and_gradients_match_numpy():
    """``y = (x v) * g / ||v||`` and its gradients against the chain rule written in NumPy
    (float64): with ``s = g / n``, ``z = x v`` and upstream ``u = dL/dy``:
    ``dx = (u s) v^T``, ``dg = sum_rows(u z) / n``, ``dv = x^T (u s) - v sum_rows(u z) g / n^3``
    (the last term 0 for a column whose squared norm is below the floor: column 3 is zero).
    float32 bound: each entry is a sum of <= 8 products of O(1) terms, relative rounding
    ~8 * 6e-8; rtol 1e-5, atol 1e-5 leaves a 20x margin."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 8)).astype("float32")
    v = rng.normal(size=(8, 4)).astype("float32")
    v[:, 3] = 0.0
    g = rng.normal(size=4).astype("float32")
    u = rng.normal(size=(5, 4)).astype("float32")
    floor = 1e-6
    ut = keras.ops.convert_to_tensor(u)
    value, (gx, gv, gg) = gradients(
        lambda x, v, g: keras.ops.sum(scaled_matmul(x, v, g, floor) * ut), [x, v, g])

    x64, v64, g64, u64 = (a.astype("float64") for a in (x, v, g, u))
    sq = (v64**2).sum(0)
    n = np.sqrt(np.maximum(sq, floor))
    s = g64 / n
    z = x64 @ v64
    np.testing.assert_allclose(float(value), float(((z * s) * u64).sum()), rtol=1e-5, atol=1e-5)
    t = (u64 * z).sum(0)
    np.testing.assert_allclose(gx, (u64 * s) @ v64.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gg, t / n, rtol=1e-5, atol=1e-5)
    c = np.where(sq > floor, -t * g64 / n**3, 0.0)
    np.testing.assert_allclose(gv, x64.T @ (u64 * s) + v64 * c, rtol=1e-5, atol=1e-5)
    y = keras.ops.convert_to_numpy(scaled_matmul(x, v, g, floor))
    np.testing.assert_allclose(y, z * s, rtol=1e-5, atol=1e-5)


def test_scaled_matmul_with_a_scratch_buffer_across_shapes_and_dtypes():
    """One caller-owned Scratch through kernels of different shapes and dtypes: every output
    and gradient matches NumPy's float64 formula (the float32 bound of the test above), an
    earlier output is untouched by later calls (the buffer holds only the temporary
    ``v * v``), and on PyTorch the buffer is reused for an unchanged shape and dtype and
    replaced otherwise; a deep copy (a copied layer) gets a buffer of its own."""
    import copy

    from keras_normreg._kernels import Scratch

    rng = np.random.default_rng(4)
    scratch = Scratch()
    cases = [((5, 8, 4), "float32"), ((3, 6, 3), "float32"), ((5, 8, 4), "float32")]
    if keras.backend.backend() == "torch":  # float64 kernels: PyTorch's path only
        cases.append(((5, 8, 4), "float64"))
    kept, buffers = [], []
    for (rows, fan, units), dtype in cases:
        x, v, u = (rng.normal(size=s) for s in ((rows, fan), (fan, units), (rows, units)))
        g = rng.normal(size=units)
        ts = [keras.ops.convert_to_tensor(a, dtype) for a in (x, v, g)]
        ut = keras.ops.convert_to_tensor(u, dtype)
        _, (gx, gv, gg) = gradients(
            lambda x, v, g, ut=ut: keras.ops.sum(scaled_matmul(x, v, g, 1e-6, scratch) * ut),
            ts)
        n = np.sqrt((v**2).sum(0))
        z = x @ v
        t = (u * z).sum(0)
        np.testing.assert_allclose(gx, (u * g / n) @ v.T, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(gg, t / n, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(gv, x.T @ (u * g / n) - v * t * g / n**3,
                                   rtol=1e-5, atol=1e-5)
        y = scaled_matmul(*ts, 1e-6, scratch)
        kept.append((y, _np(y).copy(), z * g / n))
        buffers.append(scratch._buffer)
    for y, first_read, expected in kept:
        np.testing.assert_array_equal(_np(y), first_read)
        np.testing.assert_allclose(first_read, expected, rtol=1e-5, atol=1e-5)
    if keras.backend.backend() == "torch":
        assert [tuple(b.shape) for b in buffers[:3]] == [(8, 4), (6, 3), (8, 4)]
        assert buffers[1] is not buffers[0] and buffers[3].dtype != buffers[2].dtype
        assert scratch.like(buffers[3]) is buffers[3]  # same shape and dtype: reused
    else:  # TensorFlow and JAX compose the ops: the buffer is never made
        assert buffers == [None] * len(cases)
    assert copy.deepcopy(scratch)._buffer is None


@pytest.mark.parametrize("rows", [1, 2, 7, 49, 64])
def test_max_min_over_axis1_match_numpy(rows):
    """Exact (max and min only select values): any row count, odd ones included."""
    x = np.random.default_rng(rows).normal(size=(5, rows, 3)).astype("float32")
    hi, lo = max_min_over_axis1(keras.ops.convert_to_tensor(x))
    np.testing.assert_array_equal(_np(hi), x.max(1))
    np.testing.assert_array_equal(_np(lo), x.min(1))
