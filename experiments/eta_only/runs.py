"""The eta-only study's settings, the equilibrium theory that places its grids, and one
training run (:func:`train_one`, what a worker process runs per task)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import time

import keras
import numpy as np

from keras_normreg import config as nr_config
from keras_normreg import data as nr_data
from keras_normreg import selectors, zoo
from keras_normreg import train as nr_train
from keras_normreg._invariance import find_scale_invariant
from keras_normreg._utils import check_number, received
from keras_normreg.data import splits as nr_splits
from keras_normreg.diagnostics.monitor import NormMonitor, equilibrium_angular_update
from keras_normreg.tuning import space as nr_space

#: The arms, in report order: (a) decoupled 2-D, (b) coupled 2-D, (c) sphere η, (d) ηλ at fixed η.
ARMS = ("decoupled", "coupled", "sphere", "eta_lambda")
#: The reference outside the comparison: (e) no decay at all, η grid (off equilibrium: the
#: norms grow and the rotation slows down by itself). It does not set the target.
REFERENCE = "none"
ALL_ARMS = (*ARMS, REFERENCE)
LETTERS = {"decoupled": "a", "coupled": "b", "sphere": "c", "eta_lambda": "d", "none": "e"}
TITLES = {"decoupled": "(η, λ) grid, decoupled decay (sgdw)",
          "coupled": "(η, λ) grid, coupled L2 (SGD + L2(λ/2))",
          "sphere": "η grid, BN'd kernels on the unit sphere, λ = 0 (sgdw sphere mode)",
          "eta_lambda": "ηλ grid at a fixed η, decoupled decay (sgdw)",
          "none": "reference: η grid, no decay anywhere (SGD)"}
DECAY_MODE = {"decoupled": "decoupled", "coupled": "l2", "sphere": "unit_norm",
              "eta_lambda": "decoupled", "none": "none"}

#: Seconds per epoch and per-run overhead of one run (cnn1d, MNIST-1D ``train[:3000]``, batch
#: 30, JAX, one thread per worker, two workers side by side, the last epoch monitored every
#: step): the full study of 2026-11-30 took 1108 s for 225 runs of 20 epochs on the otherwise
#: idle 2-core machine, ~10 s per run and worker (at load 3-4 it was ~25 s). What the estimate
#: printed before a study starts uses (the report gives the study's own measured time).
MEASURED_TIMING = {"s_per_epoch": 0.35, "overhead_s": 3.0,
                   "measured": "2026-11-30, the full study on the idle 2-core CPU, 2 workers x 1 "
                               "thread, JAX"}

DECAY_SCOPES = ("scale_invariant", "all")
DEFAULT_OUT = os.path.join("docs", "study_eta_only")


# ------------------------------------------------------------------------------ settings
@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that defines a study (stored in ``results.json``).

    ``eta_grid``/``lambda_grid`` are arm (a)'s grid; the other grids are derived from it by
    :func:`arm_grids` (arm (c)'s also from the pilot)."""

    epochs: int = 20
    batch_size: int = 30
    momentum: float = 0.9
    # > 1: all but the last epoch with that many steps per call, the last one recompiled at one
    # step per call for the monitor (pays off on TensorFlow, whose per-call overhead is most of
    # a step here; JAX's is not: at 1 the last epoch reuses the compiled step)
    steps_per_execution: int = 1
    seeds: tuple = (1, 2, 3)
    score_epochs: int = 5
    n_tau: float = 3.0
    eta_grid: tuple = (0.025, 0.05, 0.1, 0.2, 0.4)
    lambda_factor: float = 2.0
    lambda_points: int = 5
    eta_lambda_eta: float = 0.1
    eta_lambda_points: int = 7
    sphere_points: int = 11
    # the sphere arm's Δθ range starts this factor below (a)'s smallest equilibrium Δθ: the
    # angles that the decayed arms reach only off equilibrium in this budget (their floor is
    # set by n_tau relaxation times) are in reach of the sphere at once. 16: the no-decay
    # reference ends its runs turning by ~0.001 rad/step, 1/9 of this budget's floor, and the
    # sphere's best η must lie inside its grid, not on its edge
    sphere_below: float = 16.0
    pilot_etas: tuple = (0.003, 0.03, 0.3)
    # None: as long as the grid runs, so that the pilot measures Δθ/η at the stage of training
    # where the grid runs are measured (the last epoch)
    pilot_epochs: int | None = None
    reference: bool = True
    train_split: str = "train[:3000]"
    validation_split: str = "train[3000:]"
    dataset: str = "mnist1d"
    arch: str = "cnn1d"
    norm: str = "batch"
    # which kernels λ acts on in arms (a), (b), (d): "scale_invariant" (the BN'd conv kernels
    # only; every arm leaves the classifier undecayed, as the sphere arm does) or "all" (every
    # kernel, the tuning space's own decay modes: λ then also regularizes the classifier)
    decay_scope: str = "scale_invariant"
    workers: int = 2
    backend: str = "jax"
    quick: bool = False

    def steps_per_epoch(self) -> int:
        n = nr_data.info(self.dataset).splits
        size = _split_size(self.train_split, n)
        return math.ceil(size / self.batch_size)

    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch()


