"""Scale-invariance auditor: which weights does a model's function ignore the scale of?

:func:`scale_invariant_weights` answers twice, independently, for every analysed weight (kernels,
depthwise kernels, embeddings, normalization scales ``gamma``, WeightNormalization ``v``/``g``):

1. **Graph walk** (:func:`keras_normreg.invariance.explain_scale_invariance`): the weight is
   proved scale-invariant when everything between it and a normalization layer is linear or
   positively homogeneous (conv -> BN, conv -> ReLU -> conv -> BN, ...) and every path to the
   outputs goes through such a normalization. The reason names the normalization and the layers
   passed.
2. **Numeric probe** on a batch ``x``: with every other variable fixed, the weight is scaled by
   ``factor`` (default 3) and the model is run in *training mode* (batch statistics)::

       change = ‖f(x; c·W) − f(x; W)‖₂ / ‖f(x; W)‖₂          (all outputs concatenated)

   and the probe says "invariant" when ``change <= rtol``. Training mode is the mode in which
   BatchNormalization removes the scale; in inference mode the moving statistics do not rescale.
   Every variable of the model (weights, BN moving statistics, dropout seed states) is
   snapshotted before the probe and restored after each forward pass, so the model is left
   exactly as it was and every pass sees the same dropout masks. On the torch backend an
   unseeded ``Dropout`` draws from torch's global generator instead of a seed variable, so its
   state (CPU and CUDA) is snapshotted and restored the same way.

The verdict (``invariant``) is True only when both say invariant (the walk's verdict alone when
the probe is off or inconclusive). When they disagree the row says so
(``agree=False``, ``reason`` starts with ``"DISAGREEMENT"``): a probe that finds a change where the
walk proved invariance usually means a normalization epsilon that is not small against the
channel's variance (tiny batches or feature maps), a probe that finds no change where the walk
cannot prove anything usually means an op the walk does not know (a ``Lambda`` that normalizes,
a subclassed model).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import keras
import numpy as np

from keras_normreg import _invariance, _targeting
from keras_normreg._utils import check_number, received

__all__ = ["AuditRow", "InvarianceReport", "scale_invariant_weights"]


class AuditRow(NamedTuple):
    """One weight of an :class:`InvarianceReport`.

    Attributes:
        path: the variable path (``"block1_conv/kernel"``).
        layer: the name of the layer that owns it.
        graph: the graph walk's verdict.
        probe: the probe's verdict (``change <= rtol``); None when the probe was not run or was
            inconclusive (non-deterministic or non-finite output).
        change: the relative output change measured by the probe (NaN when not run).
        invariant: the final verdict: ``graph and probe`` (the walk's alone when the probe
            was not run or was inconclusive).
        agree: whether the walk and the probe agree (True when the probe was not run).
        reason: the walk's explanation, followed by the probe's measurement.
    """

    path: str
    layer: str
    graph: bool
    probe: bool | None
    change: float
    invariant: bool
    agree: bool
    reason: str


class InvarianceReport(list):
    """List of :class:`AuditRow`, one per analysed weight; printing it gives a table.

    ``.invariant`` / ``.not_invariant`` / ``.disagreements`` list the paths of each kind;
    ``report[path]`` (a string) returns that weight's row.
    """

    factor: float = 3.0
    rtol: float = 1e-2
    noise: float = 0.0

    def __getitem__(self, key):
        if isinstance(key, str):
            for row in self:
                if row.path == key:
                    return row
            raise KeyError(f"No weight {key!r} in this report; paths: {[r.path for r in self]}")
        return super().__getitem__(key)

    @property
    def invariant(self) -> list[str]:
        return [r.path for r in self if r.invariant]

    @property
    def not_invariant(self) -> list[str]:
        return [r.path for r in self if not r.invariant]

    @property
    def disagreements(self) -> list[str]:
        return [r.path for r in self if not r.agree]

    def _cells(self):
        def fmt(v):
            return "-" if v is None else ("yes" if v else "no")

        for r in self:
            change = "-" if math.isnan(r.change) else f"{r.change:.1e}"
            yield (r.path, fmt(r.graph), fmt(r.probe), change,
                   "INVARIANT" if r.invariant else "no", r.reason)

    def __str__(self):
        if not self:
            return "InvarianceReport([])"
        head = ("variable", "graph", "probe", "change", "verdict", "reason")
        rows = [head, *self._cells()]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5]
                 for row in rows]
        lines.append(f"(probe: weight scaled by {self.factor:g}, training-mode output compared; "
                     f"invariant when change <= {self.rtol:g}; run-to-run noise {self.noise:.1e})")
        return "\n".join(lines)

    __repr__ = __str__

    def to_markdown(self) -> str:
        """The table as GitHub Markdown."""
        lines = ["| variable | graph walk | probe | change | verdict | reason |",
                 "|---|---|---|---|---|---|"]
        for cells in self._cells():
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines)


def _outputs(model, x):
    y = model(x, training=True)
    parts = [np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64).ravel()
             for t in keras.tree.flatten(y)]
    return np.concatenate(parts) if parts else np.zeros((0,))


def _global_rng_state():
    """What else than the model's variables decides the dropout masks: on torch, an unseeded
    ``Dropout`` uses torch's global generator (Keras' fast path); None on other backends,
    where every random layer draws from a SeedGenerator state variable."""
    if keras.backend.backend() != "torch":
        return None
    import torch  # heavy external package: only on the torch backend

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda


def _set_global_rng_state(state):
    if state is None:
        return
    import torch

    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _relative_change(y, y0):
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(y0))):
        return float("nan")
    denom = float(np.linalg.norm(y0))
    return float(np.linalg.norm(y - y0) / max(denom, 1e-30))


def _check_x(x):
    leaves = keras.tree.flatten(x)
    if not leaves:
        raise ValueError("Argument `x` must be a batch of inputs (an array, a tensor, or a "
                         f"structure of them matching the model inputs). {received('x', x)}")
    batch = None
    for leaf in leaves:
        shape = getattr(leaf, "shape", None)
        if shape is None or len(shape) == 0:
            raise ValueError("Argument `x` must hold arrays with a batch axis. "
                             f"{received('x', type(leaf).__name__)}")
        batch = shape[0]
    if batch is not None and batch < 2:
        raise ValueError("Argument `x` must hold at least 2 examples: the probe runs the model in "
                         "training mode, where batch normalization of a single example is "
                         f"degenerate. Received: x with batch size {batch}")


def scale_invariant_weights(model, x, *, factor=3.0, rtol=1e-2, probe=True,
                            variables=None) -> InvarianceReport:
    """Audit which weights of ``model`` its (training-mode) function is invariant to rescaling.

    Args:
        model: a built Keras model (functional or Sequential for the graph walk; a subclassed
            model is probed only: the walk reports it cannot read the graph).
        x: a batch of inputs the model can be called on (at least 2 examples; use a real batch:
            batch statistics of a few examples can make BN's epsilon matter).
        factor: the probe's scale factor ``c`` (> 0, != 1).
        rtol: the probe's tolerance on the relative output change.
        probe: False skips the probe (graph walk only; ``x`` is then not used).
        variables: optional subset (variables or paths) to audit; default every analysed weight
            (kernels, depthwise kernels, embeddings, gamma, WeightNormalization v/g).

    Returns:
        :class:`InvarianceReport`, one :class:`AuditRow` per weight, in model order.
    """
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(f"Argument `model` must be a Keras model. {received('model', model)}")
    _targeting.check_built(model, "scale_invariant_weights")
    check_number("factor", factor, low=0, low_inclusive=False)
    if factor == 1 or not math.isfinite(factor):
        raise ValueError("Argument `factor` must be a finite positive number other than 1. "
                         f"{received('factor', factor)}")
    check_number("rtol", rtol, low=0, low_inclusive=False)
    if not isinstance(probe, bool):
        raise ValueError(f"Argument `probe` must be a bool. {received('probe', probe)}")
    if probe:
        _check_x(x)

    pairs = _invariance.candidate_variables(model)
    if variables is not None:
        if isinstance(variables, str):
            variables = [variables]
        wanted = {v if isinstance(v, str) else getattr(v, "path", None) for v in variables}
        known = {v.path for _, v in pairs}
        unknown = sorted(str(w) for w in wanted - known)
        if unknown:
            raise ValueError(f"Argument `variables` names weights that are not analysed: "
                             f"{unknown}. Analysed weights: {sorted(known)}. "
                             f"{received('variables', unknown[0])}")
        pairs = [(la, v) for la, v in pairs if v.path in wanted]
    verdicts = _invariance.verdicts(model, variables=[v for _, v in pairs])

    report = InvarianceReport()
    report.factor, report.rtol = float(factor), float(rtol)
    changes = {}
    noise = 0.0
    if probe and pairs:
        state = [(v, np.array(v.numpy(), copy=True)) for v in model.variables]
        rng_state = _global_rng_state()

        def restore():
            for v, value in state:
                v.assign(value)
            _set_global_rng_state(rng_state)

        try:
            y0 = _outputs(model, x)
            restore()
            noise = _relative_change(_outputs(model, x), y0)
            restore()
            values = {id(v): value for v, value in state}
            for _, var in pairs:
                var.assign(values[id(var)] * factor)
                changes[id(var)] = _relative_change(_outputs(model, x), y0)
                restore()
        finally:
            restore()
    report.noise = noise
    inconclusive = not (noise <= rtol / 10)  # also True when noise is NaN

    for layer, var in pairs:
        verdict = verdicts[id(var)]
        graph_ok, why = verdict.invariant, verdict.reason
        change = changes.get(id(var), float("nan"))
        if not probe:
            pr, agree, reason = None, True, why
        elif inconclusive or math.isnan(change):
            pr, agree = None, True
            cause = (f"the training-mode output differs by {noise:.1e} between two identical "
                     "calls (non-deterministic layers)" if inconclusive else
                     "the output is not finite")
            reason = f"{why}; probe inconclusive: {cause}"
        else:
            pr = change <= rtol
            agree = pr == graph_ok
            measured = (f"scaling by {factor:g} changes the training-mode output by {change:.1e} "
                        f"(relative)")
            if agree:
                reason = f"{why}; probe: {measured}"
            elif graph_ok:
                reason = (f"DISAGREEMENT: the graph walk proves invariance ({why}) but {measured} "
                          f"> rtol={rtol:g}; is a normalization epsilon large against the batch "
                          "variance (small batch or feature map)?")
            else:
                reason = (f"DISAGREEMENT: {measured} <= rtol={rtol:g} on this batch at these "
                          "weights (e.g. BN beta = 0 at initialization makes a following ReLU "
                          f"homogeneous), but the graph walk cannot prove invariance ({why})")
        invariant = bool(graph_ok and (pr is None or pr))
        report.append(AuditRow(var.path, layer.name, bool(graph_ok), pr, change, invariant,
                               agree, reason))
    return report
