"""Sphere mode helpers: retraction granularity of scale-invariant weights.

A *granularity* tells which axes a sphere weight is normalized over:

* ``"unit"``: per output unit, i.e. over all axes but the last (Keras kernels ``(..., in, out)``);
  rank <= 1 weights: over the whole vector;
* ``"tensor"``: over the whole tensor (one norm);
* a list of axes: over exactly those axes (e.g. ``[0, 1]`` for a depthwise kernel
  ``(kh, kw, in, multiplier)``, whose output units are the last two axes).

Retraction keeps the function unchanged only if the model is invariant to rescaling each
normalized group *separately*. The invariance analysis states that in the ``granularity`` field
of each :class:`keras_normreg.invariance.ScaleInvariance` (``"unit"`` only where per-unit
invariance is certain, ``"tensor"`` otherwise, which is always function-preserving);
:func:`granularities` reads it.

The *radius* (:func:`radius`) is the norm each normalized group is retracted to. Since the
function does not depend on it, it only sets the step size, and the default rule
``"units"`` chooses it so that a whole-tensor group moves like the per-unit case.

Derivation. Let ``f`` be the loss and ``W`` a group with ``f(cW) = f(W)`` for every ``c > 0``.
Differentiating in ``W`` gives ``c·∇f(cW) = ∇f(W)``, so ``∇f(cW) = ∇f(W)/c``. Differentiating
in ``c`` at ``c = 1`` gives ``⟨∇f(W), W⟩ = 0``: the gradient is orthogonal to ``W``. Write
``W = r·Ŵ`` with ``‖Ŵ‖ = 1``. An SGD step ``η∇f(W) = (η/r)∇f(Ŵ)`` is orthogonal to ``W``, so it
turns ``W`` by the angle::

    θ ≈ ‖η∇f(W)‖ / ‖W‖ = η‖∇f(Ŵ)‖ / r²

On the sphere of radius ``r`` the direction therefore moves like a step of ``η/r²`` on the
unit sphere: ``η/r²`` is the effective learning rate, and ``r`` is a learning-rate knob.

* Per unit (``"unit"``, a kernel before BatchNorm): each unit ``w_j`` is a group of its own at
  radius 1, so every unit's effective learning rate is ``η/‖w_j‖² = η``.
* Whole tensor (``"tensor"``, a kernel before LayerNorm or GroupNorm): only ``‖W‖_F = r`` is
  pinned, and the units share it, ``Σ_j ‖w_j‖² = r²``. At ``r = 1`` a typical unit has
  ``‖w_j‖ ≈ 1/√units``. Before LayerNorm, unit ``j``'s output is ``(w_j·x − μ)/σ``, with
  ``σ ∝ ‖w_j‖`` (the typical unit norm), so ``‖∇_{w_j} f‖ ∝ 1/‖w_j‖``. The unit turns by
  ``≈ η‖∇_{w_j} f‖/‖w_j‖ ∝ η/‖w_j‖² ≈ η·units/r²``. At ``r = 1`` that is ``units`` times the
  per-unit case at the same ``η``, and the demo study collapsed to chance with the cnn1d model
  (32-64 units, η = 0.1, momentum 0.9).

The rule ``"units"`` retracts a whole-tensor group of rank >= 2 to ``r = √units`` (``units =
shape[-1]``, the output units of a Keras kernel ``(..., in, out)``). Then
``mean_j ‖w_j‖² = r²/units = 1`` exactly, so the effective learning rate at the mean unit
norm, ``η/mean_j ‖w_j‖²``, is exactly ``η``, the per-unit value. The mean of the units' own
rates is ``mean_j η/‖w_j‖² ≥ η`` (Jensen), with equality only when all units have the same
norm. So a unit's effective learning rate matches the per-unit case on average, and the same
``η`` means the same thing with BatchNorm and with LayerNorm. This is also about the scale the
kernel starts at: Keras' ``glorot_uniform`` gives ``E‖w_j‖² = 2·fan_in/(fan_in + fan_out)``,
about 1 when the fans are similar, so the first retraction barely rescales it, whereas
radius 1 shrinks it by about ``√units``. Per-unit groups,
explicit axes and rank <= 1 weights keep ``r = 1``, since each group there is already one unit
(or the rank gives no unit axis). The rule also fits Adam-like optimizers: their step has a
size of ``≈ η`` per coordinate whatever the scale, so the angle turned depends on ``‖w_j‖``
alone, and ``r = √units`` makes the ``‖w_j‖`` about 1, as in the per-unit case.

What it does NOT fix: only the sum ``Σ_j ‖w_j‖²`` is pinned, and the units' norms within the
tensor can still differ and drift. A unit whose norm shrinks gets a larger effective learning
rate ``η/‖w_j‖²`` and turns faster, while a growing one slows down. Only the per-unit
granularity controls each unit, and it is function-preserving only before a per-channel
normalization. For a transposed convolution (kernel ``(..., out, in)``) or an embedding,
``shape[-1]`` is not the number of output units, and ``"units"`` is only a scale convention
there.
"""

from __future__ import annotations

import math
import numbers

from keras import ops

from keras_normreg._kernels import column_sums
from keras_normreg._utils import received

GRANULARITIES = ("unit", "tensor")
RADIUS_RULES = ("units", "one")
DEFAULT_RADIUS = "units"


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
    """L2 norms of ``x`` over the axes of ``granularity`` (kept as size-1 axes).

    For ``"unit"`` on a kernel of rank >= 2 the sums of squares are the column sums of the
    ``(fan, units)`` view through :func:`keras_normreg._kernels.column_sums` (a matrix-vector
    product with ones on TensorFlow without XLA, 2x faster there than ``reduce_sum`` over
    axis 0: the retraction after every sphere-mode step uses this); the same values to float
    rounding (the order of the sum)."""
    rank = len(x.shape)
    if granularity == "unit" and rank >= 2:
        units = x.shape[-1]
        squares = column_sums(ops.square(ops.reshape(x, (-1, units))))
        norm = ops.reshape(ops.sqrt(squares), (1,) * (rank - 1) + (units,))
    else:
        axes = reduction_axes(granularity, rank)
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
    ScaleInvariance}``, as :func:`keras_normreg.invariance.find_scale_invariant` returns)."""
    return {path: v.granularity for path, v in found.items() if v.invariant}


def check_radius(value, name="sphere_radius"):
    """Validate a radius rule and return ``"units"``, ``"one"`` or a positive finite float."""
    if isinstance(value, str) and value in RADIUS_RULES:
        return value
    if (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0):
        return float(value)
    raise ValueError(
        f"Argument `{name}` must be 'units' (√units for a whole-tensor group), 'one' (radius 1) "
        f"or a positive finite number. {received(name, value)}"
    )


def radius(rule, granularity, shape):
    """The norm a group of a sphere weight of ``shape`` with ``granularity`` is retracted to.

    ``rule="units"``: ``√shape[-1]`` for ``granularity="tensor"`` and rank >= 2, else 1.
    ``rule="one"``: 1. A float: that value for every group. See the module docstring for
    the derivation.
    """
    if rule == "one":
        return 1.0
    if rule == "units":
        if granularity == "tensor" and len(shape) >= 2:
            units = shape[-1]
            if units is None:
                raise ValueError(
                    "The sphere radius rule 'units' needs the number of output units (the last "
                    f"axis) of the weight. Received: shape={tuple(shape)!r}"
                )
            return math.sqrt(int(units))
        return 1.0
    return float(rule)
