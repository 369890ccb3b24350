"""Roofline of the optimizer and weight-normalization overheads: bytes moved per train step
(XLA's cost analysis of Keras' compiled JAX step) against this machine's measured memory
bandwidth.

Command (JAX backend; ~1 min on 2 cores; TensorFlow and PyTorch: the eager table below)::

    KERAS_BACKEND=jax .venv/bin/python bench/bench_roofline.py
    KERAS_BACKEND=jax .venv/bin/python bench/bench_roofline.py --quick     # smoke test
    KERAS_BACKEND=torch .venv/bin/python bench/bench_roofline.py
    KERAS_BACKEND=tensorflow .venv/bin/python bench/bench_roofline.py

For each arm of bench_backends.py's groups ``wn_dense``, ``sgd`` and ``adam`` (same shapes and
optimizers): ``bytes`` = XLA's ``bytes accessed`` of the train step Keras' JAX trainer compiles
(``model.train_step`` jitted as in bench/_memory.py; every buffer read or written by every
fused kernel, counted once per kernel), the step time (bench/_timing.py's interleaved rounds),
and two bounds on the arm / baseline step-time ratio when the extra work is memory-bound:

* ``compiled bound = 1 + (bytes(arm) - bytes(base)) / bandwidth / t(base)``: what the extra
  traffic of the program XLA built costs at the measured bandwidth (a ratio below it means
  part of the traffic overlaps the baseline's compute or stays in cache);
* ``algorithm bound = 1 + minimum extra bytes / bandwidth / t(base)``, the minimum from the
  algorithm itself: SGDP/AdamP must read each projected weight, its gradient and its update
  direction once more before any coefficient is known (the channel test takes a max over all
  units), 3 x the bytes of the rank >= 2 weights; weight normalization (output form) must read
  ``v`` once more for its norm and once more for the norm's gradient term, 2 x the kernel.

Bandwidth: a compiled JAX ``a + b`` over 3 x 64 MiB float32 arrays (two reads, one write; the
same runtime and threads as the train steps' elementwise kernels), best of 10, for both bounds;
the last column repeats the algorithm bound at the bandwidth of NumPy's ``copyto`` (memcpy,
one thread: what the memory system gives a streaming copy), the strictest bound.

TensorFlow without XLA and PyTorch (``KERAS_BACKEND=tensorflow`` / ``torch``): every
elementwise op is its own kernel, so there is no compiled program to count. The table has the
same algorithm bounds (bandwidth: the backend's own ``a + b`` into a reused output) and,
instead of the compiled bound, the *eager kernels* column: one more arm in the same
interleaved rounds, the baseline's step followed by the kernels the block adds, alone, on
tensors of the arm's shapes, as the library runs them on that backend:

* SGDP/AdamP: the projection's reduction and branch rule for every rank >= 2 weight
  (:func:`keras_normreg.optimizers.projection.projection_coefficients` in a ``tf.function``,
  resp. :func:`~keras_normreg.optimizers.projection.torch_projection_coefficients`: four
  products and four column sums, no eager op sums a product over the fan without writing it);
  the update itself adds no pass (the projection and decay fold into a per-unit scale);
* weight normalization, output form: the kernels besides the two GEMMs of a plain Dense
  (``v * v`` and its column sum; ``z * s``; ``dy * s``, ``dy * z`` and its column sum; ``dv
  += v * c``: on PyTorch as ``_kernels.scaled_matmul`` runs them, ``v * v`` into the layer's
  buffer; on TensorFlow as the composed ops and their gradients, the last one an add of two
  kernel-sized tensors).

A measured ratio at or below that arm's means the remaining gap is what these kernels cost as
the backend runs them (below: in the real step the tensors are still in cache, the kernels alone
read fresh ones); the gap between it and the algorithm bound is the products an eager backend
writes out before it can sum them (a fused kernel, as XLA compiles on JAX, need not).
"""

from __future__ import annotations

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "jax")

GROUPS = ("wn_dense", "sgd", "adam")


def _add_kernel(backend: str, n: int):
    """A zero-argument callable running this backend's ``a + b`` over ``n`` float32 values
    and waiting for it: compiled on JAX, into a reused output on PyTorch, one graph op on
    TensorFlow (its CPU allocator reuses the freed output's memory)."""
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        a, b = jnp.ones(n, jnp.float32), jnp.full(n, 2.0, jnp.float32)
        add = jax.jit(lambda a, b: a + b)
        return lambda: add(a, b).block_until_ready()
    if backend == "torch":
        import torch

        a, b, c = torch.ones(n), torch.full((n,), 2.0), torch.empty(n)
        return lambda: torch.add(a, b, out=c)
    import tensorflow as tf

    a, b = tf.ones(n), tf.fill((n,), 2.0)
    add = tf.function(lambda a, b: a + b, jit_compile=False)
    return lambda: add(a, b)


