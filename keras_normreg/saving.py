"""Saved entries: ``<dir>/<name>/`` with ``model.keras``, ``card.json`` and ``recipe.toml``.

* write: :func:`save_entry` (the model, the resolved recipe and the card in one go, an optional
  ``tuning`` block included in the card's single write), atomically and under the entry's lock
  (:func:`entry_lock`); :func:`check_destination` before a training;
* find: :func:`saved_models_dirs`, :func:`list_saved`, :func:`find_entry`;
* read and verify: :func:`load_card`, :func:`load_saved` (sha256 of the model file checked
  first, then ``keras.saving.load_model(safe_mode=True)``);
* exact evaluation: :func:`evaluate_model` (accuracy as correct/total over the whole split,
  mean cross-entropy) and :func:`evaluate_saved` (re-evaluate an entry and compare with its card).

The card holds the resolved recipe, the test metrics, the sha256 of ``model.keras``, the
versions, the training time and the hardware. This module sits below ``train``, ``evaluate``,
``zoo`` and ``tuning``: it imports none of them.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import numbers
import os
import platform
import secrets
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import keras
import numpy as np

from keras_normreg import _atomic
from keras_normreg import config as nr_config
from keras_normreg import data as nr_data
from keras_normreg._locks import FileLock
from keras_normreg._utils import received
from keras_normreg._version import __version__
from keras_normreg.data.streams import array_batches

__all__ = [
    "CARD_FILE",
    "CardError",
    "ChecksumError",
    "DestinationError",
    "ENTRY_LOCK_FILE",
    "ENTRY_LOCK_TIMEOUT",
    "EntryLoadError",
    "LOSS_TOLERANCE",
    "evaluation_batches",
    "MODEL_FILE",
    "MetricMismatchError",
    "PACKAGED_ENTRIES",
    "RECIPE_FILE",
    "REQUIRED_CARD_KEYS",
    "evaluate_model",
    "check_destination",
    "entry_lock",
    "evaluate_saved",
    "file_sha256",
    "find_entry",
    "list_saved",
    "load_card",
    "load_saved",
    "save_entry",
    "saved_models_dirs",
]

CARD_FILE = "card.json"
MODEL_FILE = "model.keras"
RECIPE_FILE = "recipe.toml"
REQUIRED_CARD_KEYS = ("name", "dataset", "test_split", "batch_size", "metrics", "sha256",
                      "model_file", "recipe")
LOSS_TOLERANCE = 1e-4
ENTRY_LOCK_FILE = ".entry.lock"
ENTRY_LOCK_TIMEOUT = 300.0  # seconds save_entry waits for another writer of the same entry
_TMP_PREFIX = ".tmp-"  # temporaries: .tmp-<pid>-<token>-<final name>, in the entry folder
#: Folder of the shipped entries inside the installed package: the wheel carries the
#: repository's top-level saved_models/ there (pyproject.toml, [tool.setuptools.package-dir]).
PACKAGED_ENTRIES = Path(__file__).resolve().parent / "saved_models"


class CardError(ValueError):
    """card.json is missing, unreadable or incomplete."""


class ChecksumError(ValueError):
    """model.keras does not match the sha256 recorded in its card."""


class MetricMismatchError(RuntimeError):
    """Re-evaluation does not reproduce the card's metrics."""


class DestinationError(ValueError):
    """The folder an entry is to be written into cannot be written."""


class EntryLoadError(ValueError):
    """model.keras matches its card but cannot be loaded (damaged archive, or refused by
    ``safe_mode``); the message is one line."""


def check_destination(out_dir: str | os.PathLike, *, argument: str = "train.output_dir",
                      what: str = "the saved entry", where: str | None = None) -> None:
    """Raise :class:`DestinationError` now if ``what`` cannot be written into ``out_dir``.

    Creates the folder (and its parents) and a temporary file in it, then removes the file;
    called before training starts (and before a study's first trial), so a read-only or
    missing-permission destination costs nothing. ``argument`` names the recipe key or option
    the folder came from; ``where`` says where the user sets it (default: the recipe key, or
    ``--set`` on the command line).
    """
    out_dir = os.fspath(out_dir)
    if where is None:
        where = f'{argument}, or --set {argument}="..." on the command line'
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-check-"):
            pass
    except OSError as e:
        raise DestinationError(
            f"Cannot write {what} into {out_dir!r}: {e.strerror or e}. Choose a writable "
            f"folder ({where}). Received: {argument}={out_dir!r}") from None


