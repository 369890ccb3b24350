"""The same benchmark arms on TensorFlow, JAX and PyTorch: step-time ratios against the plain
Keras twin on that backend, with jit_compile "auto" (what a user gets) and with XLA forced.

Commands (one backend per process: Keras picks its backend at import)::

    .venv/bin/python bench/bench_backends.py --backend tensorflow     # ~3-5 min on 2 cores
    .venv/bin/python bench/bench_backends.py --backend jax
    .venv/bin/python bench/bench_backends.py --backend torch
    .venv/bin/python bench/bench_backends.py --backend jax --quick    # smoke test, tiny shapes

Groups (each interleaved on its own, bench/_timing.py: rotating arm order, per-round ratios,
median over rounds); every arm is a full ``train_on_batch`` step (forward, backward, update):

* ``wn_dense``: ``Dense(1024)`` on 1024 features, batch 256, plain vs ``WeightNormalization``.
* ``wn_conv``: ``Conv2D(32, 3, padding="same")`` on 16x16x32 maps, batch 128, plain vs wrapped.
* ``sgd``: ``zoo.mlp`` 4x1024 + BatchNorm, batch 128: ``keras.optimizers.SGD(0.1, momentum=0.9,
  weight_decay=5e-4)`` vs ``DecoupledWeightDecay(SGD)`` vs ``SGDP`` (``exclude=()``: the same
  variables decayed as Keras).
* ``adam``: the same MLP: ``keras.optimizers.AdamW(1e-3, weight_decay=4e-3)`` vs ``AdamP``.
* ``bn``: the norm layer alone on 32x32x16 maps, batch 128: Keras BatchNormalization vs
  ``L1BatchNormalization`` vs ``TopKBatchNormalization``.
* ``resnet20``: ``zoo.create("resnet20", norm="batch")`` on 32x32x3, 10 classes, batch 128,
  ``keras.optimizers.SGD(0.1, momentum=0.9)``, sparse cross-entropy from logits: the baseline
  of its plain-PyTorch peers below; the images/second of every arm are printed too.

Peer arms (bench/_peers.py; ``--no-peers`` leaves them out), plain PyTorch in float32 on the
same data, ``torch.set_num_threads(--threads)``, interleaved in the same rounds; built once per
group and timed in every XLA mode of the Keras arms:

* ``resnet20``: the same ResNet-20 in PyTorch (the zoo's trainable parameter count),
  ``torch.optim.SGD(0.1, momentum=0.9)``, eager, and under ``torch.compile`` (inductor;
  ``--quick`` on a CPU: aot_eager; ``--no-torch-compile``: left out). Rows: each vs the zoo arm.
* ``wn_dense``: ``torch.nn.Linear`` alone and wrapped in
  ``torch.nn.utils.parametrizations.weight_norm``, ``torch.optim.SGD(0.01, momentum=0.9)``, MSE.
  Extra rows: ``WeightNorm Dense`` vs torch weight_norm, torch weight_norm vs torch Linear.
* ``adam``, ``sgd``: the MLP in PyTorch trained with a plain-PyTorch AdamP, resp. SGDP, written
  from the paper (the hyperparameters of ``AdamP``, resp. ``SGDP``, above: every parameter
  decayed). Extra row: ours vs that reference.

An arm that cannot be built (e.g. ``torch.compile`` failing, or compiling for longer than
``--torch-compile-timeout``) is reported under ``errors`` and the run goes on; the exit status is
then 1.

XLA: ``auto`` is ``model.compile(jit_compile="auto")`` (TensorFlow: XLA off for these models on
CPU; JAX: always XLA). ``xla`` forces ``jit_compile=True`` (TensorFlow); on JAX it is the same
program as ``auto`` (JAX always compiles with XLA) and is not repeated; PyTorch has no XLA in
Keras (``jit_compile=True`` is not an XLA switch there), so only ``auto`` runs.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BACKENDS = ("tensorflow", "jax", "torch")
GROUPS = ("wn_dense", "wn_conv", "sgd", "adam", "bn", "resnet20")
TARGETS = {"tensorflow": "<= 1.05", "jax": "<= 1.05", "torch": "<= 1.10"}
ERRORS: dict[str, str] = {}  # "group/arm" -> why, of the peer arms main() could not build


def _pre_parse(argv):
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--backend", choices=BACKENDS, default=None)
    known, _ = p.parse_known_args(argv)
    return known.backend


def _single(layer, shape):
    import keras

    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs))


def _arms(group, args, rng):
    """(label, baseline, {arm: (model builder, optimizer maker)}, x, y, loss)."""
    import keras

    from keras_normreg import layers, optimizers, zoo

    q = args.quick

    def sgd():
        return keras.optimizers.SGD(0.01, momentum=0.9)

    if group == "wn_dense":
        b, d = (4, 8) if q else (256, 1024)
        x, y = rng.standard_normal((b, d)), rng.standard_normal((b, d))
        return (f"Dense({d}), batch {b}", "plain Dense", {
            "plain Dense": (lambda: _single(keras.layers.Dense(d), (d,)), sgd),
            "WeightNorm Dense": (lambda: _single(
                layers.WeightNormalization(keras.layers.Dense(d)), (d,)), sgd),
        }, x, y, "mse")
    if group == "wn_conv":
        b, s, c = (2, 4, 4) if q else (128, 16, 32)
        x, y = rng.standard_normal((b, s, s, c)), rng.standard_normal((b, s, s, c))

        def conv():
            return keras.layers.Conv2D(c, 3, padding="same")

        return (f"Conv2D({c}, 3), {b}x{s}x{s}x{c}", "plain Conv2D", {
            "plain Conv2D": (lambda: _single(conv(), (s, s, c)), sgd),
            "WeightNorm Conv2D": (lambda: _single(layers.WeightNormalization(conv()),
                                                  (s, s, c)), sgd),
        }, x, y, "mse")
    if group == "resnet20":
        b, s = (4, 8) if q else (128, 32)
        x = rng.standard_normal((b, s, s, 3))
        y = rng.integers(0, 10, b).astype("int32")
        kw = {"depth": 8, "width": 4} if q else {}
        return (f"ResNet-{kw.get('depth', 20)} {s}x{s}x3, batch {b}", "zoo ResNet-20", {
            "zoo ResNet-20": (lambda: zoo.create("resnet20", norm="batch", input_shape=(s, s, 3),
                                                 num_classes=10, **kw),
                              lambda: keras.optimizers.SGD(0.1, momentum=0.9)),
        }, x, y, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if group == "bn":
        b, s, c = (2, 4, 4) if q else (128, 32, 16)
        x, y = rng.standard_normal((b, s, s, c)), rng.standard_normal((b, s, s, c))
        return (f"norm layer alone, {b}x{s}x{s}x{c}", "keras BN", {
            "keras BN": (lambda: _single(keras.layers.BatchNormalization(), (s, s, c)), sgd),
            "L1 BN": (lambda: _single(layers.L1BatchNormalization(), (s, s, c)), sgd),
            "TopK BN": (lambda: _single(layers.TopKBatchNormalization(), (s, s, c)), sgd),
        }, x, y, "mse")
    b, width, depth = (4, 8, 2) if q else (128, 1024, 4)
    x = rng.standard_normal((b, width))
    y = rng.integers(0, 10, b).astype("int32")

    def mlp():
        return zoo.mlp(norm="batch", input_shape=(width,), units=(width,) * depth)

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    label = f"MLP {depth}x{width} + BN, batch {b}"
    if group == "sgd":
        return (label, "keras SGD(wd)", {
            "keras SGD(wd)": (mlp, lambda: keras.optimizers.SGD(0.1, momentum=0.9,
                                                                weight_decay=5e-4)),
            "DecoupledWeightDecay(SGD)": (mlp, lambda: optimizers.DecoupledWeightDecay(
                keras.optimizers.SGD(0.1, momentum=0.9), 5e-4, exclude=())),
            "SGDP": (mlp, lambda: optimizers.SGDP(0.1, momentum=0.9, weight_decay=5e-4,
                                                  exclude=())),
        }, x, y, loss)
    return (label, "keras AdamW", {
        "keras AdamW": (mlp, lambda: keras.optimizers.AdamW(1e-3, weight_decay=4e-3)),
        "AdamP": (mlp, lambda: optimizers.AdamP(1e-3, weight_decay=4e-3, exclude=())),
    }, x, y, loss)


def run_group(group, args, rng, backend):
    import _timing
    import keras

    rows = []
    label, baseline, makers, x, y, loss = _arms(group, args, rng)
    x = x.astype("float32")
    y = y if y.dtype.kind == "i" else y.astype("float32")
    targets = {f"{a} vs {baseline}": TARGETS[backend] for a in makers if a != baseline}
    peers, extra_pairs = args.peers.arms(group, x, y)  # plain PyTorch, built once for all modes
    for mode, jit in _timing.xla_modes(backend):
        arms = {}
        for arm, (build, make_opt) in makers.items():
            model = build()
            model.compile(optimizer=make_opt(), loss=loss, jit_compile=jit)
            arms[arm] = _timing.train_step(model, x, y)
        arms.update(peers)
        times = {}
        rows += _timing.compare(
            f"{label}, jit {mode}", arms, baseline, rounds=args.rounds, steps=args.steps,
            warmup=args.warmup, targets=targets,
            verbose=not args.quick, pairs=args.peers.pairs(list(arms), baseline, extra_pairs),
            times=times)
        if group == "resnet20":
            args.peers.record(f"{label}, jit {mode}", times, len(x))
        keras.backend.clear_session()
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    backend = _pre_parse(argv) or os.environ.get("KERAS_BACKEND", "tensorflow")
    os.environ["KERAS_BACKEND"] = backend
    import _peers
    import _timing

    p = _timing.base_parser(__doc__.splitlines()[0])
    p.add_argument("--backend", choices=BACKENDS, default=backend,
                   help="Keras backend of this process (default: $KERAS_BACKEND)")
    _timing.add_only(p, GROUPS, "groups")
    _peers.add_arguments(p)
    args = p.parse_args(argv)
    args._argv = argv
    _timing.finish_args(args, rounds=15, steps=5)
    groups = _timing.parse_only(p, args.only, GROUPS, "groups")

    import keras

    if keras.backend.backend() != backend:
        p.error(f"Keras was imported with another backend ({keras.backend.backend()}) before "
                f"this script could choose one. Received: backend={backend!r}")
    if backend == "tensorflow":
        _timing.setup(args.threads)
    import numpy as np

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    args.peers = _peers.Peers(args)
    rows = []
    for group in groups:
        rows += run_group(group, args, rng, backend)
    info = _timing.device_info()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"\n## {backend}: step time vs plain Keras ({info['device']})\n")
    print(f"machine: {info['machine']}, Keras {info['keras']}, load avg {load}")
    print(f"command: {_timing.command([__file__, *argv])}")
    print(f"rounds={args.rounds} x steps={args.steps} per arm (warm-up {args.warmup}); "
          "ratio = arm / baseline wall time within a round, median over rounds"
          + ("; torch: no XLA in Keras, jit auto only" if backend == "torch" else "")
          + ("; JAX: always XLA, auto == xla" if backend == "jax" else "") + "\n")
    print(_timing.format_table(rows))
    print("\n" + args.peers.report())
    ERRORS.update(args.peers.errors)
    return rows


if __name__ == "__main__":
    main()
    sys.exit(1 if ERRORS else 0)  # an arm that could not be built: reported, and status 1
