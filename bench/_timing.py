"""Shared timing helper of the bench/ scripts: interleaved A/B timing of compiled train steps.

Method (the same for every benchmark, so their ratios are comparable):

1. :func:`setup` fixes the TensorFlow thread pools (``--threads`` intra-op, 1 inter-op) before any
   op runs, and silences TensorFlow's C++ logging.
2. Every arm is a zero-argument *step* callable, normally :func:`train_step` of a compiled Keras
   model: ``model.train_on_batch(x, y)`` on fixed tensors. ``train_on_batch`` returns the logs as
   NumPy values, so every call ends with a device-to-host sync and the wall time of a call is the
   time of one finished optimizer step (plus the same Python dispatch cost for every arm).
3. :func:`compare` warms every arm up (the first call traces and compiles), then runs ``rounds``
   rounds. In a round every arm runs ``steps`` steps back to back; the order of the arms rotates
   from round to round (A B C, B C A, C A B, ...), so a slow phase of a shared machine hits every
   arm equally often. Garbage collection runs once before the rounds and is off during them.
   ``settle`` seconds of idle before every timed block (bench_backends.py: 0.3 s) keep one
   arm's spinning thread pool from taking the cores of the next (see :func:`compare`).
4. Per round, the ratio ``t(arm) / t(baseline)`` is formed from the two blocks of *that* round;
   the reported ratio is the median over rounds, with the interquartile range and min-max as the
   spread. Per-step times are medians over rounds.

:func:`print_report` prints a Markdown table (benchmark, baseline and arm ms/step, median ratio,
spread, target, met?) preceded by the machine and the exact command, the form copied into
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

_THREADS: dict = {}


def setup(threads: int = 2) -> dict:
    """Fix TensorFlow's thread pools (``threads`` intra-op, 1 inter-op); return what is in effect.

    ``threads <= 0`` leaves TensorFlow's settings alone (the smoke test uses it).

    TensorFlow only accepts this before its runtime starts; when it has already started (e.g. the
    smoke test imports the scripts inside a pytest process) the current values are kept and
    reported instead.
    """
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # retracing warnings: every arm is a new model, by design
    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass
    _THREADS.update(
        intra=tf.config.threading.get_intra_op_parallelism_threads(),
        inter=tf.config.threading.get_inter_op_parallelism_threads(),
    )
    return dict(_THREADS)


def base_parser(description: str) -> argparse.ArgumentParser:
    """Arguments shared by every script: --quick, --rounds, --steps, --warmup, --threads, --json."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: tiny shapes, 1 round of 1 step (for tests, not for numbers)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per comparison")
    p.add_argument("--steps", type=int, default=None, help="train steps per arm per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per arm first")
    p.add_argument("--threads", type=int, default=2,
                   help="TensorFlow intra-op threads (0: leave TensorFlow's default)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def finish_args(args, rounds: int, steps: int):
    """Fill the defaults of --rounds/--steps (quick mode: 1 round, 1 step, 1 warm-up step)."""
    if args.quick:
        rounds = steps = 1
        args.warmup = 1
    if args.rounds is None:
        args.rounds = rounds
    if args.steps is None:
        args.steps = steps
    if args.rounds < 1 or args.steps < 1 or args.warmup < 1:
        raise ValueError("--rounds, --steps and --warmup must be >= 1. "
                         f"Received: rounds={args.rounds}, steps={args.steps}, "
                         f"warmup={args.warmup}")
    return args


#: seconds of idle before every timed block where the script takes ``--settle`` (see compare)
SETTLE = 0.3


def add_settle(parser) -> None:
    """``--settle``: the idle before every timed block (:func:`compare`); resolve it with
    :func:`settle_of` after parsing."""
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds of sleep before every timed block, so that the thread "
                             "pools of the previous arm (PyTorch's OpenMP spins after its "
                             f"work) are idle (default {SETTLE:g}; --quick: 0)")


def settle_of(parser, args) -> float:
    """The ``--settle`` in effect: :data:`SETTLE`, 0 with ``--quick``; a negative value is
    refused through ``parser.error`` (exit status 2), naming the value received."""
    if args.settle is None:
        return 0.0 if args.quick else SETTLE
    if args.settle < 0:
        parser.error(f"--settle must be >= 0. Received: settle={args.settle}")
    return args.settle