# -- checksums and metrics --------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _to_numpy(value):
    """A NumPy array from a NumPy array or a backend tensor (tf.data yields TF tensors)."""
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def evaluation_batches(dataset: str, split: str, batch_size: int, *, data_dir=None,
                 download: bool = False, autotune: bool = False):
    """The evaluation batches of a split on the current backend, in order: the tf.data pipeline
    (:func:`keras_normreg.data.load`) on TensorFlow; on JAX and PyTorch the embedded sets'
    NumPy arrays (:func:`keras_normreg.data.arrays`, the same examples in the same order and
    batches) and, for tensorflow-datasets sets, the tf.data pipeline where TensorFlow is
    installed (a clear ImportError where it is not)."""
    if keras.backend.backend() != "tensorflow" and nr_data.info(dataset).embedded:
        return array_batches(*nr_data.arrays(dataset, split), batch_size)
    return nr_data.load(dataset, split, batch_size, data_dir=data_dir, download=download,
                        autotune=autotune)


def evaluate_model(model: keras.Model, dataset) -> dict:
    """Exact test metrics of a classifier over a dataset of ``(x, y)`` batches.

    ``test_accuracy = test_correct / test_examples`` counted over the whole split (argmax of the
    outputs against the integer labels) and ``test_loss`` the mean sparse cross-entropy per
    example, both computed in float32 whatever the model's dtype policy: softmax cross-entropy
    of the logits, or for a model whose ``classifier_activation`` is set (a zoo model with an
    output activation) Keras' cross-entropy of probabilities (``from_logits=False``: outputs
    divided by their sum, clipped to ``[eps, 1 - eps]``, ``eps = keras.config.epsilon()``).
    """
    correct = 0
    total = 0
    loss_sum = 0.0
    probabilities = getattr(model, "classifier_activation", None) is not None
    eps = np.float32(keras.config.epsilon())
    for x, y in dataset:
        outputs = keras.ops.convert_to_numpy(model(_to_numpy(x), training=False))
        outputs = outputs.astype(np.float32)
        y = _to_numpy(y).astype(np.int64).reshape(-1)
        correct += int(np.sum(np.argmax(outputs, -1) == y))
        total += int(y.shape[0])
        rows = np.arange(y.shape[0])
        if probabilities:
            p = outputs / np.sum(outputs, -1, keepdims=True, dtype=np.float32)
            losses = -np.log(np.clip(p[rows, y], eps, 1 - eps))
        else:
            # log-sum-exp in float32, shifted by the row maximum (as TensorFlow's kernel does)
            shifted = outputs - outputs.max(-1, keepdims=True)
            log_norm = np.log(np.sum(np.exp(shifted), -1, dtype=np.float32))
            losses = log_norm - shifted[rows, y]
        loss_sum += float(np.sum(losses, dtype=np.float64))
    if total == 0:
        raise ValueError(f"Argument `dataset` must yield at least one example to evaluate. "
                         f"{received('dataset', dataset)}")
    return {"test_accuracy": correct / total, "test_correct": correct, "test_examples": total,
            "test_loss": loss_sum / total}


# -- writing an entry -------------------------------------------------------------------------
def _accelerators() -> list[str]:
    """Names of the accelerators the current Keras backend sees (empty on a CPU-only machine)."""
    backend = keras.backend.backend()
    names = []
    with contextlib.suppress(Exception):
        if backend == "tensorflow":
            import tensorflow as tf

            for g in tf.config.list_physical_devices("GPU"):
                details = tf.config.experimental.get_device_details(g)
                names.append(details.get("device_name", g.name))
        elif backend == "jax":
            import jax

            names = [d.device_kind for d in jax.devices() if d.platform != "cpu"]
        elif backend == "torch":
            import torch

            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return names


