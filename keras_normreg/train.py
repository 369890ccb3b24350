"""Training from a resolved recipe (see :mod:`keras_normreg.config`).

recipe -> strategy -> data pipelines + zoo model (norm / regularization / constraint knobs) +
optimizer and learning-rate schedule -> ``model.fit`` (run state, TerminateOnNaN, TensorBoard)
-> test metrics -> ``saved_models/<name>/`` with ``model.keras``, ``card.json`` and the
resolved ``recipe.toml`` (:mod:`keras_normreg.saving`).

Faults: one run at a time per run directory and per saved entry (:class:`keras_normreg._locks.
FileLock`, held for the whole of :func:`train`); the destination is checked writable before the
first epoch; the run state (:mod:`keras_normreg.runstate`), keyed by a fingerprint of the
recipe, is written atomically after every epoch and a rerun resumes it exactly (weights,
optimizer, random-generator states, and the data stream from the epoch it stopped at), or
refuses it when the recipe changed (:class:`RunStateError`).

:func:`prepare_data` (streams, steps, replica checks) and :func:`build_and_compile` (model,
optimizer, compile) are the one data-and-compile path, shared with the tuner's trials
(:class:`keras_normreg.tuning.hypermodel.NormRegHyperModel`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import tempfile
import types

import keras
import numpy as np

from keras_normreg import config as nr_config
from keras_normreg import constraints as nr_constraints
from keras_normreg import data as nr_data
from keras_normreg import distribute, runstate, zoo
from keras_normreg import optimizers as nr_optimizers
from keras_normreg import regularizers as nr_regularizers
from keras_normreg._locks import FileLock
from keras_normreg.data.numpy_arrays import EMBEDDED
from keras_normreg.data.streams import ArrayEpochs
from keras_normreg.runstate import RunStateError
from keras_normreg.saving import (
    DestinationError,
    check_destination,
    entry_lock,
    evaluate_model,
    evaluation_batches,
    file_sha256,
    save_entry,
)

__all__ = [
    "EntrySaveError",
    "NaNLossError",
    "RunStateError",
    "TrainResult",
    "build_and_compile",
    "build_model",
    "build_optimizer",
    "build_schedule",
    "check_paths",
    "evaluate_model",
    "file_sha256",
    "prepare_data",
    "save_entry",
    "train",
]


class TrainResult(dict):
    """Metrics and artefacts of a run: ``model``, ``history`` (every epoch, earlier parts of a
    resumed run included), ``test_accuracy``, ``test_loss``, ``train_seconds`` (all parts),
    ``resumed_at_epoch``, ``config``, ``run_dir`` (and ``path`` when saved)."""

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
        # the kind's entry of the regularizer table, made with the factors it takes
        factors = nr_regularizers.FACTORS[reg["kind"]]
        spec = {"class_name": reg["kind"], "config": {f: reg[f] for f in factors}}
        spec["targets"] = tuple(reg["targets"])
        spec["skip_scale_invariant"] = "auto" if reg["skip_scale_invariant"] else False
        regularization = spec
    constraint = nr_constraints.from_value(m["constraint"], m["constraint_value"])
    overrides = dict(m["overrides"])
    if m["dropout"]:
        overrides.setdefault("dropout", m["dropout"])
    # token datasets (modular arithmetic) tell their vocabulary to the models that embed ids
    vocab = getattr(info, "vocab_size", None)
    if vocab is not None and "vocab_size" in zoo.get_spec(m["arch"]).options:
        overrides.setdefault("vocab_size", vocab)
    return zoo.create(m["arch"], num_classes=num_classes or info.num_classes,
                      input_shape=input_shape or info.input_shape, norm=m["norm"],
                      regularization=regularization, constraint=constraint,
                      classifier_activation=m["classifier_activation"], **overrides)


class NaNLossError(RuntimeError):
    """Training produced a NaN/inf loss."""


class EntrySaveError(DestinationError):
    """Training finished but the saved entry could not be written (a
    :class:`keras_normreg.saving.DestinationError`: full or read-only disk...); the trained
    state is kept in the run directory and rerunning the same command saves it without
    training again."""


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
    """The process that writes (run state, saved entry): process 0 of a JAX cluster
    (:func:`keras_normreg.distribute.is_chief_process`), TF_CONFIG's chief (or worker 0)."""
    if not distribute.is_chief_process():
        return False
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    task = json.loads(raw).get("task", {})
    kind, index = task.get("type", "worker"), task.get("index", 0)
    cluster = json.loads(raw).get("cluster", {})
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)