# ---------------------------------------------------------------------- arms
def parse_args(parser, argv, *, rounds: int, steps: int = 1, only=None):
    """Parse ``argv``, fill the --rounds/--steps defaults (:func:`finish_args`), check --only
    (``only=(choices, what)``, :func:`parse_only`) and then fix TensorFlow's threads
    (:func:`setup`), in that order so that a bad option fails before TensorFlow loads.

    Returns ``(args, picked)``; ``picked`` is None without ``only``."""
    args = parser.parse_args(argv)
    args._argv = argv
    finish_args(args, rounds=rounds, steps=steps)
    picked = None if only is None else parse_only(parser, args.only, *only)
    setup(args.threads)
    return args, picked


def train_step(model, x, y) -> Callable[[], object]:
    """A step callable: one ``model.train_on_batch(x, y)`` on fixed tensors of the current
    Keras backend (synchronizing: the returned logs are NumPy)."""
    from keras import ops

    x = ops.convert_to_tensor(x)
    y = ops.convert_to_tensor(y)

    def step():
        return model.train_on_batch(x, y)

    return step


def xla_modes(backend) -> list[tuple[str, object]]:
    """(label, jit_compile) pairs a cross-backend benchmark measures on ``backend``: "auto" (as
    a user gets it) everywhere, plus XLA forced on TensorFlow (JAX is always XLA; Keras has no
    XLA on PyTorch)."""
    if backend == "tensorflow":
        return [("auto", "auto"), ("xla", True)]
    return [("auto", "auto")]


def count_params(model) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    trainable = sum(int(v.numpy().size) for v in model.trainable_variables)
    total = sum(int(v.numpy().size) for v in model.variables)
    return total, trainable


# ---------------------------------------------------------------------- timing
@dataclasses.dataclass
class Row:
    """One compared arm: ratio = its step time / the baseline's, per round."""

    group: str
    name: str
    baseline: str
    ms_baseline: float
    ms_arm: float
    ratio: float
    q25: float
    q75: float
    lo: float
    hi: float
    rounds: int
    cpu_ratio: float = float("nan")  # median over rounds of the process-CPU-time ratio
    target: str = ""  # e.g. "<= 1.05", ">= 1.0"; empty = informational
    note: str = ""

    @property
    def met(self) -> str:
        """"yes"/"NO" when the wall-time and CPU-time medians agree, else "unclear".

        On a shared machine the wall time also counts other processes; when the two verdicts
        differ the measurement cannot decide (rerun on an idle machine).
        """
        if not self.target:
            return "-"
        op, value = self.target.split()
        value = float(value)

        def ok(ratio):
            return ratio <= value if op == "<=" else ratio >= value

        wall = ok(self.ratio)
        if math.isnan(self.cpu_ratio) or ok(self.cpu_ratio) == wall:
            return "yes" if wall else "NO"
        return "unclear"


def _quantile(sorted_values, q):
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    i = int(pos)
    j = min(i + 1, len(sorted_values) - 1)
    return sorted_values[i] + (sorted_values[j] - sorted_values[i]) * (pos - i)


def time_block(step: Callable[[], object], steps: int,
               sync: Callable[[object], object] | None = None) -> tuple[float, float]:
    """(wall, process CPU) seconds per step of ``steps`` consecutive calls.

    The CPU time is that of all threads of this process: on a machine shared with other jobs it
    tracks the work done more steadily than the wall time, which also counts the time other
    processes hold the cores.

    ``sync``, when given, is called on the value the last step returned before the clock stops
    (e.g. ``jax.block_until_ready``, or ``torch.cuda.synchronize`` wrapped): for asynchronous
    backends whose calls return before the device has finished the work.
    """
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = None
    for _ in range(steps):
        out = step()
    if sync is not None:
        sync(out)
    wall = (time.perf_counter() - t0) / steps
    return wall, (time.process_time() - c0) / steps


