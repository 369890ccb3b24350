"""Roofline of the optimizer and weight-normalization overheads: bytes moved per train step
(XLA's cost analysis of Keras' compiled JAX step) against this machine's measured memory
bandwidth.

Command (JAX backend; ~1 min on 2 cores)::

    KERAS_BACKEND=jax .venv/bin/python bench/bench_roofline.py
    KERAS_BACKEND=jax .venv/bin/python bench/bench_roofline.py --quick     # smoke test

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


def bandwidth(mib: int = 64, repeats: int = 10) -> dict:
    """Bytes per second of a compiled ``a + b`` (JAX) and of NumPy's copy (one thread)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    n = mib * 2**20 // 4
    a, b = jnp.ones(n, jnp.float32), jnp.full(n, 2.0, jnp.float32)
    add = jax.jit(lambda a, b: a + b)
    add(a, b).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        add(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
    copy = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        copy = min(copy, time.perf_counter() - t0)
    return {"jax_add": 3 * 4 * n / best, "numpy_copy": 2 * 4 * n / copy}


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


def main(argv=None):
    import _timing

    argv = sys.argv[1:] if argv is None else list(argv)
    p = _timing.base_parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    args._argv = argv
    _timing.finish_args(args, rounds=9, steps=3)
    import bench_backends
    import keras
    import numpy as np

    if keras.backend.backend() != "jax":
        p.error("XLA's cost analysis needs the JAX backend: run with KERAS_BACKEND=jax. "
                f"Received: backend={keras.backend.backend()!r}")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    bw = bandwidth(4 if args.quick else 64, 2 if args.quick else 10)
    lines = ["| benchmark | arm vs baseline | MB/step base -> arm | extra MB | minimum extra MB "
             "| ms/step base -> arm | measured ratio | compiled bound | algorithm bound "
             "| algorithm bound at memcpy bandwidth |",
             "|---|---|---|---:|---:|---|---:|---:|---:|---:|"]
    results = []
    for group in GROUPS:
        label, baseline, makers, x, y, loss = bench_backends._data(group, args, rng)
        models, arms = {}, {}
        for arm, maker in makers.items():
            models[arm], arms[arm] = bench_backends._build(maker, loss, "auto", x, y)
            arms[arm]()  # build + compile
        nbytes = {arm: step_bytes(models[arm], x, y) for arm in makers}
        times = {}
        rows = _timing.compare(label, arms, baseline, rounds=args.rounds, steps=args.steps,
                               warmup=args.warmup, verbose=not args.quick, times=times)
        for row in rows:
            arm = row.name
            if arm not in makers or "Decoupled" in arm:
                continue
            extra = nbytes[arm] - nbytes[baseline]
            minimum = minimum_extra_bytes(group, models[arm])
            t_base = times[baseline]
            compiled = 1 + extra / bw["jax_add"] / t_base
            algorithm = 1 + minimum / bw["jax_add"] / t_base
            memcpy = 1 + minimum / bw["numpy_copy"] / t_base
            results.append({"group": label, "arm": arm, "baseline": baseline,
                            "bytes": nbytes[arm], "base_bytes": nbytes[baseline],
                            "measured": row.ratio, "compiled_bound": compiled,
                            "algorithm_bound": algorithm, "memcpy_bound": memcpy})
            lines.append(
                f"| {label} | {arm} vs {baseline} | {nbytes[baseline] / 1e6:.1f} -> "
                f"{nbytes[arm] / 1e6:.1f} | {extra / 1e6:.1f} | {minimum / 1e6:.1f} | "
                f"{1e3 * t_base:.1f} -> {1e3 * times[arm]:.1f} | {row.ratio:.3f} | "
                f"{compiled:.3f} | {algorithm:.3f} | {memcpy:.3f} |")
        keras.backend.clear_session()
    info = _timing.device_info()
    print(f"\n## Roofline on JAX ({info['device']})\n")
    print(f"machine: {info['machine']}, Keras {info['keras']}")
    print(f"command: {_timing.command([__file__, *argv])}")
    print(f"bandwidth: compiled JAX a + b {bw['jax_add'] / 1e9:.1f} GB/s (used below); NumPy "
          f"copy, one thread, {bw['numpy_copy'] / 1e9:.1f} GB/s\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
