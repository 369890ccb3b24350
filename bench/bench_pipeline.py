"""tf.data autotuning on vs off in keras_normreg's input pipelines, measured side by side.

Command (what the numbers in docs/benchmarks.md and keras_normreg/data/pipelines.py come from)::

    .venv/bin/python bench/bench_pipeline.py              # both parts, ~2 min
    .venv/bin/python bench/bench_pipeline.py --only fit   # fit | throughput

Two parts, each alternating the two arms (``autotune=False``, the library's default, and
``autotune=True``, TensorFlow's default) so that both share the machine's state:

* ``fit``: what a tuning trial does: ``--fits`` x 2 ``model.fit`` calls of ``--epochs`` epochs
  of the MNIST-1D cnn1d + BatchNorm recipe (``zoo/mnist1d_cnn1d_batch.toml``'s model, a fresh
  model per fit) on ``load_epochs`` training and validation streams (``train[:90%]`` /
  ``train[90%:]``, batch 128). Printed per arm: the median wall time of a ``fit``, and the
  *stall*: the time from the last callback's ``on_train_end`` to ``fit`` returning (nothing of
  ours runs there: the training and validation iterators are deleted), median and max.
* ``throughput``: examples per second drawn from ``load_epochs("digits", "train", 128,
  augment="crop_flip")`` (shuffle, crop + flip on every example), ``--rounds`` interleaved
  rounds of ``--batches`` batches after a warm-up, median per arm.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _timing  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("fit", "throughput")
ARMS = {"autotune off (default)": False, "autotune on": True}
RECIPE = os.path.join(ROOT, "zoo", "mnist1d_cnn1d_batch.toml")


def part_fit(fits: int, epochs: int) -> dict:
    import keras

    from keras_normreg import config, distribute
    from keras_normreg import train as nr_train
    from keras_normreg.data import load_epochs

    cfg = config.load_recipe(RECIPE)
    batch = cfg["data"]["batch_size"]

    class EndStamp(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            self.end = time.perf_counter()

    streams = {}
    for label, autotune in ARMS.items():
        train, n = load_epochs("mnist1d", "train[:90%]", batch, autotune=autotune)
        val, nv = load_epochs("mnist1d", "train[90%:]", batch, augment=False, shuffle=False,
                              autotune=autotune)
        streams[label] = (train, val, distribute.steps_per_epoch(n, batch, 1),
                          distribute.steps_per_epoch(nv, batch, 1))
    res = {label: {"fit_s": [], "stall_s": []} for label in ARMS}
    labels = list(ARMS)
    for i in range(fits):
        for label in (labels if i % 2 == 0 else labels[::-1]):
            train, val, steps, val_steps = streams[label]
            keras.backend.clear_session()
            model = nr_train.build_model(cfg)
            model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"], jit_compile=False)
            stamp = EndStamp()
            t0 = time.perf_counter()
            model.fit(train, epochs=epochs, steps_per_epoch=steps, validation_data=val,
                      validation_steps=val_steps, callbacks=[stamp], verbose=0)
            done = time.perf_counter()
            res[label]["fit_s"].append(done - t0)
            res[label]["stall_s"].append(done - stamp.end)
            print(f"[fit] {label}, fit {i + 1}/{fits}: {done - t0:.2f} s, stall "
                  f"{done - stamp.end:.3f} s", file=sys.stderr, flush=True)
    return {"fits": fits, "epochs": epochs, "arms": res}


def part_throughput(rounds: int, batches: int) -> dict:
    from keras_normreg.data import load_epochs

    its = {}
    for label, autotune in ARMS.items():
        ds, _ = load_epochs("digits", "train", 128, augment="crop_flip", autotune=autotune)
        its[label] = iter(ds)
        for _ in range(min(batches, 20)):  # warm-up: cache filled, threads started
            next(its[label])
    res = {label: [] for label in ARMS}
    labels = list(ARMS)
    for r in range(rounds):
        for label in (labels if r % 2 == 0 else labels[::-1]):
            it = its[label]
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            res[label].append(batches * 128 / (time.perf_counter() - t0))
    return {"rounds": rounds, "batches": batches, "examples_per_s": res}


def main(argv=None):
    p = _timing.base_parser(__doc__.splitlines()[0])
    _timing.add_only(p, PARTS, "parts")
    p.add_argument("--fits", type=int, default=None, help="fits per arm (default 8, quick 1)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per fit (default 10)")
    p.add_argument("--batches", type=int, default=None,
                   help="batches per throughput round (default 200)")
    args, parts = _timing.parse_args(p, argv, rounds=7, only=(PARTS, "parts"))
    for name in ("fits", "epochs", "batches"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be >= 1. Received: {name}={value!r}")
    q = args.quick
    fits = args.fits or (1 if q else 8)
    epochs = args.epochs or (1 if q else 10)
    batches = args.batches or (2 if q else 200)

    results = {}
    if "fit" in parts:
        results["fit"] = part_fit(fits, epochs)
    if "throughput" in parts:
        results["throughput"] = part_throughput(args.rounds, batches)

    cmd = _timing.command([__file__, *_timing._argv_of(args)])
    print(f"\n## tf.data autotuning on vs off\n\n{_timing.machine()}\ncommand: {cmd}\n")
    if "fit" in results:
        f = results["fit"]
        print(f"fit: MNIST-1D cnn1d + BN, {f['epochs']} epochs, {f['fits']} fits per arm "
              "(fresh model each)\n")
        print("| arm | fit s (median) | stall after the last epoch s: median / max |")
        print("|---|---:|---:|")
        for label, r in f["arms"].items():
            print(f"| {label} | {statistics.median(r['fit_s']):.2f} | "
                  f"{statistics.median(r['stall_s']):.3f} / {max(r['stall_s']):.3f} |")
        on, off = (statistics.median(f["arms"][k]["fit_s"]) for k in ("autotune on",
                                                                    "autotune off (default)"))
        print(f"\nfit time, off / on: {off / on:.3f}\n")
    if "throughput" in results:
        t = results["throughput"]
        print(f"throughput: digits train, crop_flip, batch 128, {t['rounds']} rounds of "
              f"{t['batches']} batches\n")
        print("| arm | examples/s (median) |")
        print("|---|---:|")
        for label, v in t["examples_per_s"].items():
            print(f"| {label} | {statistics.median(v):.0f} |")
    if args.json:
        import json

        with open(args.json, "w") as fh:
            json.dump({"machine": _timing.machine(), "command": cmd, **results}, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
