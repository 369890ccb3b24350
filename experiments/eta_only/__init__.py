"""The ``eta-only`` study: with the normalized kernels on the sphere, is tuning η alone enough?

An experiment of the source checkout, not part of the installed package. One command runs
it::

    python -m experiments.eta_only            # or: keras-normreg experiment eta-only

and writes ``docs/study_eta_only.md`` (the report, rendered from the results by
:func:`render` with the prose of ``experiments/templates/eta_only.md``) and, under
``docs/study_eta_only/``, ``results.json`` (settings, versions, date, command, every run),
``table.csv`` (one row per grid point) and the figures. ``--render`` re-renders the report and
the figures from an existing ``results.json``; ``--dry-run`` prints the plan and the time
estimate and stops; ``--calibrate`` times one full-length run per arm and extrapolates;
``--quick`` is a miniature (tiny grids, 2 epochs, 1 seed: ~2 min) for the tests; ``--set
NAME=VALUE`` changes any field of :class:`Settings`.

The setup: the zoo's ``cnn1d`` (4 × [Conv1D → BatchNorm → ReLU], global average pooling,
Dense) on MNIST-1D, trained on ``train[:3000]`` and scored on the held-out ``train[3000:]``
(1000 examples; the test split is not used), SGD with momentum α = 0.9 at a *constant*
learning rate (the equilibrium theory assumes one), every grid point with 3 training seeds
(initialization and data order). Four arms, each a grid over its own hyperparameters; the
recipes come from :func:`keras_normreg.tuning.space.trial_recipe`, i.e. the tuning space's
decay modes:

(a) ``decoupled``: the 2-D (η, λ) grid, ``sgdw`` with decoupled decay ``w ← w − ηλw`` (decay
    mode ``decoupled``; biases and normalization parameters not decayed);
(b) ``coupled``: the 2-D (η, λ) grid, plain SGD + the coupled penalty with the tuning space's
    convention (decay mode ``l2``): ``regularizers.L2(λ/2)`` = (λ/2)·Σw², whose gradient is λ·w
    (PyTorch's ``weight_decay=λ``);
(c) ``sphere``: the 1-D η grid, ``sgdw`` with ``scale_invariant="sphere"`` (the BN'd conv
    kernels retracted to unit norm per output unit after every step) and λ = 0 everywhere
    (decay mode ``unit_norm``): one hyperparameter;
(d) ``eta_lambda``: the 1-D ηλ grid at a fixed η (decoupled, like (a));
(e) ``none``, a reference outside the comparison: (a)'s η grid with no decay at all (decay
    mode ``none``; off equilibrium: the norms grow and the rotation slows down by itself).

By default (``decay_scope="scale_invariant"``) λ acts on the BN'd conv kernels only in (a), (b)
and (d): the classifier kernel is left out of the decay / penalty, as in (c), so that the arms
differ only in how the BN'd kernels' rotation is set (the λ values that reach equilibrium in
this budget would otherwise also be a strong L2 on the classifier, an effect of its own);
``decay_scope="all"`` decays every kernel, as the tuning space does.

Equilibrium (why the grids are where they are). For a scale-invariant kernel under decoupled
decay the squared norm relaxes with a time constant of ~1/(2ηλ) steps (it shrinks by a factor
(1 − ηλ)² per step), and once relaxed the kernel turns by a fixed angle per step,
``Δθ = sqrt(2ηλ(1−α)/(1+α))`` for this optimizer (decay applied outside the momentum,
:func:`keras_normreg.diagnostics.equilibrium_angular_update`; ``sqrt(2ηλ/(1+α))`` is the
coupled case, where the decay goes through the momentum). With ``T`` steps of training the
smallest ηλ of the grids is set so that ``T`` is ``n_tau`` = 3 time constants:
``ηλ_min = 3/(2T)`` (:func:`eta_lambda_floor`); the λ grid of (a) starts at ``ηλ_min/η_min``.
Arm (b)'s λ values are (a)'s times (1 − α): coupled decay goes through the momentum and is
amplified by 1/(1 − α), so (b) has the same relaxation time and the same equilibrium Δθ as (a)
point by point. Arm (d) spans (a)'s ηλ range at (a)'s middle η. Arm (c) has no λ: on the unit
sphere a unit turns by ``Δθ ≈ η·‖∇f(ŵ)‖`` per step (times the momentum's gain), so its η grid
is chosen to span (a)'s range of equilibrium Δθ and ``sphere_below`` = 16 times under it (the
small angles a decayed run reaches in this budget only off equilibrium, where the no-decay
reference ends), with the rate Δθ/η measured in three pilot runs on the sphere
(:class:`~keras_normreg.diagnostics.NormMonitor`'s ``unit_angular_update`` /
``unit_effective_lr``, the latter being η for unit-norm units), as long as the grid runs by
default (the gradient norm shrinks as the net fits, and the grid runs are measured in their
last epoch too), fitted as a power law ``Δθ = c·η^p`` (:func:`fit_rate`,
:func:`sphere_eta_grid`).

Each run trains ``epochs`` epochs in two phases: all but the last epoch with
``steps_per_execution`` steps per call (the model and data are tiny: the per-call overhead is
most of a step), then the last epoch recompiled with one step per call and a
``NormMonitor(every_n_steps=1, per_unit=True)`` that measures the angular update per step of
the BN'd conv kernels. The score of a run is its validation accuracy averaged over the last
``score_epochs`` epochs (a constant learning rate leaves the accuracy fluctuating from epoch to
epoch; a search would see this one number per trial). Runs are spread over ``workers``
processes with one thread each, on the JAX backend by default (jit-compiled; measured on the
shared 2-core CPU: ~0.35-0.45 s per epoch against TensorFlow's ~0.55, and 20-25 s per
20-epoch run on 2 workers against 30-35 s); each run seeds before building its data streams,
so its result does not depend on the runs before it in its worker.

Per arm the report gives the best mean score with its seed standard deviation, the trials used
(points × seeds) and the trials random search over the arm's grid needs to come within one
seed-standard-deviation of the best of all arms (:func:`search_trials`: many simulated
searches drawing grid points with replacement and seeing one seed's score per draw), and says
whether the claim (one hyperparameter suffices) holds.

The modules, one job each: :mod:`~experiments.eta_only.runs` (the arms, :class:`Settings`, the
equilibrium theory and the grids it places, one training run, the workers' environment),
:mod:`~experiments.eta_only.analysis` (the summary over seeds, the per-arm verdict numbers and
:func:`search_trials`), :mod:`~experiments.eta_only.report` (``table.csv``, the figures and the
Markdown report from ``results.json``) and :mod:`~experiments.eta_only.study` (the plan and its
estimate, :func:`run_study`, :func:`calibrate` and the command line).
"""