def bandwidth(mib: int = 64, repeats: int = 10, backend: str = "jax") -> dict:
    """Bytes per second of ``backend``'s ``a + b`` (compiled on JAX; two reads, one write)
    and of NumPy's copy (one thread), under the keys ``"add"`` and ``"numpy_copy"``."""
    import numpy as np

    n = mib * 2**20 // 4
    add = _add_kernel(backend, n)
    add()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        add()
        best = min(best, time.perf_counter() - t0)
    src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
    copy = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        copy = min(copy, time.perf_counter() - t0)
    return {"add": 3 * 4 * n / best, "numpy_copy": 2 * 4 * n / copy}


def step_bytes(model, x, y) -> float:
    """XLA's ``bytes accessed`` of Keras' compiled JAX train step for ``model``."""
    import warnings

    import jax

    state = tuple([v.value for v in variables] for variables in (
        model.trainable_variables, model.non_trainable_variables, model.optimizer.variables,
        model.metrics_variables))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = jax.jit(model.train_step, donate_argnums=0).lower(
            state, (x, y, None)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["bytes accessed"])


def minimum_extra_bytes(group, model) -> float:
    """The algorithm's own extra traffic (see the module docstring)."""
    kernels = [v for v in model.trainable_variables if len(v.shape) >= 2]
    size = sum(math.prod(v.shape) * 4 for v in kernels)
    return (2 if group == "wn_dense" else 3) * size


def _kernel_shapes(model) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in v.shape) for v in model.trainable_variables if len(v.shape) >= 2]


def extra_kernels(group, model, backend, batch: int):
    """The kernels ``group``'s block adds to a step, alone (module docstring), as a
    zero-argument callable on tensors of ``model``'s kernel shapes; None on JAX (its table
    counts bytes instead: main never asks there)."""
    shapes = _kernel_shapes(model)
    if backend == "torch":
        import torch

        gen = torch.Generator().manual_seed(0)

        def randn(*shape):
            return torch.randn(*shape, generator=gen)

        if group == "wn_dense":
            ((fan, units),) = shapes
            v, x, dy = randn(fan, units), randn(batch, fan), randn(batch, units)
            z, g, buf, dv = x @ v, randn(units), torch.empty(fan, units), randn(fan, units)
            ones = torch.ones(1, fan)

            def wn():
                norms = torch.sqrt(ones @ torch.mul(v, v, out=buf)).reshape(-1)
                s = g / norms
                z * s
                dy * s
                t = (dy * z).sum(0)
                dv.addcmul_(v, -t * g / norms**3)
            return wn
        from keras_normreg.optimizers.projection import torch_projection_coefficients

        sets = [(randn(*shape), randn(*shape), randn(*shape),
                 torch.empty(math.prod(shape[:-1]), shape[-1])) for shape in shapes]

        def projection():
            for w, g, p, tmp in sets:
                torch_projection_coefficients(w, g, p, tmp, delta=0.1, wd_ratio=0.1,
                                              epsilon=1e-8)
        return projection
    if backend == "tensorflow" and group == "wn_dense":
        import tensorflow as tf

        from keras_normreg._kernels import column_sums

        ((fan, units),) = shapes
        v, x, dy, dv0 = (tf.random.stateless_normal(shape, seed=(0, k)) for k, shape in
                         enumerate([(fan, units), (batch, fan), (batch, units), (fan, units)]))
        z, g = x @ v, tf.random.stateless_normal((units,), seed=(0, 4))

        @tf.function(jit_compile=False)
        def wn(v, z, dy, dv0, g):  # everything returned: a graph drops unused ops
            norms = tf.sqrt(column_sums(v * v))
            s = g / norms
            t = tf.reduce_sum(dy * z, axis=0)
            return z * s, dy * s, dv0 + v * (-t * g / norms**3)

        return lambda: wn(v, z, dy, dv0, g)
    if backend == "tensorflow" and group in ("sgd", "adam"):
        import tensorflow as tf

        from keras_normreg.optimizers.projection import projection_coefficients

        sets = [[tf.random.stateless_normal(shape, seed=(i, k)) for k in range(3)]
                for i, shape in enumerate(shapes)]

        @tf.function(jit_compile=False)
        def coefficients(sets):
            return [projection_coefficients(w, g, p, 0.1, 0.1, 1e-8) for w, g, p in sets]

        return lambda: coefficients(sets)
    return None


