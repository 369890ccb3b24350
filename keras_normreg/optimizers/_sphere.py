"""Sphere mode helpers: retraction granularity of scale-invariant weights.

A *granularity* tells which axes a sphere weight is normalized over:

* ``"unit"``: per output unit, i.e. over all axes but the last (Keras kernels ``(..., in, out)``);
  rank <= 1 weights: over the whole vector;
* ``"tensor"``: over the whole tensor (one norm);
* a list of axes: over exactly those axes (e.g. ``[0, 1]`` for a depthwise kernel
  ``(kh, kw, in, multiplier)``, whose output units are the last two axes).

Retraction keeps the function unchanged only if the model is invariant to rescaling each
normalized group *separately*. The invariance analysis states that in the ``granularity`` field
of each :class:`keras_normreg._invariance.ScaleInvariance` (``"unit"`` only where per-unit
invariance is certain, ``"tensor"`` otherwise, which is always function-preserving);
:func:`granularities` reads it.
"""

from __future__ import annotations

from keras import ops

from keras_normreg._utils import received

GRANULARITIES = ("unit", "tensor")


def check_granularity(name, value):
    """Validate one granularity; return ``"unit"``, ``"tensor"`` or a tuple of ints."""
    if isinstance(value, str) and value in GRANULARITIES:
        return value
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(a, int) and not isinstance(a, bool) for a in value
    ):
        return tuple(value)
    raise ValueError(
        f"Argument `{name}` must map variable paths to 'unit', 'tensor' or a non-empty list "
        f"of axes. {received(name, value)}"
    )


def reduction_axes(granularity, rank):
    """The axes a weight of ``rank`` is normalized over for ``granularity`` (None: all)."""
    if granularity == "tensor" or rank <= 1:
        return None
    if granularity == "unit":
        return tuple(range(rank - 1))
    return tuple(a % rank for a in granularity)


def norms(x, granularity="unit", epsilon=0.0):
    """L2 norms of ``x`` over the axes of ``granularity`` (kept as size-1 axes)."""
    axes = reduction_axes(granularity, len(x.shape))
    norm = ops.sqrt(ops.sum(ops.square(x), axis=axes, keepdims=True))
    if not epsilon:
        return norm
    # epsilon straight in x's dtype (ops.cast of a Python float goes through float32); max via
    # where: Keras' torch ops.maximum returns float32 for two float64 tensors (its type
    # promotion maps float64 to float32 off TensorFlow), where keeps the dtype; NaN stays NaN
    floor = ops.convert_to_tensor(epsilon, dtype=norm.dtype)
    return ops.where(norm < floor, floor, norm)


def granularities(found):
    """``{path: granularity}`` of the invariant entries of ``found`` (``{path:
    ScaleInvariance}``, as :func:`keras_normreg._invariance.find_scale_invariant` returns)."""
    return {path: v.granularity for path, v in found.items() if v.invariant}
