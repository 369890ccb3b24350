"""Distribution: tf.distribute strategies on TensorFlow, Keras' DataParallel on JAX.

:func:`resolve` turns a strategy choice into what training runs under, per backend:

* TensorFlow: a ``tf.distribute`` strategy (:func:`resolve_strategy`, below).
* JAX: a :class:`KerasDistribution` around ``keras.distribution.DataParallel`` over the local
  devices (``"auto"``/``"mirrored"`` with more than one device; ``"cpu:N"`` needs exactly N
  CPU devices, which JAX makes only when ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
  is set before it starts; ``"multiworker"`` needs :func:`initialize_processes` to have been
  called in every process, then spans every process's devices; ``"tpu"`` needs JAX on TPUs).
  Keras shards each global batch over the devices and keeps the variables replicated, so
  batch-normalization statistics inside the compiled step are those of the whole global batch.
  With several JAX processes (:func:`initialize_processes`), every process builds the same
  global batches and feeds only its rows (:meth:`KerasDistribution.local_rows`, used by
  :class:`ProcessShard`); Keras assembles them into one global array per batch
  (``jax.make_array_from_process_local_data``).
* PyTorch: one device (:class:`KerasDistribution` with none); other choices are refused.

The rest of this docstring is about ``tf.distribute``.

``resolve_strategy(spec)`` with ``spec`` one of :data:`STRATEGIES` (the one list of strategy
choices: recipes, study specs and the CLI validate with :func:`check_strategy`)

* ``"auto"``: TPU if a TPU cluster resolver finds one (tried when ``TPU_NAME`` or
  ``COLAB_TPU_ADDR`` is set or ``/dev/accel0`` exists, so CPU/GPU hosts pay nothing); MultiWorkerMirrored if ``TF_CONFIG`` names
  more than one task; Mirrored if more than one GPU is visible; else the default strategy.
* ``"default"``: ``tf.distribute.get_strategy()`` (no distribution).
* ``"mirrored"``: ``MirroredStrategy`` over the visible GPUs (or the logical CPUs of ``cpu:N``).
* ``"multiworker"``: ``MultiWorkerMirroredStrategy`` (needs ``TF_CONFIG``).
* ``"tpu"``: ``TPUStrategy`` (fails clearly when no TPU is found).
* ``"cpu:N"``: split the CPU into N logical devices and mirror over them, so data-parallel code
  can be tested without accelerators. Must run before TensorFlow initializes its devices.

The global batch size is what the data pipeline produces. ``distribute_batches(strategy, ds)``
splits every global batch across the replicas into near-equal strided parts (replica ``r`` of
``R`` takes examples ``r, r + R, r + 2R, ...``), so a multi-replica step sees exactly the
examples of the single-device step, and a partial last batch of ``n`` examples is split
``ceil(n/R)`` / ``floor(n/R)``; a last batch with fewer than ``R`` examples is dropped
(:func:`steps_per_epoch` counts the kept batches).

``train`` uses it instead of letting Keras call ``strategy.experimental_distribute_dataset``.
That one (TF 2.21) rebatches into fixed per-replica batches of ``global / R`` filled in order,
then runs the AUTO auto-shard rewrite even for one worker: without a file reader in the
pipeline (numpy, generators) AUTO falls back to DATA sharding, which swaps in the legacy rebatch
(each batch split evenly, 29 -> 15 / 14); with a file reader (every tfds set) it stays FILE and
a last batch of 29 becomes 29 / 0. The empty replica batch then crashes oneDNN's CPU Conv2D (it
returns the input's shape for an empty batch: "input depth must be evenly divisible by filter
depth: 1 vs 8"), and without oneDNN that step gets half the single-device gradient.

Keras averages per-replica mean losses (each divided by ``R``), so on the one step per epoch
with an uneven split (15 / 14) the gradient is ``(g_15 + g_14) / 2`` instead of
``(15 g_15 + 14 g_14) / 29``; full batches are exact, and reported losses and metrics are exact
(weighted by the per-replica batch sizes). Keras' distributed ``fit`` also opens one extra
iterator over the data to build the model, which advances ``reshuffle_each_iteration`` shuffles;
``train`` therefore feeds :func:`keras_normreg.data.pipelines.load_epochs` streams, whose epochs
are seeded by their index.

TensorFlow is imported on first use (:func:`_tf`), so the table and :func:`check_strategy`
import without it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from typing import TYPE_CHECKING

import keras
import numpy as np

from keras_normreg._utils import check_number, received

if TYPE_CHECKING:  # annotations only; the module imports TensorFlow on first use (_tf)
    import tensorflow as tf

# MultiWorkerMirroredStrategy is made on first access (module __getattr__)
__all__ = [
    "KerasDistribution",
    "MultiWorkerMirroredStrategy",  # noqa: F822
    "PROCESS_ENV",
    "ProcessShard",
    "STRATEGIES",
    "STRATEGIES_HELP",
    "broadcast_from_chief",
    "check_strategy",
    "chief_writes",
    "configure_logical_cpus",
    "distribute_batches",
    "initialize_processes",
    "is_chief_process",
    "num_workers_in_tf_config",
    "resolve",
    "resolve_strategy",
    "steps_per_epoch",
]

#: The strategy choices (see the module docstring); ``"cpu:N"`` stands for ``cpu:1``, ``cpu:2``...
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu", "cpu:N")
STRATEGIES_HELP = " | ".join(STRATEGIES)


def check_strategy(value) -> str | None:
    """None when ``value`` is a strategy choice, else the error message (``"must be one of
    auto | default | ..."``, for a ``Config key '...' {message}`` error)."""
    if isinstance(value, str):
        if value in STRATEGIES and value != "cpu:N":
            return None
        if value.startswith("cpu:") and value[4:].isdigit() and int(value[4:]) >= 1:
            return None
    return f"must be one of {STRATEGIES_HELP}"


def _tf():
    """The ``tensorflow`` module, imported on first use (heavy; not needed by the table)."""
    import tensorflow as tf

    return tf


def configure_logical_cpus(n: int) -> list:
    """Split the (first) physical CPU into ``n`` logical devices; returns their names.

    Raises RuntimeError with advice when TensorFlow's devices are already initialized with a
    different number of logical CPUs.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"The number of logical CPUs must be a positive integer. {received('n', n)}")
    tf = _tf()
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is None or len(current) != n:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * n)
        except RuntimeError as e:
            have = len(tf.config.list_logical_devices("CPU"))
            if have != n:
                raise RuntimeError(
                    f"Cannot split the CPU into {n} logical devices: TensorFlow is already "
                    f"initialized with {have}. Select the strategy before any other TensorFlow "
                    f"work (e.g. first thing in the script / CLI). Received: strategy='cpu:{n}'"
                ) from e
    return [d.name for d in tf.config.list_logical_devices("CPU")][:n]


def num_workers_in_tf_config() -> int:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON. Received: TF_CONFIG={raw!r}") from e
    cluster = cfg.get("cluster", {})
    return sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))


@functools.cache
def _multiworker_class():
    tf = _tf()

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """``tf.distribute.MultiWorkerMirroredStrategy`` whose ``reduce`` works for Keras 3's
        ``fit``.

        Keras 3 (3.15) calls ``strategy.reduce`` in two ways that TensorFlow's multi-worker
        strategy rejects (keras-team/keras#20585, tensorflow/tensorflow#72388):

        * on the whole first ``(x, y)`` batch at once, to build the model: ``reduce`` takes a
          single value ("Attempt to convert a value (PerReplica ...) to a Tensor"); here a nest
          is reduced leaf by leaf;
        * on each step's scalar logs with ``axis=0`` ("Invalid reduction dimension 0 for input
          with 0 dimensions"); here a scalar is reduced across replicas only (``axis=None``), as
          Keras does for single-worker strategies.

        (Defined on first access, since it subclasses a TensorFlow class.)
        """

        def reduce(self, reduce_op, value, axis=None):
            if isinstance(value, (tuple, list, dict)):
                parent = super()
                return tf.nest.map_structure(lambda v: parent.reduce(reduce_op, v, axis), value)
            if axis is not None:
                local = self.experimental_local_results(value)
                if (local and getattr(local[0], "shape", None) is not None
                        and local[0].shape.rank == 0):
                    axis = None
            return super().reduce(reduce_op, value, axis)

    MultiWorkerMirroredStrategy.__qualname__ = "MultiWorkerMirroredStrategy"
    return MultiWorkerMirroredStrategy


def __getattr__(name):
    # ``MultiWorkerMirroredStrategy`` subclasses a TensorFlow class: made on first access.
    if name == "MultiWorkerMirroredStrategy":
        return _multiworker_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _find_tpu():
    tf = _tf()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return resolver
    except (ValueError, RuntimeError, tf.errors.NotFoundError, tf.errors.UnavailableError):
        return None


def resolve_strategy(spec: str = "auto") -> tf.distribute.Strategy:
    """Return the tf.distribute strategy for ``spec`` (see the module docstring)."""
    if not isinstance(spec, str):
        raise ValueError(f"Strategy must be one of {list(STRATEGIES)}. "
                         f"{received('strategy', spec)}")
    tf = _tf()
    if spec.startswith("cpu:"):
        n = spec[4:]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"Strategy 'cpu:N' needs N >= 1. {received('strategy', spec)}")
        devices = configure_logical_cpus(int(n))
        return tf.distribute.MirroredStrategy(devices)
    if spec == "default":
        return tf.distribute.get_strategy()
    if spec == "mirrored":
        return tf.distribute.MirroredStrategy()
    if spec == "multiworker":
        if num_workers_in_tf_config() < 1:
            raise ValueError("Strategy 'multiworker' needs TF_CONFIG naming the cluster and this "
                             "task. Received: TF_CONFIG=" + repr(os.environ.get("TF_CONFIG")))
        return _multiworker_class()()
    if spec == "tpu":
        resolver = _find_tpu()
        if resolver is None:
            raise RuntimeError("Strategy 'tpu' was requested but no TPU was found by "
                               "TPUClusterResolver. Use 'auto' to fall back to GPUs/CPU.")
        return tf.distribute.TPUStrategy(resolver)
    if spec == "auto":
        if (os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")
                or os.path.exists("/dev/accel0")):
            resolver = _find_tpu()
            if resolver is not None:
                return tf.distribute.TPUStrategy(resolver)
        if num_workers_in_tf_config() > 1:
            return _multiworker_class()()
        if len(tf.config.list_physical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    raise ValueError(f"Strategy must be one of {list(STRATEGIES)}. {received('strategy', spec)}")


class KerasDistribution:
    """What training runs under on the JAX and PyTorch backends (the counterpart of a
    ``tf.distribute`` strategy): ``scope()`` sets ``keras.distribution`` for model building and
    ``fit``; ``num_replicas_in_sync`` is the number of devices a global batch is split over
    (those of every process); ``num_processes`` the number of JAX processes they belong to, and
    ``local`` the positions ``(first, stop)`` of this process's devices among them."""

    def __init__(self, distribution=None, devices: int = 1, name: str = "none", *,
                 num_processes: int = 1, local: tuple[int, int] | None = None):
        self.distribution = distribution
        self.num_replicas_in_sync = devices
        self.name = name
        self.num_processes = num_processes
        self.local = (0, devices) if local is None else tuple(local)

    def scope(self):
        if self.distribution is None:
            return contextlib.nullcontext()
        return self.distribution.scope()

    def local_rows(self, n: int) -> slice:
        """The rows of a global batch of ``n`` examples that this process feeds: all of them
        with one process; else the block that lands on this process's devices (device ``i`` of
        ``D`` takes rows ``[i n/D, (i+1) n/D)``, as Keras' DataParallel lays a batch out), so
        ``n`` must be a multiple of ``D``."""
        devices = self.num_replicas_in_sync
        if self.num_processes == 1:
            return slice(0, n)
        if n % devices:
            raise ValueError(f"A global batch split over {devices} devices in "
                             f"{self.num_processes} processes must hold a multiple of "
                             f"{devices} examples. Received: n={n!r}")
        first, stop = self.local
        return slice(n // devices * first, n // devices * stop)

    def __repr__(self):
        extra = f", processes={self.num_processes}" if self.num_processes > 1 else ""
        return f"KerasDistribution({self.name}, devices={self.num_replicas_in_sync}{extra})"


class ProcessShard(keras.utils.PyDataset):
    """The rows this process feeds (:meth:`KerasDistribution.local_rows`) of every ``(x, y)``
    batch of ``stream``, a ``keras.utils.PyDataset`` of global batches that every process
    builds identically (same data, same seed); epoch ends are passed on to ``stream``."""

    def __init__(self, stream, distribution: KerasDistribution):
        super().__init__(workers=1, use_multiprocessing=False)
        if not isinstance(stream, keras.utils.PyDataset):
            raise ValueError(f"Argument `stream` must be a keras.utils.PyDataset of global "
                             f"batches. {received('stream', stream)}")
        self.stream = stream
        self.distribution = distribution

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, index: int):
        batch = self.stream[index]
        rows = self.distribution.local_rows(len(batch[0]))
        return tuple(part[rows] for part in batch)

    def on_epoch_begin(self):
        self.stream.on_epoch_begin()

    def on_epoch_end(self):
        self.stream.on_epoch_end()


#: Environment variables :func:`initialize_processes` reads for an argument left None: the
#: names ``keras.distribution.initialize`` reads. (JAX itself reads ``JAX_COORDINATOR_ADDRESS``
#: and detects Slurm, Open MPI and Cloud TPU clusters for what is still missing.)
PROCESS_ENV = {"coordinator": "KERAS_DISTRIBUTION_JOB_ADDRESSES",
               "num_processes": "KERAS_DISTRIBUTION_NUM_PROCESSES",
               "process_id": "KERAS_DISTRIBUTION_PROCESS_ID"}


def _from_env(name: str, value):
    """``value``, else the environment variable of ``name`` (an int for the counts), else None."""
    if value is not None:
        return value
    var = PROCESS_ENV[name]
    raw = os.environ.get(var, "").strip()
    if not raw:
        return None
    if name == "coordinator":
        return raw.split(",")[0].strip()  # Keras' list of job addresses: the first coordinates
    if not raw.isdigit():
        raise ValueError(f"{var} must be a non-negative integer. Received: {var}={raw!r}")
    return int(raw)


def initialize_processes(coordinator: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None, *, timeout: int = 300) -> tuple[int, int]:
    """Join this process to a cluster of JAX processes (``jax.distributed.initialize``), so
    that training (strategy ``"auto"`` or ``"multiworker"``) spans the devices of every
    process; returns ``(process_id, num_processes)``.

    Call it in every process, with the same ``coordinator`` (``"host:port"`` of process 0,
    which listens there) and ``num_processes``, and each process's own ``process_id``
    (``0 .. num_processes - 1``), before any JAX computation (the ``keras-normreg train``
    flags ``--coordinator``, ``--num-processes``, ``--process-id`` do). An argument left None
    is read from :data:`PROCESS_ENV`; JAX fills in what is still missing from
    ``JAX_COORDINATOR_ADDRESS`` or a cluster it detects (Slurm, Open MPI, Cloud TPU).
    ``timeout`` seconds bound the wait for the other processes. Collectives between CPU
    devices of different processes use JAX's ``jax_cpu_collectives_implementation`` (``gloo``
    by default in JAX 0.10; set to ``gloo`` here where an older JAX leaves it ``none``).
    Calling it again in a process that already joined returns its place in the cluster.
    """
    if keras.backend.backend() != "jax":
        raise ValueError(
            f"Joining processes with jax.distributed is for the JAX backend (on TensorFlow set "
            f"TF_CONFIG and use strategy 'multiworker'). "
            f"Received: backend={keras.backend.backend()!r}")
    coordinator = _from_env("coordinator", coordinator)
    num_processes = _from_env("num_processes", num_processes)
    process_id = _from_env("process_id", process_id)
    check_number("num_processes", num_processes, low=1, integer=True, allow_none=True)
    check_number("process_id", process_id, low=0, integer=True, allow_none=True)
    check_number("timeout", timeout, low=1, integer=True)
    if process_id is not None and num_processes is not None and process_id >= num_processes:
        raise ValueError(f"Argument `process_id` must be < num_processes={num_processes}. "
                         f"{received('process_id', process_id)}")
    if coordinator is not None:
        host, _, port = coordinator.rpartition(":") if isinstance(coordinator, str) else ("",) * 3
        if not host or not port.isdigit():
            raise ValueError(f"Argument `coordinator` must be 'host:port' (process 0's "
                             f"address). {received('coordinator', coordinator)}")
    import jax

    if jax.distributed.is_initialized():
        here = (jax.process_index(), jax.process_count())
        if process_id not in (None, here[0]) or num_processes not in (None, here[1]):
            raise ValueError(f"This process already joined a JAX cluster as process {here[0]} "
                             f"of {here[1]}. Received: process_id={process_id!r}, "
                             f"num_processes={num_processes!r}")
        return here
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout)
    except ValueError as e:
        raise ValueError(
            f"Joining JAX processes needs the coordinator's 'host:port', the number of "
            f"processes and this process's id (--coordinator, --num-processes, --process-id, "
            f"or {', '.join(PROCESS_ENV.values())}) where JAX detects no cluster ({e}). "
            f"Received: coordinator={coordinator!r}, num_processes={num_processes!r}, "
            f"process_id={process_id!r}") from e
    except RuntimeError as e:
        if "before any JAX calls" not in str(e):
            raise
        raise RuntimeError(
            f"Joining JAX processes must come before any JAX computation in this process "
            f"(first thing in the script; the CLI flags do it before training). "
            f"Received: coordinator={coordinator!r}, process_id={process_id!r}") from e
    return jax.process_index(), jax.process_count()


def is_chief_process() -> bool:
    """False only in a JAX process other than process 0 of a :func:`initialize_processes`
    cluster (the one that writes the run state and the saved entry). TensorFlow's workers are
    told apart by ``TF_CONFIG``."""
    if keras.backend.backend() != "jax":
        return True
    import jax

    return not jax.distributed.is_initialized() or jax.process_index() == 0


def broadcast_from_chief(value: int) -> int:
    """Process 0's ``value`` in every JAX process of a :func:`initialize_processes` cluster
    (every process must call it); ``value`` itself in a single process."""
    if keras.backend.backend() != "jax":
        return value
    import jax

    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.asarray(multihost_utils.broadcast_one_to_all(np.int32(value))))


