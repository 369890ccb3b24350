"""The grokking study's settings, grids and training runs (one run per worker task)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import time

import keras
import numpy as np

from keras_normreg import data as nr_data
from keras_normreg import regularizers, zoo
from keras_normreg._utils import check_number, environ, received
from keras_normreg.data import modular
from keras_normreg.optimizers import DecoupledWeightDecay

from .. import eta_only
from . import analysis

#: The arms, in report order (the last is the reference, outside the comparison).
ARMS = ("adamw", "l2", "sphere", "ngpt", "none")
REFERENCE = "none"
#: The arms whose scale-invariant weights are on the sphere (claims 2 and 3).
SPHERE_ARMS = ("sphere", "ngpt")
LETTERS = {"adamw": "a", "l2": "b", "sphere": "c", "ngpt": "d", "none": "e"}
TITLES = {"adamw": "AdamW, (η, λ) grid, decoupled decay",
          "l2": "Adam + coupled L2(λ/2), (η, λ) grid",
          "sphere": "QK-norm GPT, Q/K kernels on the sphere, η grid, λ = 0",
          "ngpt": "nGPT preset (every matrix on the sphere), η grid",
          "none": "reference: no normalization, no decay, η grid"}

#: Seconds per training step of one run (Adam on gpt_modular width 64, p = 97, batch 512, JAX,
#: XLA's CPU client on the worker's core), per evaluation (a forward pass over the 2823 + 6586
#: equations) and per run (worker start, build, compiling the k-step call). What --dry-run
#: multiplies; the study writes its own measured time in the report, and `--calibrate`
#: measures again.
MEASURED_TIMING = {"s_per_step": 0.028, "s_per_eval": 0.1, "overhead_s": 15.0,
                   "measured": "pilots of 2026-12-06 (seed 1, one process at load ~8 beside "
                               "niced jobs): width 64 AdamW 2,800 steps in 84 s all in, the "
                               "sphere arm 35 ms/step, nGPT 25 ms/step; width 128 measured "
                               "60-75 ms of CPU per step (so 8,000-step runs of width 128 "
                               "would need ~200 min for the study)"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that defines the study (stored in ``results.json``)."""

    p: int = 97
    train_fraction: int = 30  # percent
    width: int = 64
    heads: int = 4
    batch_size: int = 512
    max_steps: int = 8000
    eval_every: int = 100
    patience: int = 3  # evaluations at >= 99% validation accuracy before a run stops
    beta_1: float = 0.9
    beta_2: float = 0.98
    lambdas: tuple = (0.0, 0.1, 0.3, 1.0, 3.0)
    etas_2d: tuple = (1e-3,)
    etas_sphere: tuple = (1e-3, 3e-3, 1e-2)
    etas_ngpt: tuple = (1e-3, 3e-3, 1e-2)
    etas_none: tuple = (1e-3,)
    seeds: tuple = (1, 2, 3)
    seeds_l2: tuple = (1, 2)
    seeds_none: tuple = (1, 2)
    norm: str = "layer"
    workers: int = 2
    backend: str = "jax"
    quick: bool = False

    def dataset(self) -> str:
        return "modular_add" if self.p == modular.DEFAULT_P else f"modular_add/p_{self.p}"

    def splits(self) -> tuple[str, str]:
        f = self.train_fraction
        return f"train[:{f}%]", f"train[{f}%:]"


QUICK = {"p": 11, "train_fraction": 50, "width": 16, "heads": 2, "batch_size": 32,
         "max_steps": 60, "eval_every": 10, "patience": 2, "lambdas": (0.0, 1.0),
         "etas_2d": (3e-2,), "etas_sphere": (3e-2,), "etas_ngpt": (3e-2,), "etas_none": (3e-2,),
         "seeds": (1,), "seeds_l2": (1,), "seeds_none": (1,), "quick": True}