def _split_size(split, sizes):
    """Examples in a split string of the embedded set (``train[:3000]`` etc.)."""
    return sum(stop - start for _, start, stop in nr_splits.resolve(split, sizes))


def make_settings(*, quick=False, **overrides) -> Settings:
    """The full study's settings, or the miniature (``quick``: 2×2 grids, 2-point 1-D grids,
    2 epochs, 1 seed, 2 pilots of 1 epoch), with ``overrides`` (None values ignored)."""
    base = {}
    if quick:
        base = {"epochs": 2, "seeds": (1,), "score_epochs": 1, "eta_grid": (0.05, 0.2),
                "lambda_points": 2, "lambda_factor": 4.0, "eta_lambda_points": 2,
                "sphere_points": 2, "pilot_etas": (0.03, 0.3), "pilot_epochs": 1,
                "quick": True}
    base.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(base) - {f.name for f in dataclasses.fields(Settings)})
    if unknown:
        raise ValueError(f"Unknown study setting(s) {unknown}; valid: "
                         f"{[f.name for f in dataclasses.fields(Settings)]}. "
                         f"Received: overrides={ {k: base[k] for k in unknown} !r}")
    if base.get("pilot_epochs") is None:
        base["pilot_epochs"] = base.get("epochs", Settings.epochs)
    if "score_epochs" not in base and isinstance(base.get("epochs"), int):
        base["score_epochs"] = max(1, min(Settings.score_epochs, base["epochs"]))
    s = Settings(**base)
    check_number("epochs", s.epochs, low=1, integer=True)
    check_number("batch_size", s.batch_size, low=1, integer=True)
    check_number("momentum", s.momentum, low=0, high=1, high_inclusive=False)
    check_number("steps_per_execution", s.steps_per_execution, low=1, integer=True)
    check_number("score_epochs", s.score_epochs, low=1, high=s.epochs, integer=True)
    check_number("workers", s.workers, low=1, integer=True)
    check_number("pilot_epochs", s.pilot_epochs, low=1, integer=True)
    if not isinstance(s.reference, bool):
        raise ValueError(f"Argument `reference` must be True or False. "
                         f"{received('reference', s.reference)}")
    check_number("n_tau", s.n_tau, low=0, low_inclusive=False)
    check_number("lambda_factor", s.lambda_factor, low=1, low_inclusive=False)
    check_number("sphere_below", s.sphere_below, low=1)
    for name in ("lambda_points", "eta_lambda_points", "sphere_points"):
        check_number(name, getattr(s, name), low=1, integer=True)
    if not s.seeds or len(set(s.seeds)) != len(s.seeds) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in s.seeds):
        raise ValueError(f"Argument `seeds` must be a non-empty tuple of distinct ints. "
                         f"{received('seeds', s.seeds)}")
    for name in ("eta_grid", "pilot_etas"):
        values = getattr(s, name)
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 and math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"Argument `{name}` must be a non-empty tuple of numbers > 0. "
                             f"{received(name, values)}")
    if s.decay_scope not in DECAY_SCOPES:
        raise ValueError(f"Argument `decay_scope` must be one of {list(DECAY_SCOPES)}. "
                         f"{received('decay_scope', s.decay_scope)}")
    if s.backend not in ("tensorflow", "jax", "torch"):
        raise ValueError(f"Argument `backend` must be 'tensorflow', 'jax' or 'torch'. "
                         f"{received('backend', s.backend)}")
    return s