def train(cfg: dict, *, callbacks=(), run_dir: str | None = None, save: bool = True,
          command: str | None = None, resume: str = "auto") -> TrainResult:
    """Train the model of a resolved recipe, evaluate it and (``save``) write the saved model.

    ``run_dir`` (default ``runs/<name>``) holds the run state
    (:mod:`keras_normreg.runstate`) and the TensorBoard logs. ``resume``:

    * ``"auto"``: resume the unfinished run of the same recipe found in ``run_dir`` (after a
      crash or kill; it continues from the last finished epoch and ends with the weights an
      uninterrupted run would have), start a new run if there is none, and raise
      :class:`RunStateError` if ``run_dir`` holds a run of another recipe (the message names
      the keys that differ);
    * ``"resume"``: require a matching state to resume;
    * ``"fresh"``: discard any state in ``run_dir`` and start over.

    Before anything runs, :func:`check_paths` refuses a name or a folder that would make a
    wrong path. The chief holds ``<run_dir>/.run.lock`` (and, when saving, ``<output_dir>/<name>/
    .entry.lock``) for the whole call: a second run of the same run directory or entry gets
    :class:`keras_normreg._locks.LockError` at once. Before any epoch the destination is
    checked writable (:class:`keras_normreg.saving.DestinationError`). The saved entry is
    ``<output_dir>/<name>/model.keras`` with ``card.json`` (whole history, total training
    time, ``resumed_at_epoch``) and the resolved ``recipe.toml`` beside it (written by the
    chief only). The run state is removed once the entry is written (or, without saving, once
    the run is evaluated); if writing the entry fails (:class:`EntrySaveError`) it is kept, and
    rerunning the same command evaluates and saves without training again. A run that
    diverges (:class:`NaNLossError`) discards its state.
    """
    if resume not in runstate.RESUME_MODES:
        raise ValueError(f"Argument `resume` must be one of {list(runstate.RESUME_MODES)}. "
                         f"Received: resume={resume!r}")
    check_paths(cfg, run_dir)
    t = cfg["train"]
    strategy = distribute.resolve(t["strategy"])
    previous_policy = keras.mixed_precision.global_policy().name
    if t["mixed_precision"]:
        keras.mixed_precision.set_global_policy(_policy_for_mixed_precision())
    try:
        if _uses_tf_data():
            return _train(cfg, strategy, callbacks, run_dir, save, command, resume)
        # keras.distribution must hold while the model is built AND while it trains
        with strategy.scope():
            return _train(cfg, strategy, callbacks, run_dir, save, command, resume)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def check_paths(cfg: dict, run_dir: str | None = None) -> None:
    """Refuse, before anything runs, the names and folders of a recipe that would become
    wrong paths (a recipe resolved by :mod:`keras_normreg.config` has passed these already; a
    dict built by hand may not have): ``name`` must be an entry name (one folder name,
    :data:`keras_normreg.config.NAME_RULE`); ``data.data_dir`` and ``run_dir`` folders
    (:func:`keras_normreg.config.folder_problem`: no file in the way), ``train.output_dir`` a
    usable path (:func:`keras_normreg.config.path_problem`; whether it can be written is
    :func:`keras_normreg.saving.check_destination`'s). ConfigError naming the key or
    argument."""
    nr_config.check_name(cfg["name"])
    # the output folder's writability (a file in the way included) is check_destination's
    for key, path, check in (
            ("train.output_dir", cfg["train"]["output_dir"], nr_config.path_problem),
            ("data.data_dir", cfg["data"].get("data_dir"), nr_config.folder_problem),
            ("run_dir", run_dir, nr_config.folder_problem)):
        problem = None if path is None else check(path)
        if problem:
            what = "Argument `run_dir`" if key == "run_dir" else f"Config key '{key}'"
            raise nr_config.ConfigError(f"{what} {problem}. Received: {key}={path!r}")


