"""Diagnostics: is L2 on this weight meaningful, and what is the optimizer really doing?

* :func:`scale_invariant_weights` — the scale-invariance auditor: a graph walk (a kernel reaches
  a normalization through linear / positively homogeneous ops only) confirmed by a numeric probe
  (scale the weight, compare training-mode outputs); one row per weight with the reason.
* :class:`NormMonitor` — a callback logging per weight ‖w‖, the effective learning rate
  (η/‖w‖² for SGD, η/‖w‖ for Adam-like optimizers), the angular update per step and the
  predicted equilibrium angular update (:func:`equilibrium_angular_update`); CSV and
  TensorBoard; warns once when L2 sits on scale-invariant weights.
* :mod:`~keras_normreg.diagnostics.plots` — the figures of a :class:`NormMonitor` CSV.

``keras-normreg experiment l2-vs-bn`` (BN + L2 vs unit norm vs no BN on MNIST-1D, with a
Markdown report) runs ``experiments/l2_vs_bn.py`` of the source checkout, built on these.
"""

from keras_normreg.diagnostics.auditor import AuditRow, InvarianceReport, scale_invariant_weights
from keras_normreg.diagnostics.monitor import (
    METRICS,
    UNIT_METRICS,
    NormMonitor,
    equilibrium_angular_update,
    optimizer_facts,
)

__all__ = [
    "METRICS",
    "UNIT_METRICS",
    "AuditRow",
    "InvarianceReport",
    "NormMonitor",
    "equilibrium_angular_update",
    "optimizer_facts",
    "scale_invariant_weights",
]