# ------------------------------------------------------------------------------ the theory
def eta_lambda_floor(total_steps, n_tau=3.0) -> float:
    """The smallest ηλ whose runs reach equilibrium: ``n_tau`` relaxation times ``1/(2ηλ)``
    in ``total_steps`` steps, i.e. ``ηλ = n_tau / (2·total_steps)``."""
    check_number("total_steps", total_steps, low=1)
    check_number("n_tau", n_tau, low=0, low_inclusive=False)
    return n_tau / (2.0 * total_steps)


def log_grid(low, high, n) -> list[float]:
    """``n`` log-spaced values from ``low`` to ``high`` (both included; ``[low]`` for n=1)."""
    check_number("low", low, low=0, low_inclusive=False)
    check_number("high", high, low=low)
    check_number("n", n, low=1, integer=True)
    if n == 1:
        return [float(low)]
    r = (high / low) ** (1.0 / (n - 1))
    return [float(low * r ** i) for i in range(n)]


def equilibrium_theta(arm, eta, lam, momentum) -> float:
    """The predicted equilibrium angular update per step (rad) of a BN'd kernel for an arm's
    point: decoupled arms ``sqrt(2ηλ(1−α)/(1+α))``, coupled ``sqrt(2ηλ/(1+α))`` (λ the
    PyTorch-style coefficient, penalty (λ/2)·Σw²); NaN for the sphere arm (no λ)."""
    if arm not in ALL_ARMS:
        raise ValueError(f"Argument `arm` must be one of {list(ALL_ARMS)}. "
                         f"{received('arm', arm)}")
    if arm in ("sphere", REFERENCE) or not lam:
        return float("nan")
    if arm == "coupled":
        return equilibrium_angular_update("sgd", learning_rate=eta, l2=lam / 2.0,
                                          momentum=momentum)
    return equilibrium_angular_update("sgd", learning_rate=eta, weight_decay=lam,
                                      momentum=momentum)


def fit_rate(etas, thetas) -> dict:
    """Fit ``Δθ = c·η^p`` through pilot measurements (``p = 1`` for a single one):
    ``{"c", "p"}``. The sphere theory says ``Δθ ≈ η·‖∇f(ŵ)‖·gain`` (p = 1 at a fixed gradient
    norm); the fitted p says how the gradient norm changes with η."""
    etas, thetas = [float(e) for e in etas], [float(t) for t in thetas]
    if not etas or len(etas) != len(thetas) or not all(
            math.isfinite(v) and v > 0 for v in etas + thetas):
        raise ValueError(f"Arguments `etas` and `thetas` must be equally long non-empty lists "
                         f"of numbers > 0. Received: etas={etas!r}, thetas={thetas!r}")
    if len(set(etas)) == 1:
        return {"c": float(np.mean(thetas)) / etas[0], "p": 1.0}
    p, log_c = np.polyfit(np.log(etas), np.log(thetas), 1)
    if not p > 0.2:  # a flat or inverted fit would blow the grid up: keep the theory's p = 1
        return {"c": float(np.exp(np.mean(np.log(thetas) - np.log(etas)))), "p": 1.0,
                "fitted_p": float(p)}
    return {"c": float(np.exp(log_c)), "p": float(p)}


def sphere_eta_grid(theta_min, theta_max, n, rate) -> list[float]:
    """The sphere arm's η grid: ``n`` log-spaced target angles from ``theta_min`` to
    ``theta_max``, each mapped back through ``rate`` (``{"c", "p"}`` of :func:`fit_rate`):
    ``η = (Δθ/c)^(1/p)``."""
    c, p = float(rate["c"]), float(rate["p"])
    check_number("rate['c']", c, low=0, low_inclusive=False)
    check_number("rate['p']", p, low=0, low_inclusive=False)
    return [float((t / c) ** (1.0 / p)) for t in log_grid(theta_min, theta_max, n)]