from . import report
from .analysis import analyse, geometric_quantile, search_trials, summarize
from .report import SECTIONS, TEMPLATE, load_template, render, render_report
from .runs import (
    ALL_ARMS,
    ARMS,
    DEFAULT_OUT,
    MEASURED_TIMING,
    REFERENCE,
    Settings,
    arm_grids,
    equilibrium_steps,
    equilibrium_theta,
    eta_lambda_floor,
    fit_rate,
    log_grid,
    make_settings,
    sphere_eta_grid,
    train_one,
    worker_env,
)
from .study import calibrate, cli, estimate_seconds, json_default, main, run_study, versions

#: The names these helpers had when the study was one module (experiments/grokking uses the
#: first three, the tests the last).
_worker_env, _json_default, _versions = worker_env, json_default, versions
_duplicates = report._duplicates

__all__ = ["ALL_ARMS", "ARMS", "DEFAULT_OUT", "MEASURED_TIMING", "REFERENCE", "SECTIONS",
           "TEMPLATE", "Settings", "analyse", "arm_grids", "calibrate", "cli",
           "equilibrium_steps", "equilibrium_theta", "estimate_seconds", "eta_lambda_floor",
           "fit_rate", "geometric_quantile", "json_default", "load_template", "log_grid", "main",
           "make_settings", "render", "render_report", "run_study", "search_trials",
           "sphere_eta_grid", "summarize", "train_one", "versions", "worker_env"]