@contextlib.contextmanager
def _without_distribution():
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


def chief_writes(strategy):
    """The context for what process 0 alone does inside a run's scope (writing the run state
    and the saved entry). With several JAX processes it leaves the distribution: Keras' saving
    makes variables, and placing one on devices of several processes waits for all of them
    (``jax.device_put`` checks that every process passes the same value), which the others,
    not writing, never do. Elsewhere it changes nothing."""
    if getattr(strategy, "num_processes", 1) > 1:
        return _without_distribution()
    return contextlib.nullcontext()


def _jax_distribution(spec: str) -> KerasDistribution:
    import jax

    if spec == "default":
        return KerasDistribution()
    if spec.startswith("cpu:"):
        n = int(spec[4:])
        devices = jax.devices("cpu")
        if len(devices) != n:
            raise ValueError(
                f"On the JAX backend, {n} CPU devices exist only when "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={n} is set before JAX starts "
                f"(this process has {len(devices)}). Received: strategy={spec!r}")
    elif spec == "multiworker":
        if jax.process_count() < 2:
            raise ValueError(
                "Strategy 'multiworker' on the JAX backend spans the processes of a "
                "jax.distributed cluster: join it first in every process "
                "(keras_normreg.distribute.initialize_processes, or the train flags "
                "--coordinator, --num-processes, --process-id). "
                f"Received: strategy={spec!r} with jax.process_count()=1")
        devices = jax.devices()
    elif spec == "tpu":
        devices = jax.devices()
        if devices[0].platform != "tpu":
            raise RuntimeError(f"Strategy 'tpu' was requested but JAX runs on "
                               f"{devices[0].platform!r}. Use 'auto'. Received: strategy='tpu'")
    else:  # auto, mirrored
        devices = jax.devices()
    if len(devices) < 2:
        return KerasDistribution()
    processes = len({d.process_index for d in devices})
    mine = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
    if processes > 1 and (not mine or mine != list(range(mine[0], mine[-1] + 1))):
        raise RuntimeError(
            f"This process's devices must be a contiguous block of the {len(devices)} devices "
            f"a batch is split over (JAX lists them by process). Received: positions={mine}")
    local = (mine[0], mine[-1] + 1) if processes > 1 else None
    # several processes: each feeds its own rows already (ProcessShard), Keras must not shard
    distribution = keras.distribution.DataParallel(devices=devices,
                                                   auto_shard_dataset=processes == 1)
    return KerasDistribution(distribution, len(devices), "DataParallel",
                             num_processes=processes, local=local)


