"""Run state: what a training run has done so far, keyed by what was run, for exact resume.

A run directory (``runs/<name>`` by default) holds the state of one unfinished run:

* ``state.json``: the format (:data:`FORMAT`), the run's **fingerprint** and the recipe it was
  computed from, the epochs done, the whole history so far, the training seconds so far, the
  epochs at which the run was resumed (``resumed_at_epoch``), the Keras ``SeedGenerator``
  states (dropout) and the name of the weights file;
* ``state-epoch<k>.weights.h5``: ``model.save_weights`` after epoch ``k``: the model's
  variables AND the optimizer's (Keras 3 writes the optimizer's variables, iteration count
  included, into the same file once it is built). The seed generators' states are not in it
  (Keras saves a layer's weights only), hence their copy in ``state.json``.

:class:`StateWriter` (a callback) writes both at the end of every epoch, each atomically (a
temporary file in the same folder, fsync, ``os.replace``): first the new weights file, then the
JSON that names it, then the old weights file is removed. A kill at any point leaves the
previous complete state or the new one, never a mix.

The fingerprint is the sha256 of the canonical JSON (sorted keys, no spaces) of the resolved
recipe, with the Keras backend added (TensorFlow and JAX order the batches differently), minus
the keys in :data:`IGNORED_KEYS`: the ones that cannot change the trained weights:

* ``name`` and ``description`` (labels; the run directory is already per name);
* ``train.verbose`` (printing) and ``train.output_dir`` (where the entry is written);
* ``data.download`` and ``data.data_dir`` (where the data come from, not what they are);
* ``data.autotune`` (tf.data's performance tuning; the order of the batches is unchanged).

Everything else (architecture, norm, data split and batch size, optimizer, schedule, epochs
(the schedule spans them), seed, mixed precision, XLA, strategy) is part of it.

:func:`open_state` decides, from the state found and ``resume`` ("auto", "resume" or
"fresh"), whether a run resumes, starts afresh, or is refused with :class:`RunStateError`.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import json
import os
import shutil
import time

import keras
import numpy as np

from keras_normreg import _atomic

__all__ = [
    "FORMAT",
    "IGNORED_KEYS",
    "LEGACY_BACKUP_DIR",
    "RESUME_MODES",
    "STATE_FILE",
    "RunStateError",
    "StateWriter",
    "differences",
    "discard",
    "fingerprint",
    "fingerprint_recipe",
    "open_state",
    "read_state",
    "restore",
]

#: Version of the state layout; a state of another format is not resumed.
FORMAT = 1
STATE_FILE = "state.json"
#: The Keras BackupAndRestore folder the older code kept in the run directory.
LEGACY_BACKUP_DIR = "backup"
RESUME_MODES = ("auto", "resume", "fresh")
#: Dotted recipe keys left out of the fingerprint (they cannot change the trained weights).
IGNORED_KEYS = ("name", "description", "train.verbose", "train.output_dir", "data.download",
                "data.data_dir", "data.autotune")
#: Dotted recipe keys added after run states existed, left out of the fingerprint while unset
#: (None means what their absence meant), so a run interrupted before they existed resumes.
UNSET_AS_ABSENT = ("model.classifier_activation",)
_WEIGHTS_GLOB = "state-epoch*.weights.h5"
_MAX_SHOWN = 3


class RunStateError(ValueError):
    """The run directory holds a state that does not match this run (or none where one is
    required); the one-line message says what differs and how to go on."""


# -- fingerprint --------------------------------------------------------------------------------
def fingerprint_recipe(cfg: dict) -> dict:
    """The part of a resolved recipe that defines the trained result (a JSON-clean copy): the
    recipe without :data:`IGNORED_KEYS` (and :data:`UNSET_AS_ABSENT` keys while None), plus
    ``backend`` (the Keras backend)."""
    out = json.loads(json.dumps(cfg))
    for key in IGNORED_KEYS + UNSET_AS_ABSENT:
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and (key in IGNORED_KEYS or node.get(last) is None):
            node.pop(last, None)
    out["backend"] = keras.backend.backend()
    return out


def fingerprint(cfg: dict) -> str:
    """sha256 (hex) of the canonical JSON of :func:`fingerprint_recipe`."""
    text = json.dumps(fingerprint_recipe(cfg), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


_MISSING = "<unset>"


def differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """``[(dotted key, old value, new value), ...]`` where two (fingerprint) recipes differ,
    sorted by key; a key one of them lacks shows as ``'<unset>'``."""
    a, b = _flatten(old), _flatten(new)
    return [(k, a.get(k, _MISSING), b.get(k, _MISSING)) for k in sorted(set(a) | set(b))
            if a.get(k, _MISSING) != b.get(k, _MISSING)]


def _describe_differences(diffs) -> str:
    shown = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in diffs[:_MAX_SHOWN])
    if len(diffs) > _MAX_SHOWN:
        shown += f" (and {len(diffs) - _MAX_SHOWN} more)"
    return shown


# -- reading and discarding ---------------------------------------------------------------------
def read_state(run_dir: str) -> tuple[str, dict | None, str]:
    """``(status, state, detail)`` of the run directory: status is ``"none"`` (nothing to
    resume), ``"ok"`` (a complete state of this format), ``"legacy"`` (a Keras BackupAndRestore
    folder of the older code), ``"format"`` (another state format) or ``"damaged"``
    (unreadable JSON or a missing weights file); ``detail`` says why in words."""
    path = os.path.join(run_dir, STATE_FILE)
    legacy = os.path.isdir(os.path.join(run_dir, LEGACY_BACKUP_DIR))
    if not os.path.exists(path):
        if legacy:
            return ("legacy", None, "a Keras BackupAndRestore backup left by an older version "
                    "of keras_normreg (its recipe is unknown)")
        return "none", None, ""
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        return "damaged", None, f"an unreadable {STATE_FILE} ({type(e).__name__})"
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        fmt = state.get("format") if isinstance(state, dict) else None
        return ("format", None, f"a run state of another format ({fmt!r}; this version "
                f"writes {FORMAT})")
    weights = state.get("weights_file")
    if not isinstance(weights, str) or not os.path.isfile(os.path.join(run_dir, weights)):
        return "damaged", None, f"a run state whose weights file {weights!r} is missing"
    return "ok", state, ""


def discard(run_dir: str) -> list[str]:
    """Remove the run state (and a legacy BackupAndRestore folder) from ``run_dir``; the
    TensorBoard logs stay. Returns the names removed."""
    removed = []
    for name in (STATE_FILE, *sorted(os.path.basename(p) for p in
                                     glob.glob(os.path.join(run_dir, _WEIGHTS_GLOB)))):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            os.remove(path)
            removed.append(name)
    legacy = os.path.join(run_dir, LEGACY_BACKUP_DIR)
    if os.path.isdir(legacy):
        shutil.rmtree(legacy)
        removed.append(LEGACY_BACKUP_DIR + "/")
    for tmp in glob.glob(os.path.join(run_dir, ".tmp-state-*")):
        os.remove(tmp)
    return removed


def open_state(run_dir: str, cfg: dict, resume: str = "auto", *, verbose: int = 1) -> dict | None:
    """The state to resume from, or None to start a new run, for ``resume``:

    * ``"auto"``: resume a matching unfinished run, start a new one when there is none, refuse
      (:class:`RunStateError`) a state that does not match (another recipe, an older format,
      a damaged state);
    * ``"resume"``: require a matching state;
    * ``"fresh"``: discard any state and start over (one line says what was discarded).
    """
    if resume not in RESUME_MODES:
        raise ValueError(f"Argument `resume` must be one of {list(RESUME_MODES)}. "
                         f"Received: resume={resume!r}")
    status, state, detail = read_state(run_dir)
    name = cfg["name"]
    if resume == "fresh":
        if status != "none":
            what = (f"epoch {state['epochs_done']} of {state['epochs']}" if state else detail)
            discard(run_dir)
            if verbose:
                print(f"fresh start of {name}: discarded the run state in {run_dir} ({what})")
        return None
    how = ("Rerun with the original recipe to resume it, or pass --fresh "
           "(resume=\"fresh\") to discard it and start over.")
    if status == "none":
        if resume == "resume":
            raise RunStateError(
                f"There is no run state to resume in {run_dir} for {name!r}; run without "
                f"--resume (resume=\"auto\") to start it. Received: resume={resume!r}")
        return None
    if status != "ok":
        raise RunStateError(f"{run_dir} holds {detail}, which cannot be resumed. Pass --fresh "
                            f"(resume=\"fresh\") to discard it and start over.")
    diffs = differences(state.get("recipe", {}), fingerprint_recipe(cfg))
    if state.get("fingerprint") != fingerprint(cfg) or diffs:
        raise RunStateError(
            f"{run_dir} holds an unfinished run of {state.get('name', name)!r} (epoch "
            f"{state.get('epochs_done')} of {state.get('epochs')}) with another recipe: "
            f"{_describe_differences(diffs) or 'its fingerprint differs'}. {how}")
    return state


# -- writing and restoring ----------------------------------------------------------------------
def _seed_variables(model) -> list:
    """The model's variables that ``save_weights`` leaves out: the SeedGenerator states
    (``model.variables`` is the weights plus the seed states)."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _atomic_json(path: str, obj) -> None:
    _atomic.write_json(path, obj, indent=1, sort_keys=True, newline=True, prefix=".tmp-state-",
                       suffix=".json")