def make_settings(*, quick=False, **overrides) -> Settings:
    """The full study's settings or the miniature (``quick``: p = 11, width 16, 60 steps, one
    seed), with ``overrides`` (None values ignored); validated."""
    base = dict(QUICK) if quick else {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    names = [f.name for f in dataclasses.fields(Settings)]
    unknown = sorted(set(base) - set(names))
    if unknown:
        raise ValueError(f"Unknown study setting(s) {unknown}; valid: {names}. "
                         f"Received: overrides={ {k: base[k] for k in unknown} !r}")
    base = {k: tuple(v) if isinstance(v, list) else v for k, v in base.items()}
    s = Settings(**base)
    problem = modular.prime_problem(s.p)
    if problem:
        raise ValueError(f"Argument `p` must be a prime in [3, {modular.MAX_P}] ({problem}). "
                         f"{received('p', s.p)}")
    check_number("train_fraction", s.train_fraction, low=1, high=99, integer=True)
    for name in ("width", "heads", "batch_size", "max_steps", "eval_every", "patience",
                 "workers"):
        check_number(name, getattr(s, name), low=1, integer=True)
    if s.width % s.heads:
        raise ValueError(f"Argument `heads` must divide width={s.width}. "
                         f"{received('heads', s.heads)}")
    for name in ("beta_1", "beta_2"):
        check_number(name, getattr(s, name), low=0, high=1, high_inclusive=False)
    for name in ("etas_2d", "etas_sphere", "etas_ngpt", "etas_none", "lambdas"):
        values = getattr(s, name)
        low = 0 if name == "lambdas" else None
        if not isinstance(values, tuple) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and (v >= 0 if low == 0 else v > 0) for v in values):
            raise ValueError(f"Argument `{name}` must be a non-empty tuple of numbers "
                             f"{'>= 0' if low == 0 else '> 0'}. {received(name, values)}")
    for name in ("seeds", "seeds_l2", "seeds_none"):
        v = getattr(s, name)
        if not isinstance(v, tuple) or not v or len(set(v)) != len(v) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise ValueError(f"Argument `{name}` must be a non-empty tuple of distinct ints. "
                             f"{received(name, v)}")
    if s.norm not in ("layer", "rms"):
        raise ValueError(f"Argument `norm` must be 'layer' or 'rms'. {received('norm', s.norm)}")
    if s.backend not in ("tensorflow", "jax", "torch"):
        raise ValueError(f"Argument `backend` must be 'tensorflow', 'jax' or 'torch'. "
                         f"{received('backend', s.backend)}")
    return s


def grids(s: Settings) -> dict:
    """``{arm: [{"eta", "lambda"}, ...]}`` in grid order."""
    two_d = [{"eta": float(e), "lambda": float(v)} for e in s.etas_2d for v in s.lambdas]
    return {"adamw": two_d, "l2": [dict(p) for p in two_d],
            "sphere": [{"eta": float(e), "lambda": None} for e in s.etas_sphere],
            "ngpt": [{"eta": float(e), "lambda": None} for e in s.etas_ngpt],
            "none": [{"eta": float(e), "lambda": None} for e in s.etas_none]}


def seeds_of(s: Settings, arm) -> tuple:
    return {"l2": s.seeds_l2, "none": s.seeds_none}.get(arm, s.seeds)


def tasks(s: Settings) -> list[dict]:
    """One task per (arm, point, seed) to train. Arm (b)'s λ = 0 points are arm (a)'s λ = 0
    runs (both are plain Adam without any decay: the same configuration), not trained twice."""
    sdict = dataclasses.asdict(s)
    out = []
    for arm, pts in grids(s).items():
        for i, gp in enumerate(pts):
            if arm == "l2" and gp["lambda"] == 0.0:
                continue
            for seed in seeds_of(s, arm):
                out.append({"settings": sdict, "arm": arm, "point": i, "grid_point": gp,
                            "seed": seed})
    return out


def shared_runs(s: Settings, runs) -> list[dict]:
    """Arm (b)'s λ = 0 records, copied from arm (a)'s (marked ``shared``)."""
    g = grids(s)["l2"]
    out = []
    for i, gp in enumerate(g):
        if gp["lambda"] != 0.0:
            continue
        j = grids(s)["adamw"].index(gp)
        for r in runs:
            if r["arm"] == "adamw" and r["point"] == j and r["seed"] in s.seeds_l2:
                out.append({**r, "arm": "l2", "point": i, "shared": True})
    return out