def _versions() -> dict:
    """Versions of the packages that produced an entry: Keras, its backend, ours, Python."""
    out = {"keras": keras.__version__, "keras_normreg": __version__,
           "python": platform.python_version()}
    backend = keras.backend.backend()
    dist = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax",),
            "torch": ("torch",)}.get(backend, ())
    for name in dist:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[backend] = importlib.metadata.version(name)
            break
    return out


def _hardware(strategy, model=None) -> dict:
    replicas = getattr(strategy, "num_replicas_in_sync", 1) if strategy is not None else 1
    out = {"platform": platform.platform(), "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "gpus": _accelerators(),
           "backend": keras.backend.backend(),
           "strategy": type(strategy).__name__ if strategy is not None else "none",
           "replicas": replicas}
    jit = getattr(model, "jit_compile", None)  # what compile resolved "auto" to
    if isinstance(jit, bool):
        out["jit_compile"] = jit
    return out


def entry_lock(out_dir: str | os.PathLike, *, timeout: float = 0.0) -> FileLock:
    """The lock of the entry folder ``out_dir`` (``<out_dir>/.entry.lock``): one writer at a time.

    :func:`save_entry` takes it, waiting up to ``ENTRY_LOCK_TIMEOUT`` seconds for another
    writer. A training may hold it from start to end (``with entry_lock(out_dir): ...``) so that
    a second training into the same entry is refused at once; the lock is re-entrant within a
    process, so the ``save_entry`` inside takes it again without waiting. See
    :class:`keras_normreg._locks.FileLock`.
    """
    out_dir = os.fspath(out_dir)
    return FileLock(os.path.join(out_dir, ENTRY_LOCK_FILE), f"saved entry {out_dir}",
                    timeout=timeout)


def _check_resumed(resumed_at_epoch) -> list[int]:
    """``resumed_at_epoch`` as a list of ints; a sequence of non-negative ints, or ValueError."""
    bad = isinstance(resumed_at_epoch, (str, bytes, Mapping))
    values = []
    if not bad:
        try:
            values = list(resumed_at_epoch)
        except TypeError:
            bad = True
    bad = bad or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0
                     for v in values)
    if bad:
        raise ValueError(f"Argument `resumed_at_epoch` must be a sequence of non-negative "
                         f"integers (the epochs a training resumed at). "
                         f"{received('resumed_at_epoch', resumed_at_epoch)}")
    return [int(v) for v in values]


def _is_temporary(name: str) -> bool:
    """A file name :func:`save_entry` or :func:`check_destination` uses for a temporary."""
    return ((name.startswith(_TMP_PREFIX) and name.endswith((MODEL_FILE, RECIPE_FILE, CARD_FILE)))
            or name.startswith(".write-check-"))


def _remove_quietly(paths) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.remove(path)


def _destination_error(out_dir: str, error: OSError, argument: str, advice: str):
    where = f" ({error.filename})" if getattr(error, "filename", None) else ""
    return DestinationError(
        f"Cannot write the saved entry into {out_dir!r}: {error.strerror or error}{where}. "
        f"{advice} Received: {argument}={out_dir!r}")


def _check_out_dir(out_dir) -> str:
    """``out_dir`` as a string; :class:`DestinationError` naming it if it is not a usable path
    (empty, or with a NUL or control character: what ``os`` calls would refuse with a bare
    ValueError)."""
    if not isinstance(out_dir, (str, os.PathLike)):
        raise DestinationError(f"Argument `out_dir` must be a folder path. "
                               f"{received('out_dir', out_dir)}")
    out_dir = os.fspath(out_dir)
    if not out_dir or any(ord(c) < 32 or ord(c) == 127 for c in out_dir):
        raise DestinationError(f"Argument `out_dir` must be a non-empty folder path without "
                               f"NUL or control characters. {received('out_dir', out_dir)}")
    return out_dir