def _atomic_weights(model, path: str) -> None:
    _atomic.replace_via_temp(path, lambda tmp: model.save_weights(tmp, overwrite=True),
                             prefix=".tmp-state-", suffix=".weights.h5")


def restore(model, run_dir: str, state: dict) -> None:
    """Load a state's weights (model and optimizer) and seed-generator states into a compiled
    model built from the same recipe (call it inside the strategy's scope)."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(os.path.join(run_dir, state["weights_file"]))
    seeds = state.get("seed_states", [])
    variables = _seed_variables(model)
    if len(seeds) != len(variables):
        raise RunStateError(
            f"{run_dir}: the run state holds {len(seeds)} random-generator states but the model "
            f"has {len(variables)}. Pass --fresh (resume=\"fresh\") to discard it.")
    for var, saved in zip(variables, seeds, strict=True):
        var.assign(np.asarray(saved["value"], dtype=saved["dtype"]).reshape(var.shape))


class StateWriter(keras.callbacks.Callback):
    """Writes the run state at the end of every epoch (see the module docstring).

    Args:
        run_dir: the run directory (created).
        cfg: the resolved recipe.
        previous: the state resumed from, or None for a new run; its history, seconds and
            ``resumed_at_epoch`` are carried on.
        write: False keeps the bookkeeping (history, seconds) without writing (non-chief
            workers).
        skip: a callable returning True when the epoch must not be recorded (a NaN loss).
    """

    def __init__(self, run_dir: str, cfg: dict, previous: dict | None = None, *,
                 write: bool = True, skip=None, clock=None):
        super().__init__()
        self.run_dir = run_dir
        self.cfg = cfg
        self.write = write
        self.skip = skip or (lambda: False)
        self._clock = clock or time.perf_counter
        previous = previous or {}
        self.history = {k: list(v) for k, v in previous.get("history", {}).items()}
        self.seconds_before = float(previous.get("training_seconds", 0.0))
        self.seconds = self.seconds_before
        self.epochs_done = int(previous.get("epochs_done", 0))
        self.resumed_at_epoch = [int(e) for e in previous.get("resumed_at_epoch", [])]
        if previous:
            self.resumed_at_epoch.append(self.epochs_done)
        self._fingerprint = fingerprint(cfg)
        self._recipe = fingerprint_recipe(cfg)
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = self._clock()

    def elapsed(self) -> float:
        """Training seconds so far, earlier parts of the run included."""
        if self._start is None:
            return self.seconds
        return self.seconds_before + (self._clock() - self._start)

    def on_epoch_end(self, epoch, logs=None):
        if self.skip():
            return
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v))
        self.epochs_done = epoch + 1
        self.seconds = self.elapsed()
        if self.write:
            self.save()

    def state(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.cfg["name"],
            "fingerprint": self._fingerprint,
            "recipe": self._recipe,
            "epochs": int(self.cfg["train"]["epochs"]),
            "epochs_done": self.epochs_done,
            "history": self.history,
            "training_seconds": self.seconds,
            "resumed_at_epoch": self.resumed_at_epoch,
            "weights_file": f"state-epoch{self.epochs_done:04d}.weights.h5",
            "seed_states": [
                {"dtype": str(np.asarray(keras.ops.convert_to_numpy(v)).dtype),
                 "value": np.asarray(keras.ops.convert_to_numpy(v)).reshape(-1).tolist()}
                for v in _seed_variables(self.model)],
            "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
        }

    def save(self) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        state = self.state()
        weights = os.path.join(self.run_dir, state["weights_file"])
        _atomic_weights(self.model, weights)
        _atomic_json(os.path.join(self.run_dir, STATE_FILE), state)
        for old in glob.glob(os.path.join(self.run_dir, _WEIGHTS_GLOB)):
            if os.path.basename(old) != state["weights_file"]:
                os.remove(old)
