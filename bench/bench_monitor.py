"""Overhead of NormMonitor on the cnn1d MNIST-1D training, measured side by side in one process.

Command (what the numbers in keras_normreg/diagnostics/monitor.py come from)::

    .venv/bin/python bench/bench_monitor.py                 # the default, every_n_steps=10
    .venv/bin/python bench/bench_monitor.py --every 1       # every step

One model (cnn1d, BatchNorm, SGDW lr=0.1 momentum=0.9 wd=5e-4 — the demo recipe's optimizer),
MNIST-1D batches of 128 (32 steps per epoch), the monitor writing its CSV. ONE ``fit`` of
``2 × --pairs`` epochs in which the monitor is switched on and off epoch by epoch (on, off, off,
on, on, off, ...), so that both arms share the same machine load; a last callback times each
epoch from ``on_epoch_begin`` to ``on_epoch_end`` (the monitor's epoch-end CSV flush is
included). Printed: the median of the per-pair ratios t(on)/t(off) (each "on" epoch against its
neighbour "off" epoch), the ratio of the medians, and, measured directly, the time spent inside
the monitor's hooks per step relative to the plain step. The direct number is the least
sensitive to other processes on a shared machine; the ratios are noisy there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _timing  # noqa: E402

from keras_normreg import data, optimizers, zoo  # noqa: E402
from keras_normreg.diagnostics import NormMonitor  # noqa: E402


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []
        self._t0 = None

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._t0)


class _TimedMonitor(NormMonitor):
    """NormMonitor whose batch/epoch hooks are timed and can be switched off."""

    hook_seconds = 0.0
    enabled = True

    def on_epoch_begin(self, epoch, logs=None):
        if self.enabled:
            super().on_epoch_begin(epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        if not self.enabled:
            return
        t0 = time.perf_counter()
        super().on_train_batch_end(batch, logs)
        self.hook_seconds += time.perf_counter() - t0

    def on_epoch_end(self, epoch, logs=None):
        if not self.enabled:
            return
        t0 = time.perf_counter()
        super().on_epoch_end(epoch, logs)
        self.hook_seconds += time.perf_counter() - t0


class _Toggle(keras.callbacks.Callback):
    """Switch the monitor on for epochs 0, 3, 4, 7, 8, ... (ABBA order), off for the others."""

    def __init__(self, monitor):
        super().__init__()
        self.monitor = monitor
        self.on_epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        on = (epoch % 4) in (0, 3)
        self.monitor.enabled = on
        self.on_epochs.append(on)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--every", type=int, default=10,
                   help="NormMonitor every_n_steps (default 10, the monitor's default)")
    p.add_argument("--pairs", type=int, default=20, help="epoch pairs (on, off)")
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: 2 epoch pairs, 1 warm-up epoch (numbers not meaningful)")
    p.add_argument("--no-csv", action="store_true", help="do not write the CSV")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs")
    p.add_argument("--per-unit", action="store_true", help="NormMonitor(per_unit=True)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)

    keras.utils.set_random_seed(0)
    train = data.load("mnist1d", "train", 128)
    steps = sum(1 for _ in train)
    model = zoo.create("cnn1d")
    model.compile(optimizer=optimizers.SGDW(0.1, momentum=0.9, weight_decay=5e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tmp = tempfile.mkdtemp(prefix="bench_monitor_")
    monitor = _TimedMonitor(
        every_n_steps=args.every, per_unit=args.per_unit,
        csv_path=None if args.no_csv else os.path.join(tmp, "norms.csv"),
        log_dir=os.path.join(tmp, "tb") if args.tensorboard else None)
    pairs_n = 2 if args.quick else args.pairs
    model.fit(train, epochs=1 if args.quick else 2, verbose=0,
              callbacks=[monitor])  # warm-up: trace everything
    monitor.hook_seconds = 0.0

    toggle, timer = _Toggle(monitor), _EpochTimer()
    model.fit(train, epochs=2 * pairs_n, verbose=0, callbacks=[toggle, monitor, timer])
    times = [t / steps for t in timer.times]
    on = [t for t, flag in zip(times, toggle.on_epochs, strict=True) if flag]
    off = [t for t, flag in zip(times, toggle.on_epochs, strict=True) if not flag]
    pairs = [times[i] / times[i + 1] if toggle.on_epochs[i] else times[i + 1] / times[i]
             for i in range(0, len(times) - 1, 2)]
    med_on, med_off = statistics.median(on), statistics.median(off)
    hook_per_step = monitor.hook_seconds / (len(on) * steps)
    print(f"cnn1d / MNIST-1D, batch 128, {steps} steps/epoch, {len(on)} epochs with and "
          f"{len(off)} without the monitor, alternating in one fit; NormMonitor(every_n_steps="
          f"{args.every}, csv={'off' if args.no_csv else 'on'}, tensorboard="
          f"{'on' if args.tensorboard else 'off'}, per_unit={args.per_unit}) tracking "
          f"{len(monitor.tracked)} weights; load avg {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    print(f"step time without monitor: median {med_off * 1e3:.3f} ms, min {min(off) * 1e3:.3f} ms")
    print(f"step time with monitor:    median {med_on * 1e3:.3f} ms, min {min(on) * 1e3:.3f} ms")
    print(f"ratio with/without: median of pair ratios {statistics.median(pairs):.4f}, "
          f"ratio of medians {med_on / med_off:.4f}, ratio of minima {min(on) / min(off):.4f}")
    print(f"time inside the monitor's hooks: {hook_per_step * 1e6:.1f} us/step = "
          f"{100 * hook_per_step / med_off:.2f}% of the plain step (median)")
    result = {"every_n_steps": args.every, "step_ms_off": med_off * 1e3,
              "step_ms_on": med_on * 1e3, "pair_ratio": statistics.median(pairs),
              "ratio_of_medians": med_on / med_off, "hook_us_per_step": hook_per_step * 1e6,
              "hook_fraction": hook_per_step / med_off, "tracked": list(monitor.tracked)}
    if args.json:
        cmd = _timing.command([__file__, *(sys.argv[1:] if argv is None else argv)])
        with open(args.json, "w") as f:
            json.dump({"command": cmd, "load_avg": os.getloadavg()[0], "cpus": os.cpu_count(),
                       **result}, f, indent=2)
    return result


if __name__ == "__main__":
    main()
