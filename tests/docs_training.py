"""Do the docs' example models train as compiled? (used by tests/test_docs.py)

:func:`install` (run before a page's blocks) records every model a block compiles and then
fits on arrays; :func:`report` (run after them) trains each recorded model ``STEPS`` more
steps with its own compiled loss and optimizer on its first ``BATCH`` examples, and prints one
``docs-train: {...}`` line per model with the *true* cross-entropy of those examples, computed
with NumPy from the model's outputs (the softmax of logits, or the probabilities of a model
with ``classifier_activation``), before and after, and the compiled loss before. A model
compiled the way it needs has a compiled loss equal to that cross-entropy (within float32
rounding) and a cross-entropy that falls; one compiled with a loss that reads its outputs the
wrong way (logits as probabilities) does not: ``tests/test_docs.py`` checks :func:`measure` on
such a model too.
"""

from __future__ import annotations

import json

import keras
import numpy as np

PREFIX = "docs-train: "
STEPS = 20
BATCH = 64
_recorded: dict[int, tuple] = {}


def _outputs(model, x):
    """The model's outputs in float64, with batch statistics (``training=True``): the
    normalization a training step sees, not moving averages that lag a few steps behind (no
    model here has dropout)."""
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=True)), dtype=np.float64)


def true_cross_entropy(model, out, y) -> float:
    """Mean -log p(y | x) in float64 from the outputs ``out`` of ``model``: the softmax of
    logits, or the probabilities of a model with ``classifier_activation``."""
    out = out.reshape(len(y), -1)
    rows = np.arange(len(y))
    if getattr(model, "classifier_activation", None) is None:  # logits
        m = out.max(-1, keepdims=True)
        log_p = out - m - np.log(np.exp(out - m).sum(-1, keepdims=True))
    else:
        log_p = np.log(np.clip(out / out.sum(-1, keepdims=True), 1e-12, 1.0))
    return float(-log_p[rows, np.asarray(y).reshape(-1)].mean())


def compiled_loss(model, y, out) -> float:
    """The model's compiled loss (without regularization penalties) on outputs ``out``."""
    loss = keras.losses.get(model.loss) if isinstance(model.loss, str) else model.loss
    return float(np.mean(keras.ops.convert_to_numpy(loss(y, out.astype(np.float32)))))


def measure(model, x, y, steps: int = STEPS) -> dict:
    """On ``x[:BATCH]``: the true cross-entropy before and after ``steps`` training steps of
    the compiled model, the compiled loss before (it must be that cross-entropy) and the
    bound on their float32 difference: the loss's log-softmax (or log) over C classes is a
    shift, C exps and a sum, a log, each rounding relatively by 2**-24, on values of the size of
    the largest output, so ``(C + 4) * 2**-24 * max(1, max |output|)``."""
    xb, yb = x[:BATCH], y[:BATCH]
    out = _outputs(model, xb)
    classes = out.shape[-1]
    bound = (classes + 4) * 2.0**-24 * max(1.0, float(np.abs(out).max()))
    before = true_cross_entropy(model, out, yb)
    compiled = compiled_loss(model, yb, out)
    for _ in range(steps):
        model.train_on_batch(xb, yb)
    after = true_cross_entropy(model, _outputs(model, xb), yb)
    return {"model": model.name, "before": before, "after": after, "compiled": compiled,
            "bound": bound, "loss": repr(model.loss)[:120]}


def install() -> None:
    """Record ``(model, x, y)`` at every ``fit`` of a compiled model on NumPy arrays."""
    fit = keras.Model.fit

    def recording_fit(self, x=None, y=None, *args, **kwargs):
        if self.compiled and isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
            _recorded[id(self)] = (self, x, y)
        return fit(self, x, y, *args, **kwargs)

    keras.Model.fit = recording_fit


def report() -> None:
    """Train every recorded model a little more and print its measurement."""
    for model, x, y in list(_recorded.values()):
        print(PREFIX + json.dumps(measure(model, x, y)), flush=True)


def problems(record: dict) -> list[str]:
    """What is wrong with a :func:`measure` record (empty: compiled as it needs and trains)."""
    out = []
    if not abs(record["compiled"] - record["before"]) <= record["bound"]:
        out.append(f"{record['model']}: its compiled loss {record['loss']} gives "
                   f"{record['compiled']:.6g} where the cross-entropy of its outputs is "
                   f"{record['before']:.6g} (logits read as probabilities, or the reverse?)")
    if not record["after"] < record["before"]:
        out.append(f"{record['model']}: the cross-entropy did not fall in {STEPS} steps on "
                   f"{BATCH} examples: {record['before']:.6g} -> {record['after']:.6g}")
    return out
