"""Peak memory of one training step on TensorFlow, JAX and PyTorch (bench_backends.py --memory).

The number compared between an arm and its plain twin is the step's *working memory*: what one
``train_on_batch`` step needs on top of the state that lives between steps (weights, optimizer
slots, the fixed batch). Each backend gets the most exact counter it has:

* **JAX** (:func:`jax_train_step`): the compiler's own numbers. The step is
  ``model.train_step(state, (x, y, None))`` jitted with ``donate_argnums=0`` exactly as Keras'
  JAX trainer jits it for ``fit`` / ``train_on_batch`` (``make_train_function``), lowered for
  the model's current state (``[v.value for v in model.trainable_variables]``, the
  non-trainable, optimizer and metrics variables) and compiled; ``memory_analysis()`` gives
  ``temp`` (the step's scratch buffers: activations kept for the backward pass, gradients,
  optimizer temporaries) and ``total = argument + output - alias + temp`` (the state and batch
  going in, the new state coming out, minus what the donated input buffers hold: the most the
  step holds at once). Exact for the compiled program, independent of machine load; it is
  XLA's buffer assignment, not a measurement, so allocator fragmentation is not in it. Checked
  on ``Dense(1024)`` at batch 256 with SGD(momentum): temp 5.0 MiB = the 4 MiB kernel gradient
  + one 1 MiB activation-sized buffer; argument 10.0 MiB = kernel + momentum + x + y.
* **TensorFlow** (:func:`tf_step_peak`, in a fresh process per arm, :func:`run_child`):
  TensorFlow's own allocator counter, ``tf.config.experimental.reset_memory_stats`` /
  ``get_memory_info("CPU:0")`` (``GPU:0`` on a GPU): peak bytes allocated during ``steps``
  steps minus the bytes allocated before them. The counter counts the allocator's chunks,
  which can be larger than the tensors (a free chunk less than twice a request is handed out
  whole), so it depends on the allocator's history: two identical models measured one after
  the other in one process read 36 and 40 MiB (the ``sgd`` baseline, graph mode), hence one
  fresh process per arm, where three runs of it read 36.0-37.0 MiB; with XLA the reading is
  the same in every run. Read graph-mode ratios within about 0.95-1.05 as equal. On
  CPU it needs the oneDNN allocator (TensorFlow's default on x86 Linux); with
  ``TF_ENABLE_ONEDNN_OPTS=0`` the CPU allocator keeps no statistics and the row says "n/a".
  It counts the tensors TensorFlow allocates (graph mode and XLA clusters alike) of 256 KiB
  and more: smaller ones come from the oneDNN allocator's small-block pool, which keeps no
  statistics (so the ``--quick`` shapes read 0); not oneDNN's internal scratch pads nor Python
  objects. Checked on ``Dense(1024)``, batch 256, SGD(momentum): 6.0 MiB with XLA (kernel
  gradient 4 + activation and its gradient 1 + 1), 9.0 MiB without (one more kernel-sized
  temporary); on ``Dense(4096)``: 72 MiB with XLA, 136 without (64 MiB gradient).
* **PyTorch on CPU** (:func:`rss_step_peak`, run in a fresh process per arm by
  :func:`run_child`): torch keeps no allocator statistics on CPU, so the growth of the
  process' resident set is measured: after two warm-up steps the gradients kept between steps
  are dropped (``model.zero_grad(set_to_none=True)``, the trainer does the same at the start
  of the next step; this puts them into the step like on the other two backends), the kernel's
  high-water mark is reset (``"5"`` written to ``/proc/self/clear_refs``, Linux >= 4.0) and
  ``VmRSS`` read; after ``steps`` steps ``VmHWM - VmRSS(before)`` is the peak growth. glibc
  malloc would otherwise keep freed blocks under its *dynamic* mmap threshold in its heap and
  reuse them, so that a warmed-up step shows (almost) no growth (3.0 MiB instead of 6 on the
  ``Dense(1024)`` check): the child process is started with ``MALLOC_MMAP_THRESHOLD_=65536``
  (:data:`MALLOC_ENV`), which fixes the threshold, so every block of 64 KiB or more is mapped
  on allocation and unmapped (returned to the kernel) when freed, and each step's big buffers
  appear in the high-water mark. Checked on ``Dense(1024)`` / ``Dense(4096)`` at batch 256:
  5.9 / 72.0 MiB, the same buffers as XLA's count above. Limits: blocks under 64 KiB and
  larger requests that glibc serves from free chunks already in its heap are not seen (an
  underestimate of at most the heap's free space); the number has page (4 KiB) granularity;
  Linux folds its per-CPU RSS counters in batches of max(32, 2·CPUs) pages, so each of the
  two reads may be off by up to a batch per CPU (0.5 MiB in all on 2 CPUs); other allocations
  meanwhile (Python objects, thread stacks) add a few hundred KiB; Linux only. On a CUDA
  device torch's own counter (``torch.cuda.max_memory_allocated``) is used instead.

The GPU paths (TensorFlow's ``GPU:0`` counter, torch's CUDA counter, XLA on a GPU) follow the
same definitions but have not been checked against hand counts like the CPU ones above.

NormMonitor arms (every call is 10 train steps, one monitored): the monitor runs outside the
compiled step. On JAX the compiled step is the plain one (ratio 1) and the note gives the
float32 copies of the tracked weights that the monitor keeps between a snapshot and the
measured step; on TensorFlow those copies are ``tf.Variable``s made once at
``on_train_begin`` (state, not step memory) and the counter sees the measurement's
temporaries; on torch the copies are made at the step before each measured one and are in the
resident-set peak, like anything the monitor keeps until its epoch-end flush.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
import warnings

MIB = 2**20
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
MARKER = "MEMORY_JSON "  # prefix of the result line a child process prints


class Unavailable(Exception):
    """No meaningful counter on this backend / device; the message says why."""


@dataclasses.dataclass
class MemoryRow:
    """One arm against its baseline: ``measure`` names the counter; bytes None = n/a."""

    group: str
    name: str
    baseline: str
    measure: str
    base_bytes: float | None
    arm_bytes: float | None
    note: str = ""

    @property
    def ratio(self) -> float:
        if self.base_bytes is None or self.arm_bytes is None or self.base_bytes <= 0:
            return float("nan")
        return self.arm_bytes / self.base_bytes


# ---------------------------------------------------------------------- JAX
def jax_compiled(fn, *args, donate_argnums=()) -> dict:
    """XLA's memory analysis of ``jax.jit(fn)`` compiled for ``args``: bytes of ``temp``,
    ``argument``, ``output``, ``alias`` and ``total = argument + output - alias + temp``."""
    import jax

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "donated buffers were not usable"
        compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        raise Unavailable("this JAX runtime gives no memory analysis")
    out = {"temp": stats.temp_size_in_bytes, "argument": stats.argument_size_in_bytes,
           "output": stats.output_size_in_bytes, "alias": stats.alias_size_in_bytes}
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def jax_train_step(model, x, y) -> dict:
    """:func:`jax_compiled` of the train step Keras' JAX trainer runs for ``model`` (compiled
    and built, i.e. after one ``train_on_batch``) on the batch ``(x, y)``."""
    state = tuple([v.value for v in variables] for variables in (
        model.trainable_variables, model.non_trainable_variables, model.optimizer.variables,
        model.metrics_variables))
    return jax_compiled(model.train_step, state, (x, y, None), donate_argnums=0)


# ---------------------------------------------------------------------- TensorFlow
def tf_step_peak(step, steps: int) -> int:
    """Peak bytes TensorFlow's allocator held during ``steps`` calls of ``step`` beyond what it
    held before them."""
    import tensorflow as tf

    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    try:
        tf.config.experimental.reset_memory_stats(device)
        before = tf.config.experimental.get_memory_info(device)["current"]
    except ValueError as e:
        raise Unavailable(f"TensorFlow keeps no allocator statistics for {device} ({e}; on CPU "
                          "they need the oneDNN allocator, TF_ENABLE_ONEDNN_OPTS=1)") from None
    for _ in range(steps):
        step()
    return tf.config.experimental.get_memory_info(device)["peak"] - before


# ---------------------------------------------------------------------- resident set (Linux)
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise Unavailable(f"/proc/self/status has no {field}")


def reset_high_water_mark() -> None:
    """Set the process' VmHWM to its current VmRSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        raise Unavailable(f"cannot reset the resident-set high-water mark ({e})") from None