def arm_grids(settings: Settings, rate=None) -> dict:
    """``{arm: [point, ...]}``, a point being ``{"eta", "lambda", "eta_lambda",
    "theta_pred"}`` (λ None for the sphere arm); the sphere arm needs ``rate`` (else it is
    left out). Also returns the shared facts under ``"_facts"``."""
    s = settings
    etas = sorted(float(e) for e in s.eta_grid)
    floor = eta_lambda_floor(s.total_steps(), s.n_tau)
    lam_min = floor / etas[0]
    lams = [lam_min * s.lambda_factor ** i for i in range(s.lambda_points)]
    a = s.momentum

    def point(arm, eta, lam):
        return {"eta": eta, "lambda": lam, "eta_lambda": None if lam is None else eta * lam,
                "theta_pred": equilibrium_theta(arm, eta, lam, a)}

    grids = {"decoupled": [point("decoupled", e, lam) for e in etas for lam in lams],
             "coupled": [point("coupled", e, lam * (1 - a)) for e in etas for lam in lams]}
    el = [p["eta_lambda"] for p in grids["decoupled"]]
    e0 = float(s.eta_lambda_eta)
    grids["eta_lambda"] = [point("eta_lambda", e0, v / e0)
                           for v in log_grid(min(el), max(el), s.eta_lambda_points)]
    thetas = [p["theta_pred"] for p in grids["decoupled"]]
    theta_min, theta_max = min(thetas), max(thetas)
    sphere_lo = theta_min / float(s.sphere_below)
    if rate is not None:
        grids["sphere"] = [point("sphere", e, None)
                           for e in sphere_eta_grid(sphere_lo, theta_max, s.sphere_points, rate)]
        for p, t in zip(grids["sphere"], log_grid(sphere_lo, theta_max, s.sphere_points),
                        strict=True):
            p["theta_target"] = t
    if s.reference:
        grids[REFERENCE] = [point(REFERENCE, e, None) for e in etas]
    grids["_facts"] = {"eta_lambda_min": floor, "lambda_grid": lams,
                       "theta_min": theta_min, "theta_max": theta_max,
                       "sphere_theta_min": sphere_lo,
                       "total_steps": s.total_steps(), "steps_per_epoch": s.steps_per_epoch(),
                       "tau_steps_max": 1.0 / (2.0 * floor)}
    return grids


def equilibrium_steps(theta, momentum, n_tau) -> dict:
    """What decoupled decay needs to settle a scale-invariant kernel at the angle ``theta``
    per step: ``ηλ = Δθ²(1+α)/(2(1−α))`` (the inverse of the equilibrium formula), its
    relaxation time ``τ = 1/(2ηλ)`` and ``n_tau·τ`` steps."""
    check_number("theta", theta, low=0, low_inclusive=False)
    check_number("momentum", momentum, low=0, high=1, high_inclusive=False)
    check_number("n_tau", n_tau, low=0, low_inclusive=False)
    el = theta ** 2 * (1 + momentum) / (2 * (1 - momentum))
    tau = 1.0 / (2.0 * el)
    return {"eta_lambda": el, "tau": tau, "steps": n_tau * tau}


