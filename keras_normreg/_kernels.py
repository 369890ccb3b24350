"""Column reductions over weight matrices (keras.ops, every backend, with and without XLA).

Weight normalization and the SGDP/AdamP projection need per-output-unit sums over a
``(fan, units)`` view of a kernel. Measured on a 2-core CPU, 1024x1024 float32, four column
sums of products (the projection's Σw², Σg², Σw·g, Σw·p):

=========================================  ===========  ==========
form                                        TF, XLA off  TF, XLA on
=========================================  ===========  ==========
``ones(1, fan) @ (a*b)``                     3.6 ms       26.8 ms
``sum(a*b, axis=0)`` four times              5.8 ms        3.7 ms
``sum(stack([a*b, ...]), axis=1)``           3.7 ms        1.7 ms
=========================================  ===========  ==========

XLA on CPU lowers the ``(1, fan) @ (fan, units)`` product to a slow generic dot (7x slower
than a reduction), while TensorFlow's own kernels run it as a fast matrix-vector product; in
whole SGDP/AdamP train steps (4x1024 MLP + BN, bench/bench_backends.py) the stacked reduction
cost 1.64x / 1.40x SGD / AdamW without XLA against 1.22x / 1.23x for the matmul form, and the
matmul form 4.4x / 4.0x with XLA against 1.33x for the stacked one. So the form follows the
compiler: the stacked reduction under TensorFlow's XLA (inside a ``jit_compile=True``
function, told by :func:`keras_normreg._compat.tf_in_xla_context`), the matmul form on
TensorFlow without XLA, one ``sum`` per product behind an optimization barrier on JAX
(:func:`column_dots` says why), and one ``sum`` per product on PyTorch (measured 1.57x /
1.49x against 2.43x / 1.72x for the stacked form, which materializes the stack; the PyTorch
SGDP/AdamP now run their own in-place update, ``optimizers/projection.py``, and no longer
call :func:`column_dots`).
The column norm also gets its gradient written out (one pass, ``v * dn / n``) instead of the
autodiff chain through ``sum`` and ``square`` (a materialized broadcast and two passes), with
``keras.ops.custom_gradient`` (``tf.custom_gradient`` / ``jax.custom_gradient`` / a
``torch.autograd.Function`` inside Keras).
"""

from __future__ import annotations

import functools

import keras
from keras import ops

from keras_normreg import _compat


def _xla() -> bool:
    """Whether the code being traced is compiled by XLA (JAX always; TensorFlow in a
    ``jit_compile=True`` function)."""
    backend = keras.backend.backend()
    return backend == "jax" or (backend == "tensorflow" and _compat.tf_in_xla_context())


def column_sums(x):
    """Sums over axis 0 of a rank-2 tensor, shape ``(columns,)``, in ``x.dtype``
    (``ones @ x`` on TensorFlow without XLA, a reduction elsewhere: see above)."""
    x = ops.convert_to_tensor(x)
    if keras.backend.backend() != "tensorflow" or _xla():
        return ops.sum(x, axis=0)
    ones = ops.ones((1, ops.shape(x)[0]), dtype=x.dtype)
    return ops.reshape(ops.matmul(ones, x), (-1,))


