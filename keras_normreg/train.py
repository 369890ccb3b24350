"""Training from a resolved recipe (see :mod:`keras_normreg.config`).

recipe -> strategy -> data pipelines + zoo model (norm / regularization / constraint knobs) +
optimizer and learning-rate schedule -> ``model.fit`` (BackupAndRestore, TerminateOnNaN,
TensorBoard) -> test metrics -> ``saved_models/<name>/`` with ``model.keras``, ``card.json`` and the
resolved ``recipe.toml`` (:mod:`keras_normreg.saving`).

:func:`prepare_data` (streams, steps, replica checks) and :func:`build_and_compile` (model,
optimizer, compile) are the one data-and-compile path, shared with the tuner's trials
(:class:`keras_normreg.tuning.hypermodel.NormRegHyperModel`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import time
import types

import keras
import numpy as np

from keras_normreg import constraints as nr_constraints
from keras_normreg import data as nr_data
from keras_normreg import distribute, zoo
from keras_normreg import optimizers as nr_optimizers
from keras_normreg.data.numpy_arrays import EMBEDDED
from keras_normreg.data.streams import ArrayEpochs
from keras_normreg.saving import evaluate_model, evaluation_batches, file_sha256, save_entry

__all__ = [
    "NaNLossError",
    "TrainResult",
    "build_and_compile",
    "build_model",
    "build_optimizer",
    "build_schedule",
    "evaluate_model",
    "file_sha256",
    "prepare_data",
    "save_entry",
    "train",
]


class TrainResult(dict):
    """Metrics and artefacts of a run: ``model``, ``history``, ``test_accuracy``, ``test_loss``,
    ``train_seconds``, ``config``."""

    __getattr__ = dict.__getitem__


def build_schedule(cfg: dict, steps_per_epoch: int):
    """The learning-rate schedule of ``cfg['schedule']`` over ``cfg['train']['epochs']`` epochs.

    * ``constant``: lr.
    * ``cosine``: lr * (f + (1 - f) * (1 + cos(pi * t / T)) / 2), f = ``final_fraction``.
    * ``step``: lr * factor^(number of ``boundaries`` (in epochs) passed).

    With ``warmup_epochs`` > 0 the lr rises linearly from lr/warmup_steps to lr first.
    """
    lr = cfg["optimizer"]["learning_rate"]
    sched = cfg["schedule"]
    total = max(1, cfg["train"]["epochs"] * steps_per_epoch)
    warmup = int(round(sched["warmup_epochs"] * steps_per_epoch))
    kind = sched["kind"]
    if kind == "constant" and warmup == 0:
        return lr
    if kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=lr if warmup == 0 else lr / max(warmup, 1),
            decay_steps=max(1, total - warmup), alpha=sched["final_fraction"],
            warmup_target=lr if warmup else None, warmup_steps=warmup)
    if kind == "step":
        # Keras keeps values[i] while step <= boundaries[i]: the drop at epoch b starts at
        # step b * steps_per_epoch, so the boundary is one step earlier.
        bounds = sorted(int(round(b * steps_per_epoch)) - 1 for b in sched["boundaries"])
        values = [lr * sched["factor"] ** i for i in range(len(bounds) + 1)]
        if not bounds:
            return lr
        return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values)
    # constant with warmup
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / max(warmup, 1), decay_steps=1, alpha=1.0,
        warmup_target=lr, warmup_steps=warmup)


def build_optimizer(cfg: dict, steps_per_epoch: int, model: keras.Model | None = None):
    """The optimizer of ``cfg['optimizer']`` with its schedule.

    ``sgd``/``adam``/``rmsprop``/``lion`` are plain Keras optimizers (``weight_decay`` must be 0:
    use the decoupled family for decay); ``sgdw``/``adamw`` are
    :class:`keras_normreg.optimizers.DecoupledWeightDecay` around SGD/Adam with additive
    exclusion rules; ``sgdp``/``adamp`` project out the radial update of scale-invariant weights.
    Each name is built by its entry of :data:`keras_normreg.optimizers.RECIPES`.
    """
    lr = build_schedule(cfg, steps_per_epoch)
    return nr_optimizers.from_recipe(cfg["optimizer"], lr, model)


def build_model(cfg: dict, input_shape=None, num_classes=None) -> keras.Model:
    """The zoo model of ``cfg['model']`` with the regularization and constraint knobs applied."""
    m = cfg["model"]
    info = nr_data.info(cfg["data"]["dataset"], data_dir=cfg["data"]["data_dir"])
    reg = cfg["regularization"]
    regularization = None
    if reg["kind"] != "none":
        spec = {"l1": {"l1": reg["l1"]}, "l2": {"l2": reg["l2"]},
                "elastic_net": {"l1": reg["l1"], "l2": reg["l2"]}}[reg["kind"]]
        spec["targets"] = tuple(reg["targets"])
        spec["skip_scale_invariant"] = "auto" if reg["skip_scale_invariant"] else False
        regularization = spec
    constraint = nr_constraints.from_value(m["constraint"], m["constraint_value"])
    overrides = dict(m["overrides"])
    if m["dropout"]:
        overrides.setdefault("dropout", m["dropout"])
    return zoo.create(m["arch"], num_classes=num_classes or info.num_classes,
                      input_shape=input_shape or info.input_shape, norm=m["norm"],
                      regularization=regularization, constraint=constraint, **overrides)


class NaNLossError(RuntimeError):
    """Training produced a NaN/inf loss."""


class _TerminateOnNaN(keras.callbacks.Callback):
    """Stop at the first non-finite batch loss and say what to try."""

    def __init__(self):
        super().__init__()
        self.where = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.where = (batch, float(loss))
            self.model.stop_training = True


def _policy_for_mixed_precision() -> str:
    """mixed_float16 (with loss scaling) on TensorFlow GPUs, as before; mixed_bfloat16
    elsewhere (TPUs, CPUs, and the JAX/PyTorch backends, whose GPUs of interest run bf16)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return "mixed_float16"
    return "mixed_bfloat16"