# ------------------------------------------------------------------------------ one run
def _recipe(settings: Settings, arm, point, seed, epochs, name="eta_only"):
    s = settings
    base = nr_config.resolve({
        "name": name,
        "model": {"arch": s.arch, "norm": s.norm},
        "data": {"dataset": s.dataset, "batch_size": s.batch_size,
                 "train_split": s.train_split, "validation_split": s.validation_split},
        "optimizer": {"learning_rate": point["eta"], "momentum": s.momentum},
        "schedule": {"kind": "constant"},
        "train": {"epochs": epochs, "seed": seed, "verbose": 0}})
    decay = DECAY_MODE[arm]
    raw_space = {"norms": [s.norm], "decay": [decay], "learning_rate": point["eta"]}
    if nr_space.DECAY_MODES[decay][0]:
        raw_space["lambda"] = point["lambda"]
    space = nr_space.resolve_space(raw_space)
    trial = {"norm": s.norm, "decay": decay, "learning_rate": point["eta"],
             "lambda": point["lambda"] if nr_space.DECAY_MODES[decay][0] else None}
    cfg = nr_space.trial_recipe(base, trial, space, name)
    if s.decay_scope == "scale_invariant" and decay in ("decoupled", "l2"):
        invariant, others = kernel_paths(s.arch, s.norm)
        if decay == "decoupled":  # the other kernels join the exclusion rules
            cfg["optimizer"]["exclude"] = [*cfg["optimizer"]["exclude"],
                                           *(selectors.exact_path(p) for p in others)]
        else:  # the penalty on the scale-invariant kernels only
            cfg["regularization"]["targets"] = [selectors.exact_path(p) for p in invariant]
        cfg = nr_config.resolve(nr_config.drop_none(cfg))
    return cfg


@functools.lru_cache(maxsize=8)
def kernel_paths(arch, norm):
    """``(scale-invariant kernels, other kernels)`` of the zoo model: variable paths."""
    model = zoo.create(arch, norm=norm)
    found = {p for p, v in find_scale_invariant(model).items() if v.invariant}
    kernels = [v.path for v in model.trainable_variables if v.path.endswith("/kernel")]
    return (tuple(p for p in kernels if p in found), tuple(p for p in kernels if p not in found))


class _ValScore(keras.callbacks.Callback):
    """Validation accuracy and loss at the end of the chosen epochs (one forward pass over the
    held-out arrays, no compiled evaluate function)."""

    def __init__(self, x, y, epochs):
        super().__init__()
        self.x, self.y, self.epochs, self.values = x, y, set(epochs), {}

    def measure(self):
        logits = keras.ops.convert_to_numpy(self.model(self.x, training=False))
        logits = logits.astype(np.float64)
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        acc = float(np.mean(np.argmax(logits, axis=1) == self.y))
        loss = float(-np.mean(logp[np.arange(len(self.y)), self.y]))
        return acc, loss

    def on_epoch_end(self, epoch, logs=None):
        if epoch in self.epochs:
            self.values[epoch] = self.measure()


def _compile(model, cfg, steps, spe, optimizer=None):
    optimizer = optimizer or nr_train.build_optimizer(cfg, steps, model)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], steps_per_execution=spe)
    return model


def _conv_means(monitor):
    """Means over the last epoch's monitored steps and over the tracked (BN'd conv) kernels."""
    out = {}
    for metric in ("unit_angular_update", "unit_norm", "unit_effective_lr", "angular_update",
                   "predicted_angular_update"):
        vals = []
        for h in monitor.history.values():
            if metric in h and len(h[metric]):
                last = h["epoch"] == np.max(h["epoch"])
                vals.append(float(np.mean(np.asarray(h[metric])[last])))
        out[metric] = float(np.mean(vals)) if vals else float("nan")
    return out


