"""Tuning: keras-tuner over λ × normalization × decay mode, study specs, reports, launcher.

* :class:`NormRegHyperModel` (``hypermodel``): the search space declared in ``build(hp)``.
* :mod:`~keras_normreg.tuning.space`: the space, the λ convention, decay modes -> recipes,
  the ``independent`` / ``product`` (ηλ, η) parametrizations.
* :mod:`~keras_normreg.tuning.spec`: ``tuning/<study>.toml`` schema (:func:`load_study`).
* :mod:`~keras_normreg.tuning.study`: :func:`run_study` (resume, reports, export), which runs
  a study in this process or as :func:`~keras_normreg.tuning.study.run_chief` /
  :func:`~keras_normreg.tuning.study.run_worker`; its parts: ``progress`` (the lines a study
  prints), ``oracle`` (the fault-tolerant oracle, a worker's proxy and heartbeat), ``serving``
  (the chief's gRPC server, the workers' channel, the secret), ``tuner`` (the keras-tuner tuner
  of a study) and ``export`` (the best trial tested once and saved).
* :mod:`~keras_normreg.tuning.report`: leaderboard (Markdown + CSV) and heatmap (PNG).
* :mod:`~keras_normreg.tuning.launcher`: chief + workers on one or several machines.

(Trials each parametrization needs to reach a target: ``experiments/compare.py`` of the
source checkout, a benchmark helper.)

The submodules that need keras-tuner are imported on first use, so ``spec`` and ``space``
stay light.
"""

from __future__ import annotations

import importlib

from keras_normreg.tuning.space import DECAY_MODES, PARAMETRIZATIONS, declare, trial_recipe
from keras_normreg.tuning.spec import STUDY_SCHEMA, load_study, resolve_study, study_budget

__all__ = [
    "DECAY_MODES",
    "NormRegHyperModel",
    "PARAMETRIZATIONS",
    "STUDY_SCHEMA",
    "declare",
    "load_study",
    "resolve_study",
    "run_study",
    "study_budget",
    "trial_recipe",
    "write_reports",
]

_LAZY = {
    "NormRegHyperModel": "keras_normreg.tuning.hypermodel",
    "run_study": "keras_normreg.tuning.study",
    "write_reports": "keras_normreg.tuning.report",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'keras_normreg.tuning' has no attribute {name!r}")