def compare(group: str, arms: dict[str, Callable[[], object]], baseline: str | None = None, *,
            rounds: int, steps: int, warmup: int, pairs: Sequence[tuple[str, str]] | None = None,
            targets: dict[str, str] | None = None, notes: dict[str, str] | None = None,
            times: dict[str, float] | None = None, verbose: bool = True,
            syncs: dict[str, Callable[[object], object]] | None = None,
            settle: float = 0.0) -> list[Row]:
    """Interleaved timing of ``arms`` (name -> step callable).

    One Row per ``(arm, baseline)`` of ``pairs`` (default: every other arm vs ``baseline``).
    Every arm is timed in every round; ``targets`` maps an arm name (or ``"arm vs baseline"``)
    to a target such as ``"<= 1.05"`` on its median ratio. ``times``, when given, receives the
    median seconds per step of every arm. ``syncs`` maps an arm name to the function that waits
    for its device at the end of every warm-up and timed block (see :func:`time_block`); arms
    without one are timed as before.

    ``settle``: seconds of sleep before every timed block, outside the clock. Thread pools
    spin for a while after their work (PyTorch's OpenMP, TensorFlow's and XLA's Eigen pools);
    when arms of different runtimes share the rounds, the spinning pool of one arm takes cores
    from the next, and since the rotation keeps the arms' cyclic order, the same arm always
    pays. Measured on 2 cores: WeightNorm Dense vs plain Dense on TensorFlow 0.95 with the
    plain-PyTorch peers in the rounds (plain Dense always came right after a PyTorch arm)
    against 1.21 without them, 1.17 with the peers and ``OMP_WAIT_POLICY=PASSIVE``.
    """
    syncs = syncs or {}
    if pairs is None:
        if baseline not in arms:
            raise ValueError(f"Unknown baseline arm. Valid: {sorted(arms)}. Received: "
                             f"baseline={baseline!r}")
        pairs = [(name, baseline) for name in arms if name != baseline]
    for pair in pairs:
        for name in pair:
            if name not in arms:
                raise ValueError(f"Unknown arm in `pairs`. Valid: {sorted(arms)}. Received: "
                                 f"pairs={list(pairs)!r}")
    names = list(arms)
    t_warm = time.perf_counter()
    for name in names:
        out = None
        for _ in range(warmup):
            out = arms[name]()
        if name in syncs:
            syncs[name](out)
    if verbose:
        print(f"[{group}] warm-up of {len(names)} arms: {time.perf_counter() - t_warm:.1f} s",
              file=sys.stderr, flush=True)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    cpu_round: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    gc.disable()  # for all rounds: a collection inside one arm's block would bias its time
    try:
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                if settle > 0:
                    time.sleep(settle)
                wall, cpu = time_block(arms[name], steps, syncs.get(name))
                per_round[name].append(wall)
                cpu_round[name].append(cpu)
    finally:
        gc.enable()
    if times is not None:
        times.update({name: statistics.median(per_round[name]) for name in names})
    rows = []
    targets = targets or {}
    notes = notes or {}
    for name, base_name in pairs:
        base = per_round[base_name]
        ratios = sorted(a / b for a, b in zip(per_round[name], base, strict=True))
        cpu_ratios = [a / b if b > 0 else float("nan")
                      for a, b in zip(cpu_round[name], cpu_round[base_name], strict=True)]
        key = f"{name} vs {base_name}"
        rows.append(Row(
            group=group, name=name, baseline=base_name,
            ms_baseline=1e3 * statistics.median(base),
            ms_arm=1e3 * statistics.median(per_round[name]),
            ratio=statistics.median(ratios), q25=_quantile(ratios, 0.25),
            q75=_quantile(ratios, 0.75), lo=ratios[0], hi=ratios[-1], rounds=rounds,
            cpu_ratio=statistics.median(cpu_ratios),
            target=targets.get(key, targets.get(name, "")),
            note=notes.get(key, notes.get(name, "")),
        ))
    if verbose:
        print(f"[{group}] done in {time.perf_counter() - t_warm:.1f} s", file=sys.stderr,
              flush=True)
    return rows


# ---------------------------------------------------------------------- report
def machine() -> str:
    import keras
    import tensorflow as tf

    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load avg {os.getloadavg()[0]:.1f}"
    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU" if gpus else "CPU only"
    threads = _THREADS or {"intra": "?", "inter": "?"}
    return (f"{platform.machine()} {os.cpu_count()} cores ({device}{load}), "
            f"TF {tf.__version__}, Keras {keras.__version__}, "
            f"threads intra={threads['intra']} inter={threads['inter']}")