def train_one(task) -> dict:
    """One training run (in a worker process): ``task`` = ``{"settings": dict, "arm", "point"
    (its index), "grid_point" (η, λ, ...), "seed", "epochs", "pilot"}``; returns its record."""
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v
                    for k, v in task["settings"].items()})
    arm, gp, seed, epochs = task["arm"], task["grid_point"], task["seed"], task["epochs"]
    t0 = time.perf_counter()
    keras.backend.clear_session()
    cfg = _recipe(s, arm, gp, seed, epochs)
    # TensorFlow combines the global seed with tf.data's op seeds: set it before building the
    # data streams, so that a run's batches do not depend on the runs before it in this worker
    keras.utils.set_random_seed(seed)
    data = nr_train.prepare_data(cfg)
    xv, yv = _validation_arrays(s.dataset, s.validation_split)
    keras.utils.set_random_seed(seed)
    model = nr_train.build_model(cfg)
    _compile(model, cfg, data.steps, s.steps_per_execution)
    treated = _treatment(model)
    score_epochs = range(epochs - s.score_epochs, epochs)
    val = _ValScore(xv, yv, score_epochs)
    nan = keras.callbacks.TerminateOnNaN()
    monitor = NormMonitor(every_n_steps=1, layers="scale_invariant", per_unit=True, warn=False)
    losses = []
    if epochs > 1:
        hist = model.fit(data.train, epochs=epochs - 1, steps_per_epoch=data.steps,
                         callbacks=[val, nan], shuffle=False, verbose=0)
        losses += hist.history["loss"]
    if not _bad(losses):
        # the last epoch one step per call, monitored: same optimizer (its state kept), the
        # data stream from that epoch on
        last = nr_train.prepare_data(cfg, start_epoch=epochs - 1)
        if s.steps_per_execution > 1:
            _compile(model, cfg, data.steps, 1, optimizer=model.optimizer)
        hist = model.fit(last.train, initial_epoch=epochs - 1, epochs=epochs,
                         steps_per_epoch=data.steps, callbacks=[val, nan, monitor],
                         shuffle=False, verbose=0)
        losses += hist.history["loss"]
    diverged = _bad(losses)
    if diverged or not val.values:
        acc, vloss = val.measure()
        scores = [acc]
    else:
        scores = [val.values[e][0] for e in sorted(val.values)]
        vloss = val.values[max(val.values)][1]
    means = _conv_means(monitor) if monitor.history else {}
    rec = {"arm": arm, "point": task["point"], "seed": seed, "pilot": bool(task.get("pilot")),
           "eta": gp["eta"], "lambda": gp["lambda"], "eta_lambda": gp["eta_lambda"],
           "theta_pred": gp["theta_pred"], "epochs": epochs,
           "score": float(np.mean(scores)), "val_accuracy_last": scores,
           "val_loss": vloss, "train_loss": float(losses[-1]) if losses else float("nan"),
           "diverged": bool(diverged),
           "theta_measured": means.get("unit_angular_update", float("nan")),
           "theta_whole_kernel": means.get("angular_update", float("nan")),
           "theta_pred_monitor": means.get("predicted_angular_update", float("nan")),
           "unit_norm": means.get("unit_norm", float("nan")),
           "unit_effective_lr": means.get("unit_effective_lr", float("nan")),
           "treatment": treated, "seconds": round(time.perf_counter() - t0, 2),
           "worker": os.getpid(), "rss_mb": _rss_mb()}
    keras.backend.clear_session()
    return rec


def _rss_mb():
    """This process's resident memory in MiB (None where /proc is not there)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    return None


def _treatment(model) -> dict:
    """What λ acts on: ``{"decay": [...], "sphere": [...], "penalty": [...]}`` (variable
    paths decayed by the decoupled optimizer, kept on the sphere, or carrying a
    regularizer)."""
    out = {"decay": [], "sphere": [], "penalty": []}
    plan = getattr(model.optimizer, "decay_plan", None)
    if plan is not None:
        decays = float(getattr(model.optimizer, "weight_decay", 0.0) or 0.0) > 0
        for path, kind in plan(model.trainable_variables).items():
            if kind == "sphere" or (kind == "decay" and decays):
                out[kind].append(path)
    out["penalty"] = [v.path for v in model.trainable_variables
                      if getattr(v, "regularizer", None) is not None]
    return out


@functools.lru_cache(maxsize=4)
def _validation_arrays(dataset, split):
    """The held-out examples, read once per worker process."""
    return nr_data.arrays(dataset, split)


def _bad(losses):
    return any(not math.isfinite(v) for v in losses)


# ------------------------------------------------------------------------------ the pool
def worker_env(s):
    """The workers' environment: the backend, and the cores shared out as TF/OpenMP threads."""
    threads = max(1, (os.cpu_count() or 1) // s.workers)
    env = {"KERAS_BACKEND": s.backend, "TF_NUM_INTRAOP_THREADS": threads,
           "TF_NUM_INTEROP_THREADS": 1, "OMP_NUM_THREADS": threads, "TF_CPP_MIN_LOG_LEVEL": 2}
    if threads == 1:  # XLA's CPU client (JAX) on one thread too
        env["XLA_FLAGS"] = " ".join(filter(None, (
            os.environ.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false",
            "intra_op_parallelism_threads=1")))
    return env