def save_entry(model, cfg, metrics, seconds, strategy, out_dir, command=None,
               history=None, *, tuning: Mapping | None = None,
               resumed_at_epoch: Sequence[int] = ()) -> str:
    """Write ``model.keras``, ``recipe.toml`` and ``card.json`` into ``out_dir``; returns it.

    The write is atomic and locked: under :func:`entry_lock` (waiting up to
    ``ENTRY_LOCK_TIMEOUT`` seconds for another writer of the same entry) the three files are
    written to temporaries in ``out_dir`` (``.tmp-<pid>-<token>-<name>``) and flushed to disk,
    the card's sha256 is taken from the temporary model file, then ``os.replace`` moves the
    model and the recipe into place and the card LAST, and the folder is synced. Temporaries
    left by a writer that crashed are removed on the next write. A reader therefore sees the
    previous entry or the new one, never a half-written file; a crash between the renames can
    leave the new model with the previous card, which :func:`load_saved` refuses
    (:class:`ChecksumError`) until the entry is written again. A SIGTERM during the write
    removes the temporaries and releases the lock before the process ends (by SIGTERM, as it
    would have: :func:`keras_normreg._atomic.sigterm_as_exception`); one that arrives during
    the renames waits for the last of them, so it never leaves that mixed state.

    Args:
        model: the trained model.
        cfg: its resolved recipe (written as ``recipe.toml`` and into the card).
        metrics: the test metrics of :func:`evaluate_model`.
        seconds: the training time.
        strategy: the ``tf.distribute.Strategy`` it trained under (recorded as hardware).
        out_dir: the entry folder (created).
        command: the command line that produced it (recorded in the card).
        history: ``History.history`` (per-epoch lists), recorded in the card.
        tuning: an extra ``tuning`` block for the card (a study's export); written in the
            card's one write.
        resumed_at_epoch: the epochs at which the training was resumed from a checkpoint
            (recorded in the card as ``resumed_at_epoch``; empty for a training in one go).

    Raises:
        ConfigError: ``cfg["name"]`` is not an entry name (:data:`keras_normreg.config.
            NAME_RULE`); nothing is written.
        DestinationError: ``out_dir`` cannot be written (read-only, full, not a folder, an
            empty path ...); the previous entry there is left as it was and the temporaries are
            removed.
        keras_normreg._locks.LockError: another process held the entry longer than
            ``ENTRY_LOCK_TIMEOUT``.
    """
    if tuning is not None and not isinstance(tuning, Mapping):
        raise ValueError(f"Argument `tuning` must be a dict (the card's tuning block) or None. "
                         f"{received('tuning', tuning)}")
    # JSON-checked before anything is written
    tuning = None if tuning is None else json.loads(json.dumps(dict(tuning)))
    resumed = _check_resumed(resumed_at_epoch)
    if not isinstance(cfg, Mapping) or "name" not in cfg:
        raise ValueError(f"Argument `cfg` must be a resolved recipe (a dict with a 'name'). "
                         f"{received('cfg', cfg)}")
    nr_config.check_name(cfg["name"])  # the card's name: what the entry is found by
    out_dir = _check_out_dir(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        # a SIGTERM (kill, a scheduler) while writing raises: the temporaries go, the lock is
        # released, then the process ends by SIGTERM as it would have
        with _atomic.sigterm_as_exception() as guard, \
                entry_lock(out_dir, timeout=ENTRY_LOCK_TIMEOUT):
            _remove_quietly(os.path.join(out_dir, n) for n in os.listdir(out_dir)
                            if _is_temporary(n))
            token = f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
            temp = {n: os.path.join(out_dir, token + n) for n in (MODEL_FILE, RECIPE_FILE,
                                                                  CARD_FILE)}
            try:
                _write_entry_files(temp, model, cfg, metrics, seconds, strategy, command,
                                   history, tuning, resumed)
                with guard.critical():  # the three renames: a SIGTERM waits until they are done
                    for name in (MODEL_FILE, RECIPE_FILE, CARD_FILE):  # the card last
                        os.replace(temp[name], os.path.join(out_dir, name))
            except BaseException:
                _remove_quietly(temp.values())
                raise
            _atomic.fsync_dir(out_dir)
    except OSError as e:
        raise _destination_error(
            out_dir, e, "out_dir", "The previous entry there (if any) is unchanged; free space "
            "or choose a writable folder (train.output_dir).") from e
    return out_dir


def _write_entry_files(temp, model, cfg, metrics, seconds, strategy, command, history, tuning,
                       resumed) -> None:
    """Write and flush the model, the recipe and the card to the temporary paths ``temp``."""
    model.save(temp[MODEL_FILE])
    _atomic.fsync_file(temp[MODEL_FILE])
    nr_config.dump(cfg, temp[RECIPE_FILE])
    _atomic.fsync_file(temp[RECIPE_FILE])
    card = {
        "name": cfg["name"],
        "description": cfg["description"],
        "dataset": cfg["data"]["dataset"],
        "test_split": cfg["data"]["test_split"],
        "batch_size": cfg["data"]["batch_size"],
        "metrics": metrics,
        "parameters": int(model.count_params()),
        "trainable_parameters": int(sum(int(np.prod(v.shape)) for v in model.trainable_weights)),
        "model_file": MODEL_FILE,
        "sha256": file_sha256(temp[MODEL_FILE]),
        "versions": _versions(),
        "backend": keras.backend.backend(),
        "training_seconds": round(seconds, 2),
        "epochs": cfg["train"]["epochs"],
        "history": {k: [float(v) for v in vals] for k, vals in (history or {}).items()},
        "hardware": _hardware(strategy, model),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command or f"keras-normreg train <recipe> (name={cfg['name']})",
        "recipe": json.loads(json.dumps(cfg)),
        "resumed_at_epoch": resumed,
    }
    if tuning is not None:
        card["tuning"] = tuning
    with open(temp[CARD_FILE], "w", encoding="utf-8") as f:
        json.dump(card, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


# -- finding and reading entries --------------------------------------------------------------
def saved_models_dirs() -> list[Path]:
    """Where entries are looked up by name, first match wins:

    1. ``$KERAS_NORMREG_SAVED_MODELS`` (when set);
    2. ``./saved_models`` (your own trainings, in the current folder);
    3. the repository's ``saved_models/`` in a source checkout (the folder holding the package
       also holds ``pyproject.toml``): the shipped entries, editable installs included;
    4. :data:`PACKAGED_ENTRIES`: the same shipped entries inside an installed wheel.

    Folders that do not exist are listed too (they hold nothing).
    """
    dirs = []
    env = os.environ.get("KERAS_NORMREG_SAVED_MODELS")
    if env:
        dirs.append(Path(env))
    dirs.append(Path.cwd() / "saved_models")
    checkout = PACKAGED_ENTRIES.parent.parent
    if (checkout / "pyproject.toml").is_file():
        dirs.append(checkout / "saved_models")
    dirs.append(PACKAGED_ENTRIES)
    unique = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def list_saved() -> list[str]:
    """Names of the entries (folders with a card.json whose name is an entry name,
    :data:`keras_normreg.config.NAME_RULE`) in :func:`saved_models_dirs`."""
    names = set()
    for d in saved_models_dirs():
        if d.is_dir():
            names.update(p.name for p in d.iterdir() if nr_config.name_problem(p.name) is None
                         and (p / CARD_FILE).is_file())
    return sorted(names)


def find_entry(name_or_path: str | os.PathLike) -> Path:
    """The entry folder for a path (``saved_models/x``) or a bare name (``x``, looked up in
    :func:`saved_models_dirs`). A bare name that is not an entry folder itself must be an
    entry name (:data:`keras_normreg.config.NAME_RULE`): ``..``, ``""`` or ``.x`` is refused
    (ConfigError naming ``name_or_path``) instead of resolving to a folder around the entries.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"Argument `name_or_path` must be an entry name or folder path. "
                         f"{received('name_or_path', name_or_path)}")
    text = os.fspath(name_or_path)
    if not text or "\0" in text:
        nr_config.check_name(text, "name_or_path", argument=True)
    p = Path(name_or_path)
    if (p / CARD_FILE).exists() or (p / MODEL_FILE).exists():
        return p
    if p.name == text:
        nr_config.check_name(text, "name_or_path", argument=True)
        for d in saved_models_dirs():
            if (d / p.name).is_dir():
                return d / p.name
    raise FileNotFoundError(
        f"No saved model entry at {str(name_or_path)!r} (a folder with card.json and "
        f"model.keras). Known entries: {list_saved()}, looked up by name in "
        f"{[str(d) for d in saved_models_dirs()]}. Received: path={str(name_or_path)!r}")


def load_card(entry: str | os.PathLike) -> dict:
    """The entry's card.json, checked for the keys verification needs (:class:`CardError`)."""
    entry = Path(entry)
    path = entry / CARD_FILE
    if not path.is_file():
        raise CardError(f"{path}: card.json is missing; the entry cannot be verified.")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CardError(f"{path}: card.json is not valid JSON ({e}).") from None
    if not isinstance(card, dict):
        raise CardError(f"{path}: card.json must hold a JSON object. Received: {type(card).__name__}")
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise CardError(f"{path}: card.json lacks required keys {missing}.")
    metrics = card["metrics"]
    if not isinstance(metrics, dict) or not {"test_accuracy", "test_loss"} <= set(metrics):
        raise CardError(f"{path}: card.json 'metrics' must have test_accuracy and test_loss. "
                        f"Received: metrics={metrics!r}")
    return card


def _verify_checksum(entry: Path, card: dict) -> Path:
    model_path = entry / card["model_file"]
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: the model file named by card.json is missing.")
    digest = file_sha256(model_path)
    if digest != card["sha256"]:
        raise ChecksumError(
            f"{model_path}: sha256 {digest} does not match the card's {card['sha256']}: the "
            f"file was modified or corrupted. Retrain it with `keras-normreg train "
            f"{entry}/recipe.toml` or restore it from git.")
    return model_path


def load_saved(name_or_path: str | os.PathLike, *, verify: bool = True,
               return_card: bool = False):
    """Load a saved entry's model (sha256 checked, ``safe_mode=True``)."""
    entry = find_entry(name_or_path)
    card = load_card(entry)
    model_path = _verify_checksum(entry, card) if verify else entry / card["model_file"]
    try:
        model = keras.saving.load_model(str(model_path), safe_mode=True)
    except (zipfile.BadZipFile, OSError, ValueError, TypeError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EntryLoadError(
            f"{model_path}: cannot be loaded ({type(e).__name__}: {first}). The file matches "
            f"its card's sha256, so the entry was written damaged or holds objects that "
            f"safe_mode refuses to run; retrain it with `keras-normreg train "
            f"{entry}/recipe.toml`.") from e
    return (model, card) if return_card else model


def evaluate_saved(name_or_path, *, data_dir=None, strict: bool = True) -> dict:
    """Re-evaluate an entry on its card's dataset and compare with the card.

    Accuracy must match exactly (same correct count over the same split); the loss within
    ``LOSS_TOLERANCE``. Returns ``{"card": ..., "measured": ..., "match": bool, "name": ...}``;
    with ``strict`` a mismatch raises :class:`MetricMismatchError`.
    """
    model, card = load_saved(name_or_path, return_card=True)
    recipe_data = card["recipe"].get("data", {})
    ds = evaluation_batches(card["dataset"], card["test_split"], card["batch_size"],
                      data_dir=data_dir if data_dir is not None else recipe_data.get("data_dir"))
    measured = evaluate_model(model, ds)
    expected = card["metrics"]
    match = (measured["test_accuracy"] == expected["test_accuracy"]
             and abs(measured["test_loss"] - expected["test_loss"]) <= LOSS_TOLERANCE)
    report = {"card": expected, "measured": measured, "match": match, "name": card["name"]}
    if strict and not match:
        raise MetricMismatchError(
            f"{card['name']}: re-evaluation gives accuracy {measured['test_accuracy']:.6f} and "
            f"loss {measured['test_loss']:.6f}; the card says {expected['test_accuracy']:.6f} "
            f"and {expected['test_loss']:.6f}.")
    return report