def column_dots(pairs):
    """``[Σ_i a[i, j]·b[i, j] for (a, b) in pairs]`` as one ``(len(pairs), columns)`` tensor.

    * JAX: one ``sum(a * b, axis=0)`` per pair, behind ``jax.lax.optimization_barrier``.
      XLA:CPU fuses a product into its reduction only when the product has no other
      consumer; without the barrier XLA rewrites a later sum of these column sums (the
      projection's layer view) into a second reduction over the products themselves, so
      every product was written to memory and read twice (SGDP step on the 4x1024 MLP:
      410 MB moved, XLA's cost analysis; 326 MB with the barrier, against 224 MB for
      Keras' SGD).
    * TensorFlow under XLA: one reduction over the stacked products (TensorFlow's XLA
      lowers the column sums to reduce-windows, which never fuse their producers: the
      products are written once either way, and the stack is one pass).
    * TensorFlow without XLA and PyTorch: one column sum per product (see above).
    """
    if keras.backend.backend() == "jax":
        import jax

        sums = ops.stack([ops.sum(ops.convert_to_tensor(a) * ops.convert_to_tensor(b), axis=0)
                          for a, b in pairs])
        return jax.lax.optimization_barrier(sums)
    products = [ops.convert_to_tensor(a) * ops.convert_to_tensor(b) for a, b in pairs]
    if len(products) == 1:
        return ops.expand_dims(column_sums(products[0]), 0)
    if keras.backend.backend() == "tensorflow" and _xla():
        return ops.sum(ops.stack(products), axis=1)
    return ops.stack([column_sums(p) for p in products])


@ops.custom_gradient
def _column_norms(v, floor):
    squares = column_sums(ops.square(v))
    # where, not ops.maximum: Keras' maximum returns float32 for float64 on JAX / torch.
    norms = ops.sqrt(ops.where(squares > floor, squares, floor))

    def grad(*args, upstream=None):
        # TensorFlow and JAX pass the upstream gradient positionally, torch as `upstream=`.
        if upstream is None:
            (upstream,) = args
        # d sqrt(max(s, floor)) / dv = v / norm where s > floor, 0 where the floor is active.
        factor = ops.where(squares > floor, upstream / norms, ops.zeros_like(norms))
        return v * factor, ops.zeros_like(floor)

    return norms, grad


def column_norms(v, floor):
    """``sqrt(max(sum(v**2, axis=0), floor))`` of a rank-2 ``v``, shape ``(columns,)``, with a
    one-pass gradient (zero where the floor is active). ``floor`` (a Python float) reaches
    ``v.dtype`` without a float32 detour."""
    v = ops.convert_to_tensor(v)
    return _column_norms(v, ops.convert_to_tensor(floor, dtype=v.dtype))


@functools.cache
def _torch_scaled_matmul_function():
    """The ``torch.autograd.Function`` of :func:`scaled_matmul` (built once, on first use:
    this module must import without torch)."""
    import torch

    class ScaledMatmul(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, v, g, floor, scratch):
            squares = v * v if scratch is None else torch.mul(v, v, out=scratch.like(v))
            squares = torch.ones((1, v.shape[0]), dtype=v.dtype, device=v.device) @ squares
            squares = squares.reshape(-1)
            active = squares > floor
            norms = torch.sqrt(torch.where(active, squares, floor))
            scale = g / norms
            z = x @ v
            ctx.save_for_backward(x, v, g, z, norms, scale, active)
            return z * scale

        @staticmethod
        def backward(ctx, dy):
            x, v, g, z, norms, scale, active = ctx.saved_tensors
            dz = dy * scale
            dx = dv = dg = None
            if ctx.needs_input_grad[0]:
                dx = dz @ v.T
            if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
                ds = (dy * z).sum(0)  # dL/d(scale) per unit
                dg = ds / norms
                if ctx.needs_input_grad[1]:
                    # dL/dv = x^T dz + v * c, c = dL/dn / n = -ds g / n^3 (0 where the floor
                    # holds the norm): the GEMM into a fresh tensor, then v * c added in place
                    # (one pass; v * c first, then an accumulating GEMM onto it, cost one
                    # more fresh kernel-sized temporary: its page faults, 0.8 ms at 1024x1024)
                    c = torch.where(active, -ds * g / (norms * norms * norms),
                                    torch.zeros_like(norms))
                    dv = torch.mm(x.T, dz).addcmul_(v, c)
                if not ctx.needs_input_grad[2]:
                    dg = None
            return dx, dv, dg, None, None

    return ScaledMatmul