def _uses_tf_data() -> bool:
    """TensorFlow trains on tf.data pipelines; JAX and PyTorch on NumPy batches."""
    return keras.backend.backend() == "tensorflow"


def _is_chief() -> bool:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    task = json.loads(raw).get("task", {})
    kind, index = task.get("type", "worker"), task.get("index", 0)
    cluster = json.loads(raw).get("cluster", {})
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)


def train(cfg: dict, *, callbacks=(), run_dir: str | None = None, save: bool = True,
          command: str | None = None) -> TrainResult:
    """Train the model of a resolved recipe, evaluate it and (``save``) write the saved model.

    ``run_dir`` holds the BackupAndRestore state and TensorBoard logs (default
    ``runs/<name>``); rerunning the same recipe after a crash or kill resumes from
    the last finished epoch. The saved entry is ``<output_dir>/<name>/model.keras`` with
    ``card.json`` and the resolved ``recipe.toml`` beside it (written by the chief only).
    """
    t = cfg["train"]
    strategy = distribute.resolve(t["strategy"])
    previous_policy = keras.mixed_precision.global_policy().name
    if t["mixed_precision"]:
        keras.mixed_precision.set_global_policy(_policy_for_mixed_precision())
    try:
        if _uses_tf_data():
            return _train(cfg, strategy, callbacks, run_dir, save, command)
        # keras.distribution must hold while the model is built AND while it trains
        with strategy.scope():
            return _train(cfg, strategy, callbacks, run_dir, save, command)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def prepare_data(cfg: dict, strategy=None) -> types.SimpleNamespace:
    """The training and validation streams of a resolved recipe, ready for ``model.fit``.

    Returns a namespace with ``train`` and ``val`` (None without ``data.validation_split``):
    endless streams of epochs (:func:`keras_normreg.data.pipelines.load_epochs`; epoch ``e``
    shuffled/augmented from ``(train.seed, e)``), split over the replicas of ``strategy`` by
    :func:`keras_normreg.distribute.distribute_batches` (unchanged for one replica or
    ``strategy=None``); ``steps`` and ``val_steps`` per epoch
    (:func:`keras_normreg.distribute.steps_per_epoch`) and ``num_examples`` of the training
    split. ``data.batch_size`` is the global batch: with R replicas it must be a multiple of R,
    and each split must keep at least one batch.
    """
    if not _uses_tf_data():
        return _prepare_arrays(cfg, strategy)
    t, d = cfg["train"], cfg["data"]
    b = d["batch_size"]
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    if replicas > 1 and b % replicas:
        # Keras' symbolic build averages the first per-replica batches: they must be equal.
        raise ValueError(
            f"data.batch_size is the global batch and must be a multiple of the {replicas} "
            f"replicas of the strategy ({type(strategy).__name__}). "
            f"Received: data.batch_size={b!r}")
    # Endless streams of epochs: every iterator yields the same batches, however many
    # iterators Keras opens (distributed fit opens one more to build the model), so one device
    # and N replicas see the same global batches; and fit runs a known number of steps (no
    # end-of-data detection across workers).
    train_ds, num_examples = nr_data.load_epochs(
        d["dataset"], d["train_split"], b, data_dir=d["data_dir"], augment=d["augment"],
        seed=t["seed"], download=d["download"], autotune=d["autotune"])
    val_ds, val_steps = None, None
    if d["validation_split"]:
        val_ds, num_val = nr_data.load_epochs(d["dataset"], d["validation_split"], b,
                                      data_dir=d["data_dir"], augment=False, shuffle=False,
                                      download=d["download"], autotune=d["autotune"])
        val_steps = distribute.steps_per_epoch(num_val, b, replicas)
    steps = distribute.steps_per_epoch(num_examples, b, replicas)
    if steps < 1 or val_steps == 0:
        raise ValueError(f"The training or validation split has fewer examples than the "
                         f"{replicas} replicas. Received: data.train_split="
                         f"{d['train_split']!r}, data.validation_split={d['validation_split']!r}")
    # Every worker builds the same global batches and keeps its replicas' equal shares (see
    # keras_normreg.distribute); a last batch smaller than the replica count is dropped.
    if strategy is not None:
        train_ds = distribute.distribute_batches(strategy, train_ds)
        val_ds = None if val_ds is None else distribute.distribute_batches(strategy, val_ds)
    return types.SimpleNamespace(train=train_ds, val=val_ds, steps=steps, val_steps=val_steps,
                                 num_examples=num_examples)