# ------------------------------------------------------------------------------ one run
def build(s: Settings, arm, gp):
    """The model and optimizer of an arm's point (after the seed is set)."""
    p = s.p
    kw = {"num_classes": modular.num_classes(p), "vocab_size": modular.vocab_size(p),
          "width": s.width, "heads": s.heads}
    if arm == "none":
        model = zoo.create("gpt_modular", norm="none", **kw)
    elif arm == "ngpt":
        model = zoo.create("gpt_modular", ngpt=True, **kw)
    else:
        model = zoo.create("gpt_modular", norm=s.norm, qk_norm=arm == "sphere", **kw)
    adam = keras.optimizers.Adam(gp["eta"], beta_1=s.beta_1, beta_2=s.beta_2)
    if arm == "adamw":
        # decays the matrices and embeddings; biases and norm parameters excluded (default)
        opt = DecoupledWeightDecay(adam, gp["lambda"])
    elif arm == "sphere":
        opt = DecoupledWeightDecay(adam, 0.0, scale_invariant="sphere").bind(model)
    else:
        opt = adam
        if arm == "l2" and gp["lambda"]:
            regularizers.apply(model, regularizers.L2(gp["lambda"] / 2.0),
                               targets=("kernel", "embeddings"), skip_scale_invariant=False)
    model.compile(optimizer=opt,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=s.eval_every)
    return model


def _treatment(model) -> dict:
    """Which variables are decayed / on the sphere / penalized / constrained."""
    out = {"decay": [], "sphere": [], "penalty": [], "unit_norm": []}
    plan = getattr(model.optimizer, "decay_plan", None)
    if plan is not None:
        decays = float(getattr(model.optimizer, "weight_decay", 0.0) or 0.0) > 0
        for path, kind in plan(model.trainable_variables).items():
            if kind == "sphere" or (kind == "decay" and decays):
                out[kind].append(path)
    for v in model.trainable_variables:
        if getattr(v, "regularizer", None) is not None:
            out["penalty"].append(v.path)
        if v.constraint is not None:
            out["unit_norm"].append(v.path)
    return out


def _matrices(model):
    """The weights the norm statistics read: matrices and embeddings (rank >= 2)."""
    return [v for v in model.trainable_variables if len(v.shape) >= 2]