def prepare_data(cfg: dict, strategy=None, *, start_epoch: int = 0) -> types.SimpleNamespace:
    """The training and validation streams of a resolved recipe, ready for ``model.fit``.

    Returns a namespace with ``train`` and ``val`` (None without ``data.validation_split``):
    endless streams of epochs (:func:`keras_normreg.data.pipelines.load_epochs`; epoch ``e``
    shuffled/augmented from ``(train.seed, e)``), split over the replicas of ``strategy`` by
    :func:`keras_normreg.distribute.distribute_batches` (unchanged for one replica or
    ``strategy=None``); ``steps`` and ``val_steps`` per epoch
    (:func:`keras_normreg.distribute.steps_per_epoch`) and ``num_examples`` of the training
    split. ``data.batch_size`` is the global batch: with R replicas it must be a multiple of R,
    and each split must keep at least one batch. ``start_epoch`` = k starts the training
    stream at epoch k (a run resumed after k epochs sees the batches of an uninterrupted run).
    """
    if not _uses_tf_data():
        return _prepare_arrays(cfg, strategy, start_epoch=start_epoch)
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
        seed=t["seed"], download=d["download"], autotune=d["autotune"], start_epoch=start_epoch)
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


def _prepare_arrays(cfg: dict, strategy=None, *, start_epoch: int = 0) -> types.SimpleNamespace:
    """:func:`prepare_data` on the JAX and PyTorch backends: the embedded sets as NumPy arrays
    (:func:`keras_normreg.data.arrays`) in :class:`~keras_normreg.data.streams.ArrayEpochs`
    streams, epoch ``e`` ordered from ``(train.seed, e)``. Under JAX data parallelism the
    global batch (and any partial last batch kept) is a multiple of the devices; with several
    JAX processes each one builds the same global batches and feeds its rows of each
    (:class:`keras_normreg.distribute.ProcessShard`)."""
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
    train_ds = ArrayEpochs(x, y, b, shuffle=True, seed=t["seed"], multiple_of=devices,
                           start_epoch=start_epoch)
    val_ds = val_steps = None
    if d["validation_split"]:
        xv, yv = nr_data.arrays(d["dataset"], d["validation_split"])
        val_ds = ArrayEpochs(xv, yv, b, shuffle=False, multiple_of=devices)
        val_steps = len(val_ds)
    if len(train_ds) < 1 or val_steps == 0:
        raise ValueError(f"The training or validation split has fewer examples than the "
                         f"{devices} devices. Received: data.train_split="
                         f"{d['train_split']!r}, data.validation_split={d['validation_split']!r}")
    if getattr(strategy, "num_processes", 1) > 1:
        train_ds = distribute.ProcessShard(train_ds, strategy)
        val_ds = None if val_ds is None else distribute.ProcessShard(val_ds, strategy)
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
    ``mixed_float16`` policy) and ``compile`` with the sparse cross-entropy (on logits, or on
    probabilities when ``model.classifier_activation`` is set: ``from_logits`` follows it), accuracy
    and ``train.jit_compile`` (``"auto"``, the default, is Keras' own rule: XLA on JAX and on
    TensorFlow with an accelerator, not on CPU-only TensorFlow, where it measured ~1.7x slower,
    nor on PyTorch; ``false`` runs JAX op by op, several times slower).
    """
    t = cfg["train"]
    keras.utils.set_random_seed(t["seed"])
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, steps_per_epoch, model)
    if t["mixed_precision"] and keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    from_logits = model.classifier_activation is None  # a ZooModel: what its head outputs
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                  metrics=["accuracy"], jit_compile=t["jit_compile"])
    return model


class _StateWriter(runstate.StateWriter):
    """:class:`keras_normreg.runstate.StateWriter` writing in
    :func:`keras_normreg.distribute.chief_writes` (process 0 of several JAX processes writes
    alone)."""

    def __init__(self, *args, strategy=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.strategy = strategy

    def save(self) -> None:
        with distribute.chief_writes(self.strategy):
            super().save()


def _train(cfg, strategy, callbacks, run_dir, save, command, resume):
    t = cfg["train"]
    out_dir = os.path.join(t["output_dir"], cfg["name"])
    chief = _is_chief()
    if run_dir is None:
        run_dir = (os.path.join("runs", cfg["name"]) if chief
                   else tempfile.mkdtemp(prefix="knr-run-"))
    save = save and chief
    with contextlib.ExitStack() as held:
        state = None
        if chief:
            if save:  # an unwritable destination is an error now, not after training
                check_destination(out_dir)
            held.enter_context(FileLock(os.path.join(run_dir, ".run.lock"),
                                        f"training run {run_dir}"))
            if save:  # save_entry takes the same lock again (re-entrant in one process)
                held.enter_context(entry_lock(out_dir))
            state = runstate.open_state(run_dir, cfg, resume, verbose=t["verbose"])
        return _run(cfg, strategy, callbacks, run_dir, out_dir, save, command, state, chief)


def _run(cfg, strategy, callbacks, run_dir, out_dir, save, command, state, chief):
    t = cfg["train"]
    epochs = t["epochs"]
    start_epoch = int(state["epochs_done"]) if state else 0
    if getattr(strategy, "num_processes", 1) > 1:
        # every JAX process must take the same steps; only process 0 reads the run state
        if distribute.broadcast_from_chief(start_epoch):
            raise RunStateError(
                f"{cfg['name']!r} has an unfinished run state (process 0's {run_dir}); "
                f"resuming a run across JAX processes is not supported: pass --fresh "
                f"(resume=\"fresh\") in every process to start over.")
    if state and t["verbose"]:
        print(f"resuming {cfg['name']} from epoch {start_epoch} of {epochs} ({run_dir})")
    # tf.data seeds combine with TensorFlow's global seed when the pipelines are built.
    keras.utils.set_random_seed(t["seed"])
    data = prepare_data(cfg, strategy, start_epoch=start_epoch)
    d = cfg["data"]
    test_ds = evaluation_batches(d["dataset"], d["test_split"], d["batch_size"],
                           data_dir=d["data_dir"], download=d["download"],
                           autotune=d["autotune"])
    steps = data.steps
    with strategy.scope():
        model = build_and_compile(cfg, steps)
        if state:
            runstate.restore(model, run_dir, state)
    nan_guard = _TerminateOnNaN()
    writer = _StateWriter(run_dir, cfg, state, write=chief,
                          skip=lambda: nan_guard.where is not None, strategy=strategy)
    cbs = [nan_guard, writer, *_tensorboard_callbacks(run_dir), *callbacks]
    epochs_seen = []
    if start_epoch < epochs:  # a state with every epoch done only evaluates and saves
        history = model.fit(data.train, epochs=epochs, initial_epoch=start_epoch,
                            steps_per_epoch=steps, validation_data=data.val,
                            validation_steps=data.val_steps, callbacks=cbs,
                            verbose=t["verbose"], shuffle=False)
        epochs_seen = list(history.epoch)
    seconds = writer.elapsed()
    if nan_guard.where is not None:
        batch, loss = nan_guard.where
        discarded = ""
        if chief:
            runstate.discard(run_dir)
            discarded = (f" The run state in {run_dir} was discarded: a diverged run is not "
                         f"worth resuming.")
        epoch = epochs_seen[-1] + 1 if epochs_seen else start_epoch + 1
        raise NaNLossError(
            f"Training of {cfg['name']!r} stopped: the loss became {loss} at batch {batch} of "
            f"epoch {epoch}. Lower optimizer.learning_rate "
            f"(now {cfg['optimizer']['learning_rate']}), add warmup (schedule.warmup_epochs), "
            f"or use a normalization (model.norm).{discarded}")
    metrics = evaluate_model(model, test_ds)
    result = TrainResult(model=model, history=writer.history, train_seconds=seconds,
                         config=cfg, run_dir=run_dir, resumed_at_epoch=writer.resumed_at_epoch,
                         **metrics)
    if save:
        try:
            with distribute.chief_writes(strategy):
                result["path"] = save_entry(
                    model, cfg, metrics, seconds, strategy, out_dir, command,
                    history=writer.history, resumed_at_epoch=writer.resumed_at_epoch)
        except (DestinationError, OSError) as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise EntrySaveError(
                f"Training of {cfg['name']!r} finished but the saved entry {out_dir} could not "
                f"be written ({type(e).__name__}: {first}). The trained state is kept in "
                f"{run_dir}: rerunning the same command evaluates it and saves the entry "
                f"without training again.") from e
        except Exception as e:  # not the disk's fault: the state is kept all the same
            e.add_note(f"The trained state is kept in {run_dir}; rerunning the same command "
                       f"evaluates it and saves the entry without training again.")
            raise
    if chief:
        runstate.discard(run_dir)
    return result