def _prepare_arrays(cfg: dict, strategy=None) -> types.SimpleNamespace:
    """:func:`prepare_data` on the JAX and PyTorch backends: the embedded sets as NumPy arrays
    (:func:`keras_normreg.data.arrays`) in :class:`~keras_normreg.data.streams.ArrayEpochs`
    streams, epoch ``e`` ordered from ``(train.seed, e)``. Under JAX data parallelism the
    global batch (and any partial last batch kept) is a multiple of the devices."""
    t, d = cfg["train"], cfg["data"]
    b = d["batch_size"]
    devices = 1 if strategy is None else strategy.num_replicas_in_sync
    backend = keras.backend.backend()
    if d["augment"]:
        raise ValueError(
            f"On the {backend} backend training reads the embedded sets as NumPy arrays, without "
            f"augmentation (the augmenting pipelines are tf.data: use the tensorflow backend). "
            f"Received: data.augment={d['augment']!r}")
    if not nr_data.info(d["dataset"], data_dir=d["data_dir"]).embedded:
        raise ValueError(
            f"On the {backend} backend training reads the embedded datasets "
            f"({', '.join(EMBEDDED)}) as NumPy arrays; tensorflow-datasets sets need the "
            f"tensorflow backend. Received: data.dataset={d['dataset']!r}")
    x, y = nr_data.arrays(d["dataset"], d["train_split"])
    train_ds = ArrayEpochs(x, y, b, shuffle=True, seed=t["seed"], multiple_of=devices)
    val_ds = val_steps = None
    if d["validation_split"]:
        xv, yv = nr_data.arrays(d["dataset"], d["validation_split"])
        val_ds = ArrayEpochs(xv, yv, b, shuffle=False, multiple_of=devices)
        val_steps = len(val_ds)
    if len(train_ds) < 1 or val_steps == 0:
        raise ValueError(f"The training or validation split has fewer examples than the "
                         f"{devices} devices. Received: data.train_split="
                         f"{d['train_split']!r}, data.validation_split={d['validation_split']!r}")
    return types.SimpleNamespace(train=train_ds, val=val_ds, steps=len(train_ds),
                                 val_steps=val_steps, num_examples=len(x))