def _angle(a, b):
    """Angle between two flattened weights (2·atan2 form, accurate for small angles)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return math.nan
    ua, ub = a / na, b / nb
    return float(2 * np.arctan2(np.linalg.norm(ua - ub), np.linalg.norm(ua + ub)))


def _accuracy_loss(model, x, y):
    logits = keras.ops.convert_to_numpy(model.predict_on_batch(x)).astype(np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return (float(np.mean(np.argmax(logits, axis=1) == y)),
            float(-np.mean(logp[np.arange(len(y)), y])))


def _batches(rng, n, batch, count):
    """``count`` batches of indices: epochs in random order, one after the other, so that
    every training example is seen once per epoch (a batch may span two epochs)."""
    need = batch * count
    order = [rng.permutation(n) for _ in range(math.ceil(need / n) + 1)]
    return np.concatenate(order)[:need]


def train_one(task) -> dict:
    """One run (in a worker): train in calls of ``eval_every`` steps, evaluate after each,
    stop at ``max_steps`` or once :func:`analysis.should_stop`; returns its record with the
    curves (accuracies, losses, the weight norm per matrix and the net rotation per step of
    each matrix over the interval) and the grokking numbers."""
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v
                    for k, v in task["settings"].items()})
    arm, gp, seed = task["arm"], task["grid_point"], task["seed"]
    t0 = time.perf_counter()
    keras.backend.clear_session()
    tr, va = s.splits()
    x, y = nr_data.arrays(s.dataset(), tr)
    xv, yv = nr_data.arrays(s.dataset(), va)
    keras.utils.set_random_seed(seed)
    model = build(s, arm, gp)
    rng = np.random.default_rng(seed)
    mats = _matrices(model)
    paths = [v.path for v in mats]
    prev = [keras.ops.convert_to_numpy(v).ravel() for v in mats]
    curves = {"step": [], "train_acc": [], "val_acc": [], "train_loss": [], "val_loss": [],
              "norm": [], "norms": {p: [] for p in paths}, "angle": {p: [] for p in paths}}
    k = s.eval_every
    # the batches of the whole budget, drawn once (a stopped run leaves the rest unused)
    calls = math.ceil(s.max_steps / k)
    idx = _batches(rng, len(x), s.batch_size, calls * k).reshape(calls, k * s.batch_size)
    diverged, step = False, 0
    for c in range(calls):
        hist = model.fit(x[idx[c]], y[idx[c]], batch_size=s.batch_size, epochs=1,
                         shuffle=False, verbose=0)
        step += k
        loss = hist.history["loss"][-1]
        ta, tl = _accuracy_loss(model, x, y)
        vacc, vl = _accuracy_loss(model, xv, yv)
        now = [keras.ops.convert_to_numpy(v).ravel() for v in mats]
        norms = [float(np.linalg.norm(w)) for w in now]
        curves["step"].append(step)
        for key, val in (("train_acc", ta), ("val_acc", vacc), ("train_loss", tl),
                         ("val_loss", vl)):
            curves[key].append(round(val, 6))
        curves["norm"].append(round(float(math.sqrt(sum(n * n for n in norms))), 5))
        for pth, n, a, b in zip(paths, norms, prev, now, strict=True):
            curves["norms"][pth].append(round(n, 5))
            curves["angle"][pth].append(float(f"{_angle(a, b) / k:.5g}"))
        prev = now
        if not (math.isfinite(loss) and math.isfinite(tl)):
            diverged = True
            break
        if analysis.should_stop(curves["val_acc"], patience=s.patience):
            break
    stats = analysis.delay_stats(curves["step"], curves["train_acc"], curves["val_acc"])
    at = {}
    for key, t in (("norm_at_gen", stats["t_val_high"] if stats["generalized"] else None),
                   ("norm_at_fit", stats["t_train"])):
        at[key] = None if t is None else curves["norm"][curves["step"].index(t)]
    rec = {"arm": arm, "point": task["point"], "seed": seed, "eta": gp["eta"],
           "lambda": gp["lambda"], "steps": step, "diverged": diverged, "stats": stats, **at,
           "curves": curves, "treatment": _treatment(model),
           "seconds": round(time.perf_counter() - t0, 2), "worker": os.getpid()}
    keras.backend.clear_session()
    return rec


# ------------------------------------------------------------------------------ the pool
def worker_env(s: Settings) -> dict:
    return eta_only._worker_env(s)


def estimate_seconds(s: Settings, timing=None) -> dict:
    """Worst case (every run to ``max_steps``) wall time over the workers: ``{"runs",
    "worst_s", "per_run_s"}``."""
    t = timing or MEASURED_TIMING
    n = len(tasks(s))
    evals = math.ceil(s.max_steps / s.eval_every)
    per_run = s.max_steps * t["s_per_step"] + evals * t["s_per_eval"] + t["overhead_s"]
    return {"runs": n, "per_run_s": per_run, "worst_s": n * per_run / s.workers}


def run_all(s: Settings, task_list, on_done=None) -> list[dict]:
    """Run ``task_list`` on ``s.workers`` spawned processes (the backend and one thread each,
    as eta_only's workers); ``on_done(record)`` after each."""
    out = []
    ctx = multiprocessing.get_context("spawn")
    with environ(worker_env(s)), concurrent.futures.ProcessPoolExecutor(
            max_workers=s.workers, mp_context=ctx) as pool:
        futures = [pool.submit(train_one, t) for t in task_list]
        for f in concurrent.futures.as_completed(futures):
            rec = f.result()
            out.append(rec)
            if on_done is not None:
                on_done(rec)
    return out