def command(argv: Sequence[str] | None = None) -> str:
    """The command line that reproduces this run, run from the repository root."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.relpath(os.path.abspath(sys.argv[0] if argv is None else argv[0]), root)
    args = sys.argv[1:] if argv is None else list(argv[1:])
    return shlex.join([".venv/bin/python", script, *args])


def format_table(rows: Sequence[Row]) -> str:
    lines = [
        "| benchmark | arm vs baseline | baseline ms/step | arm ms/step | ratio (median) "
        "| IQR | min-max | CPU-time ratio | target | met? |",
        "|---|---|---:|---:|---:|---|---|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.group} | {r.name} vs {r.baseline} | {r.ms_baseline:.1f} | {r.ms_arm:.1f} "
            f"| {r.ratio:.3f} | {r.q25:.3f}-{r.q75:.3f} | {r.lo:.3f}-{r.hi:.3f} "
            f"| {r.cpu_ratio:.3f} | {r.target or '-'} | {r.met} |"
        )
    return "\n".join(lines)


def print_report(title: str, rows: Sequence[Row], args, script: str, extra: str = "") -> None:
    """Print machine, command and table; write JSON when --json is given."""
    cmd = command([script, *_argv_of(args)])
    print(f"\n## {title}\n")
    print(f"machine: {machine()}")
    print(f"command: {cmd}")
    print(f"rounds={args.rounds} x steps={args.steps} per arm (warm-up {args.warmup}; "
          "micro benchmarks: 2x the rounds of 5x the steps); ratio = arm wall time / baseline "
          "wall time within a round, median over rounds; CPU-time ratio: the same with the "
          "process CPU time\n")
    print(format_table(rows))
    for r in rows:
        if r.note:
            print(f"- {r.group} / {r.name}: {r.note}")
    if extra:
        print(extra)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"title": title, "machine": machine(), "command": cmd,
                       "rows": [{**dataclasses.asdict(r), "met": r.met} for r in rows]},
                      f, indent=2)


def _argv_of(args) -> list[str]:
    """The arguments as they were given (sys.argv when run as a script, else rebuilt)."""
    given = getattr(args, "_argv", None)
    return list(sys.argv[1:] if given is None else given)


def add_only(parser, choices, what: str) -> None:
    """``--only a,b``: run a subset of ``choices`` (all by default)."""
    parser.add_argument("--only", default=",".join(choices),
                        help=f"comma-separated {what} among {tuple(choices)}")


def parse_only(parser, value: str, choices, what: str) -> list[str]:
    """The selected names, in the order given; unknown or empty -> parser error naming them."""
    picked = [s.strip() for s in value.split(",") if s.strip()]
    unknown = sorted(set(picked) - set(choices))
    if not picked or unknown:
        parser.error(f"unknown or no {what} in --only: {unknown}; valid: {list(choices)}. "
                     f"Received: only={value!r}")
    return picked


# ---------------------------------------------------------------------- without TensorFlow
def device_info() -> dict:
    """Backend, versions and the device that runs the Keras arms, without needing TensorFlow.

    ``device`` is ``"cpu"`` or e.g. ``"gpu (NVIDIA H200)"``: on the JAX backend from
    ``jax.devices()``, on TensorFlow from its physical devices, on torch from
    ``torch.cuda``. torch's own CUDA device (``torch_cuda_device``) is reported too when torch
    is installed (the reference arm of bench_gpu.py).
    """
    import importlib.util

    import keras

    backend = keras.backend.backend()
    info = {"backend": backend, "keras": keras.__version__,
            "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "python": platform.python_version()}
    device = "cpu"
    if backend == "jax":
        import jax

        devices = jax.devices()
        info["jax"] = jax.__version__
        info["jax_devices"] = [str(d) for d in devices]
        if devices[0].platform != "cpu":
            device = f"{devices[0].platform} ({getattr(devices[0], 'device_kind', '?')})"
    elif backend == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            device = f"gpu ({len(gpus)}x)"
    if importlib.util.find_spec("torch") is not None:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["torch_cuda_device"] = torch.cuda.get_device_name(0)
            if backend == "torch":
                device = f"gpu ({info['torch_cuda_device']})"
    info["device"] = device
    return info