def resolve(spec: str = "auto"):
    """What training runs under for ``spec`` on the current Keras backend (module docstring):
    a ``tf.distribute.Strategy`` on TensorFlow, a :class:`KerasDistribution` on JAX/PyTorch."""
    message = check_strategy(spec)
    if message:
        raise ValueError(f"Strategy {message}. {received('strategy', spec)}")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return resolve_strategy(spec)
    if backend == "jax":
        return _jax_distribution(spec)
    if spec not in ("auto", "default"):
        raise ValueError(f"On the {backend} backend keras_normreg trains on one device: "
                         f"use strategy 'auto' or 'default' (tf.distribute needs TensorFlow, "
                         f"data parallelism JAX). Received: strategy={spec!r}")
    return KerasDistribution()


def _first_tensor(element):
    return _tf().nest.flatten(element)[0]


def steps_per_epoch(num_examples: int, batch_size: int, replicas: int = 1) -> int:
    """Batches per epoch that :func:`distribute_batches` yields for ``num_examples`` examples:
    ``ceil(num_examples / batch_size)``, less the last batch when it has fewer than
    ``replicas`` examples (it is dropped)."""
    steps = -(-num_examples // batch_size)
    if replicas > 1 and 0 < num_examples % batch_size < replicas:
        steps -= 1
    return steps


def distribute_batches(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """Distribute a dataset of *global* batches evenly over the replicas of ``strategy``.

    Every input pipeline (one per worker) iterates the whole ``dataset`` (so all workers must
    build it identically: same data, same shuffle/augmentation seeds) and keeps, for each of its
    local replicas ``r``, the strided slice ``batch[r::R]`` of every global batch, with
    ``R = num_replicas_in_sync``. Global batches with fewer than ``R`` examples (only possible
    as the last batch of an epoch) are dropped, since some replica would get no example.

    Returns ``dataset`` unchanged for a single replica, else a distributed dataset for
    ``model.fit`` / ``strategy.run``. Its cardinality is unknown (Keras learns the number of
    steps during the first epoch).
    """
    tf = _tf()
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(f"Argument `dataset` must be a tf.data.Dataset of batches. "
                         f"{received('dataset', dataset)}")
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return dataset

    def dataset_fn(ctx: tf.distribute.InputContext):
        pipelines = ctx.num_input_pipelines
        if replicas % pipelines:
            raise ValueError(f"{replicas} replicas cannot be spread evenly over {pipelines} "
                             f"input pipelines. Received: num_input_pipelines={pipelines}")
        local = replicas // pipelines
        first = ctx.input_pipeline_id * local
        ds = dataset.filter(lambda *b: tf.shape(_first_tensor(b))[0] >= replicas)

        def take(element, r):
            return tf.nest.map_structure(lambda t: t[r::replicas], element)

        if local == 1:
            ds = ds.map(lambda *b: take(b if len(b) > 1 else b[0], first))
        else:
            ds = ds.flat_map(lambda *b: tf.data.Dataset.range(first, first + local).map(
                lambda r, b=b: take(b if len(b) > 1 else b[0], r)))
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = \
            tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)
