"""The same benchmark arms on TensorFlow, JAX and PyTorch: step-time ratios against the plain
Keras twin on that backend, with jit_compile "auto" (what a user gets) and with XLA forced.

Commands (one backend per process: Keras picks its backend at import)::

    .venv/bin/python bench/bench_backends.py --backend tensorflow     # ~3-5 min on 2 cores
    .venv/bin/python bench/bench_backends.py --backend jax
    .venv/bin/python bench/bench_backends.py --backend torch
    .venv/bin/python bench/bench_backends.py --backend jax --quick    # smoke test, tiny shapes
    .venv/bin/python bench/bench_backends.py --backend torch --memory # + peak step memory

Groups (each interleaved on its own, bench/_timing.py: rotating arm order, per-round ratios,
median over rounds); every arm is a full ``train_on_batch`` step (forward, backward, update):

* ``wn_dense``: ``Dense(1024)`` on 1024 features, batch 256, plain vs ``WeightNormalization``.
* ``wn_conv``: ``Conv2D(32, 3, padding="same")`` on 16x16x32 maps, batch 128, plain vs wrapped.
* ``sgd``: ``zoo.mlp`` 4x1024 + BatchNorm, batch 128: ``keras.optimizers.SGD(0.1, momentum=0.9,
  weight_decay=5e-4)`` vs ``DecoupledWeightDecay(SGD)`` vs ``SGDP`` (``exclude=()``: the same
  variables decayed as Keras).
* ``adam``: the same MLP: ``keras.optimizers.AdamW(1e-3, weight_decay=4e-3)`` vs ``AdamP``.
* ``bn``: the norm layer alone on 32x32x16 maps, batch 128: Keras BatchNormalization vs
  ``FusedBatchNormalization`` vs ``L1BatchNormalization`` vs ``TopKBatchNormalization``.
* ``resnet20``: ``zoo.create("resnet20", norm="batch")`` on 32x32x3, 10 classes, batch 128,
  ``keras.optimizers.SGD(0.1, momentum=0.9)``, sparse cross-entropy from logits: the baseline
  of its plain-PyTorch peers below; the images/second of every arm are printed too. A second
  Keras arm builds the same model with ``norm=keras.layers.BatchNormalization`` (the zoo's
  ``"batch"`` is ``FusedBatchNormalization``, the fused kernel on TensorFlow).
* ``sphere``: the ``sgd`` MLP: ``keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4)``
  vs ``DecoupledWeightDecay(SGD(0.1, momentum=0.9), 5e-4, exclude=(),
  scale_invariant="sphere").bind(model)`` (the four BatchNorm'd kernels retracted to the unit
  sphere per unit after every step, the other weights decayed).
* ``monitor``: the ``sgd`` MLP and its Keras SGD; every call of an arm (the "step" of the
  table: its ms are per 10 train steps) is 10 train steps, plain vs each followed by
  ``NormMonitor``'s hooks as ``fit`` calls them (``every_n_steps=10``, default tracking: the
  four kernels, no CSV): ``on_train_begin`` before the first step, ``on_train_batch_end``
  after every step, ``on_epoch_end`` (the flush of the results to NumPy) every 50 steps. So
  every call holds exactly one measured step (‖w‖, angle) and one snapshot of the weights
  (the step before it), and every fifth call a flush, as in a ``fit`` of 50-step epochs. Not
  counted: on JAX, ``fit`` keeps the state in its loop and the monitor's access to the weights
  syncs it into the variables at 2 of 10 steps, while ``train_on_batch`` syncs at every step
  in both arms, so the arm misses that (small, Python-side) cost there.

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
  decayed), and the same MLP with ``torch.optim.AdamW``, resp. ``torch.optim.SGD(momentum=0.9,
  weight_decay=5e-4)`` (its decay is coupled: the same passes over the weights). Extra rows:
  ours vs that reference, and the reference vs its plain twin (what the projection costs
  when written by hand in PyTorch, next to what it costs us over Keras' optimizer).

An arm that cannot be built (e.g. ``torch.compile`` failing, or compiling for longer than
``--torch-compile-timeout``) is reported under ``errors`` and the run goes on; the exit status is
then 1.

``--memory`` adds a second table, the peak memory of one training step of every arm against
its baseline (bench/_memory.py: method and limits): on JAX XLA's memory analysis of the
compiled train step (``temp`` and ``total``), on TensorFlow its allocator's peak counter, on
PyTorch (CPU) the growth of the resident set; TensorFlow and PyTorch measure each arm in a
fresh process, after the group's timing so that they cannot disturb it. Off by default.
``--json PATH`` writes the timing rows and, with ``--memory``, the memory rows (bytes).

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
GROUPS = ("wn_dense", "wn_conv", "sgd", "adam", "bn", "sphere", "monitor", "resnet20")
TARGETS = {"tensorflow": "<= 1.05", "jax": "<= 1.05", "torch": "<= 1.10"}
#: Keras arms shown for comparison, not held to the overhead target (Keras' own layers).
UNTARGETED = {"zoo ResNet-20, keras BN"}
ERRORS: dict[str, str] = {}  # "group/arm" -> why, of the peer arms main() could not build
MEMORY_STEPS = 10  # steps per memory measurement: one NormMonitor cycle (every_n_steps=10)
MONITOR_EVERY = 10  # NormMonitor(every_n_steps): also the train steps per call in "monitor"
MONITOR_EPOCH = 50  # steps per "epoch" of the monitor arm (its CSV-less flush at the end)


def _pre_parse(argv):
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--backend", choices=BACKENDS, default=None)
    known, _ = p.parse_known_args(argv)
    return known.backend


def _single(layer, shape):
    import keras

    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs))


def _ten_steps(model, step):
    """``MONITOR_EVERY`` train steps per call (the ``monitor`` group's unit)."""
    def steps():
        for _ in range(MONITOR_EVERY):
            logs = step()
        return logs

    return steps


def _monitored(model, step):
    """``MONITOR_EVERY`` train steps per call, each followed by NormMonitor's hooks as ``fit``
    calls them (``every_n_steps=MONITOR_EVERY``, default tracking, no CSV): ``on_train_begin``
    before the first step, ``on_epoch_begin`` / ``on_epoch_end`` around every ``MONITOR_EPOCH``
    steps, ``on_train_batch_end`` after each."""
    from keras_normreg.diagnostics import NormMonitor

    monitor = NormMonitor(every_n_steps=MONITOR_EVERY)
    monitor.set_model(model)
    count = [0]

    def monitored():
        for _ in range(MONITOR_EVERY):
            i = count[0]
            epoch, batch = divmod(i, MONITOR_EPOCH)
            if i == 0:
                monitor.on_train_begin()
            if batch == 0:
                monitor.on_epoch_begin(epoch)
            logs = step()
            monitor.on_train_batch_end(batch)
            if batch == MONITOR_EPOCH - 1:
                monitor.on_epoch_end(epoch)
            count[0] = i + 1
        return logs

    monitored.monitor = monitor
    return monitored


def _arms(group, args, rng):
    """(label, baseline, {arm: (model builder, optimizer maker[, step wrapper])}, x, y, loss).

    An optimizer maker taking one argument gets the built model (sphere mode binds to it); a
    step wrapper ``(model, step) -> call`` makes the arm's timed call from its train step."""
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
            # the same model with Keras' own BatchNormalization (the zoo's "batch" is
            # FusedBatchNormalization: the same layer, with TensorFlow's fused kernel)
            "zoo ResNet-20, keras BN": (
                lambda: zoo.create("resnet20", norm=keras.layers.BatchNormalization,
                                   input_shape=(s, s, 3), num_classes=10, **kw),
                lambda: keras.optimizers.SGD(0.1, momentum=0.9)),
        }, x, y, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if group == "bn":
        b, s, c = (2, 4, 4) if q else (128, 32, 16)
        x, y = rng.standard_normal((b, s, s, c)), rng.standard_normal((b, s, s, c))
        return (f"norm layer alone, {b}x{s}x{s}x{c}", "keras BN", {
            "keras BN": (lambda: _single(keras.layers.BatchNormalization(), (s, s, c)), sgd),
            "Fused BN": (lambda: _single(layers.FusedBatchNormalization(), (s, s, c)), sgd),
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

    def sgd_wd():
        return keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4)

    if group == "sphere":
        return (label, "keras SGD(wd)", {
            "keras SGD(wd)": (mlp, sgd_wd),
            "DecoupledWeightDecay(SGD) sphere": (mlp, lambda model: optimizers.DecoupledWeightDecay(
                keras.optimizers.SGD(0.1, momentum=0.9), 5e-4, exclude=(),
                scale_invariant="sphere").bind(model)),
        }, x, y, loss)
    if group == "monitor":
        return (f"{label}, {MONITOR_EVERY} steps per call", "keras SGD(wd)", {
            "keras SGD(wd)": (mlp, sgd_wd, _ten_steps),
            "+ NormMonitor(every 10)": (mlp, sgd_wd, _monitored),
        }, x, y, loss)
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


def _build(maker, loss, jit, x, y):
    """(compiled model, step callable) of one arm."""
    import inspect

    import _timing

    build, make_opt, *wrap = maker
    model = build()
    opt = make_opt(model) if inspect.signature(make_opt).parameters else make_opt()
    model.compile(optimizer=opt, loss=loss, jit_compile=jit)
    step = _timing.train_step(model, x, y)
    return model, (wrap[0](model, step) if wrap else step)


def _data(group, args, rng):
    label, baseline, makers, x, y, loss = _arms(group, args, rng)
    x = x.astype("float32")
    y = y if y.dtype.kind == "i" else y.astype("float32")
    return label, baseline, makers, x, y, loss


def run_group(group, args, rng, backend, memory=None):
    """Timing rows of ``group``; with ``memory`` (a list) also its _memory.MemoryRow rows."""
    import _memory
    import _timing
    import keras

    rows = []
    label, baseline, makers, x, y, loss = _data(group, args, rng)
    targets = {f"{a} vs {baseline}": TARGETS[backend] for a in makers
               if a != baseline and a not in UNTARGETED}
    peers, extra_pairs = args.peers.arms(group, x, y)  # plain PyTorch, built once for all modes
    for mode, jit in _timing.xla_modes(backend):
        arms, models = {}, {}
        for arm, maker in makers.items():
            models[arm], arms[arm] = _build(maker, loss, jit, x, y)
        keras_arms = dict(arms)
        arms.update(peers)
        times = {}
        rows += _timing.compare(
            f"{label}, jit {mode}", arms, baseline, rounds=args.rounds, steps=args.steps,
            warmup=args.warmup, targets=targets,
            verbose=not args.quick, pairs=args.peers.pairs(list(arms), baseline, extra_pairs),
            times=times, settle=args.settle)
        if group == "resnet20":
            args.peers.record(f"{label}, jit {mode}", times, len(x))
        if memory is not None:  # after the timing, so that it cannot disturb it
            child = [__file__, "--backend", backend, "--only", group, "--threads",
                     str(args.threads), "--no-peers"] + (["--quick"] if args.quick else [])
            per_arm = {arm: _memory.measure_arm(
                backend, models[arm], keras_arms[arm], x, y,
                child + ["--memory-child", f"{mode}/{arm}"]) for arm in makers}
            memory += _memory.rows(f"{label}, jit {mode}", baseline, per_arm)
        keras.backend.clear_session()
    return rows


def _memory_child(args, rng, backend, group):
    """One arm in this fresh process: build, 2 warm-up steps, its peak step memory."""
    import _memory
    import _timing

    mode, arm = args.memory_child.split("/", 1)
    label, baseline, makers, x, y, loss = _data(group, args, rng)
    model, step = _build(makers[arm], loss, dict(_timing.xla_modes(backend))[mode], x, y)
    for _ in range(2):
        step()
    _memory.measure_child(backend, model, step, MEMORY_STEPS)


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
    p.add_argument("--memory", action="store_true",
                   help="also measure the peak memory of a training step (bench/_memory.py)")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)  # "mode/arm"
    _timing.add_settle(p)
    args = p.parse_args(argv)
    args._argv = argv
    _timing.finish_args(args, rounds=15, steps=5)
    args.settle = _timing.settle_of(p, args)
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
    if args.memory_child:
        return _memory_child(args, rng, backend, groups[0])
    args.peers = _peers.Peers(args)
    rows, memory = [], [] if args.memory else None
    for group in groups:
        rows += run_group(group, args, rng, backend, memory)
    info = _timing.device_info()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"\n## {backend}: step time vs plain Keras ({info['device']})\n")
    print(f"machine: {info['machine']}, Keras {info['keras']}, load avg {load}")
    print(f"command: {_timing.command([__file__, *argv])}")
    print(f"rounds={args.rounds} x steps={args.steps} per arm (warm-up {args.warmup}, "
          f"{args.settle:g} s of idle before every block); "
          "ratio = arm / baseline wall time within a round, median over rounds"
          + ("; torch: no XLA in Keras, jit auto only" if backend == "torch" else "")
          + ("; JAX: always XLA, auto == xla" if backend == "jax" else "") + "\n")
    print(_timing.format_table(rows))
    print("\n" + args.peers.report())
    ERRORS.update(args.peers.errors)
    if memory is not None:
        import _memory

        print(f"\n## {backend}: peak memory of a training step vs plain Keras "
              f"({info['device']})\n")
        steps = "" if backend == "jax" else f"{MEMORY_STEPS} calls per arm after 2 warm-up; "
        print(f"{steps}{_memory.METHODS[backend]}; MiB = 2^20 bytes (bench/_memory.py: method "
              "and limits)\n")
        print(_memory.format_table(memory))
    if args.json:
        _write_json(args.json, backend, argv, info, rows, memory)
    return rows


def _write_json(path, backend, argv, info, rows, memory):
    """--json: the timing rows (with "met") and, with --memory, the memory rows (with "ratio",
    bytes; None = n/a)."""
    import dataclasses
    import json

    import _timing

    with open(path, "w") as f:
        json.dump({"backend": backend, "command": _timing.command([__file__, *argv]), **info,
                   "rows": [{**dataclasses.asdict(r), "met": r.met} for r in rows],
                   "memory": None if memory is None else [
                       {**dataclasses.asdict(r), "ratio": r.ratio} for r in memory]},
                  f, indent=2)


if __name__ == "__main__":
    main()
    sys.exit(1 if ERRORS else 0)  # an arm that could not be built: reported, and status 1