class Scratch:
    """One reusable buffer for a temporary of a kernel's shape, owned by the caller (a layer),
    so that it lives as long as the caller: ``like(t)`` returns a tensor of ``t``'s shape,
    dtype and device, made on first use and again only when one of those changes. A fresh
    4 MB temporary per step costs a CPU its page faults as well as the pass (``v * v`` of a
    1024x1024 kernel in a training step: 0.9 ms fresh against 0.4 ms into a reused buffer,
    PyTorch's profiler, 2 cores).
    The buffer's contents are overwritten by every use: only for temporaries that die before
    the next call (not for anything autograd saves)."""

    def __init__(self):
        self._buffer = None

    def like(self, tensor):
        import torch

        buf = self._buffer
        if (buf is None or buf.shape != tensor.shape or buf.dtype != tensor.dtype
                or buf.device != tensor.device):
            buf = self._buffer = torch.empty_like(tensor, memory_format=torch.contiguous_format)
        return buf

    def __deepcopy__(self, memo):  # a copied layer gets its own (empty) buffer
        return Scratch()


def scaled_matmul(x, v, g, floor, scratch=None):
    """``(x @ v) * (g / ||v||)`` for rank-2 ``x`` ``(rows, fan)``, ``v`` ``(fan, units)``,
    ``g`` ``(units,)`` and ``||v|| = sqrt(max(sum(v**2, axis=0), floor))``: the output form
    of weight normalization (Salimans & Kingma 2016, eq. 2) as one op.

    On PyTorch it is one ``autograd.Function`` with the gradient written out::

        dz = dy * s,  dx = dz v^T,  t = sum_rows(dy * z),  dg = t / n,
        dv = x^T dz + v * c,  c = -t g / n^3  (0 where the floor holds the norm)

    with ``dv`` as the GEMM and ``v * c`` added into it in place (``addcmul_``, one pass;
    autograd would materialize ``v * c`` and add the two: one more pass and one more
    kernel-sized temporary), ``dx`` only when ``x`` needs a gradient, and ``v * v`` into
    ``scratch`` (a :class:`Scratch` the caller owns; a fresh temporary without it) (measured:
    docs/benchmarks.md). Elsewhere (TensorFlow, JAX) it is the composed ops and their autodiff
    (the reference the tests compare with); the layer uses it on PyTorch only.
    """
    x, v, g = (ops.convert_to_tensor(t) for t in (x, v, g))
    if keras.backend.backend() == "torch":
        import torch

        floor_t = torch.as_tensor(floor, dtype=v.dtype, device=v.device)
        return _torch_scaled_matmul_function().apply(x, v, g, floor_t, scratch)
    return ops.matmul(x, v) * (g / column_norms(v, floor))


def max_min_over_axis1(blocks):
    """``(max(blocks, axis=1), min(blocks, axis=1))`` of a rank-3 tensor, without gradient
    (for selections: the callers stop the gradient).

    On PyTorch (CPU) a reduction over a middle axis is slow (``amax`` over the 64 rows of
    ``(2048, 64, 16)`` blocks: 3.9 ms, a quarter of the memory bandwidth); halving the axis
    with elementwise ``maximum`` / ``minimum`` of its two halves (``ceil(n / 2)`` rows each,
    overlapping by one row when ``n`` is odd, which max and min do not mind) reads the same
    data in ``log2(n)`` passes of shrinking size: 0.7 ms. Elsewhere Keras' reductions.
    """
    if keras.backend.backend() != "torch":
        blocks = ops.convert_to_tensor(blocks)
        return ops.max(blocks, axis=1), ops.min(blocks, axis=1)
    import torch

    with torch.no_grad():
        hi = lo = ops.convert_to_tensor(blocks).detach()
        while hi.shape[1] > 1:
            n = hi.shape[1]
            half = (n + 1) // 2
            hi = torch.maximum(hi[:, :half], hi[:, n - half:])
            lo = torch.minimum(lo[:, :half], lo[:, n - half:])
        return hi[:, 0], lo[:, 0]