def _tensorboard_callbacks(run_dir: str) -> list:
    """TensorBoard logs where TensorFlow (its summary writer) is installed, on any backend."""
    if importlib.util.find_spec("tensorflow") is None:
        return []
    return [keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False,
                                        profile_batch=0)]


def build_and_compile(cfg: dict, steps_per_epoch: int) -> keras.Model:
    """The compiled model of a resolved recipe (call it inside the strategy's scope).

    Seeds Keras with ``train.seed`` right before building (preparing a tfds set the first time
    consumes random state, and the initial weights must not depend on whether the data were
    ready), then :func:`build_model`, :func:`build_optimizer` over ``steps_per_epoch``
    (wrapped in a ``LossScaleOptimizer`` under ``train.mixed_precision`` with the
    ``mixed_float16`` policy) and ``compile`` with the sparse cross-entropy on logits, accuracy
    and ``train.jit_compile``.
    """
    t = cfg["train"]
    keras.utils.set_random_seed(t["seed"])
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, steps_per_epoch, model)
    if t["mixed_precision"] and keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=t["jit_compile"])
    return model


def _train(cfg, strategy, callbacks, run_dir, save, command):
    t = cfg["train"]
    out_dir = os.path.join(t["output_dir"], cfg["name"])
    chief = _is_chief()
    if run_dir is None:
        run_dir = (os.path.join("runs", cfg["name"]) if chief
                   else tempfile.mkdtemp(prefix="knr-run-"))
    # tf.data seeds combine with TensorFlow's global seed when the pipelines are built.
    keras.utils.set_random_seed(t["seed"])
    data = prepare_data(cfg, strategy)
    d = cfg["data"]
    test_ds = evaluation_batches(d["dataset"], d["test_split"], d["batch_size"],
                           data_dir=d["data_dir"], download=d["download"],
                           autotune=d["autotune"])
    steps = data.steps
    with strategy.scope():
        model = build_and_compile(cfg, steps)
    nan_guard = _TerminateOnNaN()
    cbs = [keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup")), nan_guard,
           *_tensorboard_callbacks(run_dir), *callbacks]
    start = time.perf_counter()
    history = model.fit(data.train, epochs=t["epochs"], steps_per_epoch=steps,
                        validation_data=data.val, validation_steps=data.val_steps, callbacks=cbs,
                        verbose=t["verbose"], shuffle=False)
    seconds = time.perf_counter() - start
    if nan_guard.where is not None:
        batch, loss = nan_guard.where
        raise NaNLossError(
            f"Training of {cfg['name']!r} stopped: the loss became {loss} at batch {batch} of "
            f"epoch {len(history.epoch)}. Lower optimizer.learning_rate "
            f"(now {cfg['optimizer']['learning_rate']}), add warmup (schedule.warmup_epochs), "
            f"or use a normalization (model.norm).")
    metrics = evaluate_model(model, test_ds)
    result = TrainResult(model=model, history=history.history, train_seconds=seconds,
                         config=cfg, run_dir=run_dir, **metrics)
    if save and chief:
        result["path"] = save_entry(model, cfg, metrics, seconds, strategy, out_dir, command,
                                    history=history.history)
    return result