def rss_step_peak(step, steps: int, release=None) -> int:
    """Growth of this process' resident set at its peak during ``steps`` calls of ``step``, in
    bytes. ``release`` (optional) runs first to drop what the previous step left behind."""
    if release is not None:
        release()
    gc.collect()
    reset_high_water_mark()
    before = _status_kib("VmRSS")
    for _ in range(steps):
        step()
    return (_status_kib("VmHWM") - before) * 1024


def torch_step_peak(model, step, steps: int) -> tuple[int, str]:
    """(bytes, measure) of a torch-backend step: CUDA allocator peak on a GPU, else
    :func:`rss_step_peak` after dropping the gradients the trainer keeps between steps."""
    import torch

    def release():
        model.zero_grad(set_to_none=True)

    if torch.cuda.is_available():
        release()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, "CUDA allocator peak"
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]:
        raise Unavailable("the resident-set peak needs a process started with "
                          f"{MALLOC_ENV} (run_child does it)")
    return rss_step_peak(step, steps, release), "RSS peak growth"


def run_child(argv, timeout: float = 900) -> dict:
    """Run ``[python, *argv]`` with :data:`MALLOC_ENV` and return the JSON it printed after
    :data:`MARKER` (``{"bytes": int | None, "measure": str, "note": str}``)."""
    env = {**os.environ, **MALLOC_ENV}
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env,
                         timeout=timeout)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    raise RuntimeError(f"memory child failed (exit {out.returncode}): {out.stderr[-2000:]}")