def _kernels_arm(arm: str) -> str:
    return f"{arm} kernels alone"


def main(argv=None):
    import _timing

    argv = sys.argv[1:] if argv is None else list(argv)
    p = _timing.base_parser(__doc__.splitlines()[0])
    _timing.add_settle(p)
    args = p.parse_args(argv)
    args._argv = argv
    _timing.finish_args(args, rounds=9, steps=3)
    settle = _timing.settle_of(p, args)
    import bench_backends
    import keras
    import numpy as np

    backend = keras.backend.backend()
    compiled = backend == "jax"  # XLA's cost analysis; the eager kernels arm elsewhere
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    bw = bandwidth(4 if args.quick else 64, 2 if args.quick else 10, backend)
    if compiled:
        lines = ["| benchmark | arm vs baseline | MB/step base -> arm | extra MB | minimum extra MB "
                 "| ms/step base -> arm | measured ratio | compiled bound | algorithm bound "
                 "| algorithm bound at memcpy bandwidth |",
                 "|---|---|---|---:|---:|---|---:|---:|---:|---:|"]
    else:
        lines = ["| benchmark | arm vs baseline | ms/step base -> arm | measured ratio "
                 "| eager kernels (baseline + the block's kernels alone) | minimum extra MB "
                 "| algorithm bound | algorithm bound at memcpy bandwidth |",
                 "|---|---|---|---:|---:|---:|---:|---:|"]
    results = []
    for group in GROUPS:
        label, baseline, makers, x, y, loss = bench_backends._data(group, args, rng)
        models, arms = {}, {}
        for arm, maker in makers.items():
            models[arm], arms[arm] = bench_backends._build(maker, loss, "auto", x, y)
            arms[arm]()  # build + compile
        measured = [arm for arm in makers if arm != baseline and "Decoupled" not in arm]
        if compiled:
            nbytes = {arm: step_bytes(models[arm], x, y) for arm in makers}
        else:
            for arm in measured:
                kernels = extra_kernels(group, models[arm], backend, len(x))
                kernels()
                arms[_kernels_arm(arm)] = (
                    lambda base=arms[baseline], kernels=kernels: (base(), kernels()))
        times = {}
        rows = _timing.compare(label, arms, baseline, rounds=args.rounds, steps=args.steps,
                               warmup=args.warmup, verbose=not args.quick, times=times,
                               settle=settle)
        ratio = {row.name: row.ratio for row in rows}
        t_base = times[baseline]
        for arm in measured:
            minimum = minimum_extra_bytes(group, models[arm])
            algorithm = 1 + minimum / bw["add"] / t_base
            memcpy = 1 + minimum / bw["numpy_copy"] / t_base
            result = {"group": label, "arm": arm, "baseline": baseline,
                      "measured": ratio[arm], "algorithm_bound": algorithm,
                      "memcpy_bound": memcpy}
            timing = f"{1e3 * t_base:.1f} -> {1e3 * times[arm]:.1f} | {ratio[arm]:.3f}"
            if compiled:
                extra = nbytes[arm] - nbytes[baseline]
                bound = 1 + extra / bw["add"] / t_base
                result.update(bytes=nbytes[arm], base_bytes=nbytes[baseline],
                              compiled_bound=bound)
                lines.append(
                    f"| {label} | {arm} vs {baseline} | {nbytes[baseline] / 1e6:.1f} -> "
                    f"{nbytes[arm] / 1e6:.1f} | {extra / 1e6:.1f} | {minimum / 1e6:.1f} | "
                    f"{timing} | {bound:.3f} | {algorithm:.3f} | {memcpy:.3f} |")
            else:
                kernels = ratio[_kernels_arm(arm)]
                result["eager_kernels"] = kernels
                lines.append(f"| {label} | {arm} vs {baseline} | {timing} | {kernels:.3f} | "
                             f"{minimum / 1e6:.1f} | {algorithm:.3f} | {memcpy:.3f} |")
            results.append(result)
        keras.backend.clear_session()
    info = _timing.device_info()
    kind = {"jax": "JAX", "torch": "PyTorch", "tensorflow": "TensorFlow"}[backend]
    add = "compiled JAX" if compiled else f"{kind} (no XLA)"
    print(f"\n## Roofline on {kind} ({info['device']})\n")
    print(f"machine: {info['machine']}, Keras {info['keras']}")
    print(f"command: KERAS_BACKEND={backend} {_timing.command([__file__, *argv])}")
    print(f"bandwidth: {add} a + b {bw['add'] / 1e9:.1f} GB/s (used below); NumPy "
          f"copy, one thread, {bw['numpy_copy'] / 1e9:.1f} GB/s\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