def report_child(nbytes, measure: str, note: str = "") -> None:
    """Print a child's result line (read back by :func:`run_child`)."""
    print(MARKER + json.dumps({"bytes": nbytes, "measure": measure, "note": note}), flush=True)


# ---------------------------------------------------------------------- per arm
METHODS = {
    "jax": "XLA temp = the compiled train step's scratch buffers, XLA total = argument + "
           "output - donated alias + temp (jax.jit(model.train_step).lower(...).compile()"
           ".memory_analysis())",
    "tensorflow": "TF allocator peak = peak bytes of TensorFlow's allocator during the steps "
                  "minus the bytes held before them (tf.config.experimental.get_memory_info), "
                  "one fresh process per arm",
    "torch": "RSS peak growth = VmHWM - VmRSS over the steps, one fresh process per arm with "
             "MALLOC_MMAP_THRESHOLD_=65536, gradients dropped before (CUDA: allocator peak)",
}


def _monitor_note(model, step) -> str:
    monitor = getattr(step, "monitor", None)
    if monitor is None:
        return ""
    copies = sum(4 * int(v.numpy().size) for v in model.variables if v.path in monitor.tracked)
    return (f"monitor outside the compiled step; its copies of the {len(monitor.tracked)} "
            f"tracked weights: {copies / MIB:.2f} MiB")


def measure_arm(backend, model, step, x, y, child_argv):
    """``[(measure, bytes or None, note), ...]`` for one arm (built, warmed up) on ``backend``:
    JAX in this process, TensorFlow and torch by ``child_argv`` in a fresh process
    (:func:`run_child`, which runs :func:`measure_child` there)."""
    if backend == "jax":
        try:
            found = jax_train_step(model, x, y)
        except Unavailable as e:
            return [("XLA temp", None, str(e)), ("XLA total", None, str(e))]
        note = _monitor_note(model, step)
        return [("XLA temp", found["temp"], note), ("XLA total", found["total"], note)]
    found = run_child(child_argv)
    return [(found["measure"], found["bytes"], found["note"])]


def measure_child(backend, model, step, steps) -> None:
    """In a child process: measure one arm (built, warmed up) and print the result line."""
    measure = "TF allocator peak" if backend == "tensorflow" else "RSS peak growth"
    try:
        if backend == "tensorflow":
            report_child(tf_step_peak(step, steps), measure)
        else:
            report_child(*torch_step_peak(model, step, steps))
    except Unavailable as e:
        report_child(None, measure, str(e))


def rows(group, baseline, per_arm) -> list[MemoryRow]:
    """MemoryRows of every arm of ``per_arm`` (``{arm: measure_arm(...)}``) but the baseline."""
    out = []
    for arm, found in per_arm.items():
        if arm == baseline:
            continue
        for (measure, base, base_note), (_, value, note) in zip(per_arm[baseline], found,
                                                                strict=True):
            out.append(MemoryRow(group, arm, baseline, measure, base, value,
                                 "; ".join(n for n in (base_note, note) if n)))
    return out


# ---------------------------------------------------------------------- table
def _mib(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / MIB:.3f}"


def format_table(rows) -> str:
    lines = ["| benchmark | arm vs baseline | measure | baseline MiB | arm MiB | ratio | note |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        ratio = "n/a" if r.ratio != r.ratio else f"{r.ratio:.3f}"
        lines.append(f"| {r.group} | {r.name} vs {r.baseline} | {r.measure} "
                     f"| {_mib(r.base_bytes)} | {_mib(r.arm_bytes)} | {ratio} | {r.note} |")
    return "\n".join(lines)
