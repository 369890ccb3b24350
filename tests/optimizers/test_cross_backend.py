"""The optimizers and constraints give the same numbers on the TensorFlow, JAX and torch backends.

One subprocess per backend (a Keras backend is fixed per process) applies two steps of SGDW,
AdamW (DecoupledWeightDecay around Keras' Adam), SGDP, AdamP and of SGD with the UnitNorm /
MaxNorm constraints to the same NumPy-seeded float32 weights with the same given gradients
(``apply`` with fixed gradients: no model, no randomness) and prints the weights. The backends
are compared with each other, and SGDW / AdamW with a float64 NumPy transcription of their
formulas.

Tolerance (float32, |w| ~ 0.1-2): each backend rounds differently (reduction order, XLA's
fused multiply-adds, oneDNN kernels, torch's ``w·(1 − λ·lr)`` form of the decay): a few float32
roundings (~6e-8 relative each) per operation chain, amplified at most a few times by Adam's
division by √v and the norm divisions over two steps. Measured: at most 1.2e-7 between backends
(1-2 ulp; SGDP/AdamP bit-identical) and 2.4e-7 against the float64 references.
``rtol=atol=1e-6`` leaves a ~10x margin and stays far below any formula difference: the
smallest effect checked, the decay over two steps, moves the kernel by ~lr·λ·|w| ≥ 5e-4·|w|
(asserted to be outside the tolerance below).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.backend_marks import spawns_backends

pytestmark = spawns_backends

BACKENDS = ("tensorflow", "jax", "torch")
RTOL, ATOL = 1e-6, 1e-6
LR_SGD, LR_ADAM, MU, LAM = 0.1, 0.01, 0.9, 0.05

SCRIPT = textwrap.dedent(
    r"""
    import json
    import sys

    import numpy as np

    try:
        import keras_normreg  # noqa: F401
    except ImportError as err:  # the backend guard refuses this backend (yet)
        print("UNSUPPORTED " + str(err).replace("\n", " "))
        sys.exit(0)
    import keras
    from keras import ops

    from keras_normreg import constraints, optimizers

    rng = np.random.default_rng(0)
    W = {"kernel": rng.normal(size=(4, 3)).astype("float32"),
         "bias": rng.normal(size=(3,)).astype("float32")}
    R = [rng.normal(size=(4, 3)) for _ in range(2)]
    K = W["kernel"].astype(np.float64)
    # step 1: kernel gradient orthogonal to each column of W (cos ~ 1e-8: SGDP/AdamP project
    # per channel); step 2: a large radial part (cos >> δ/√fan: no projection). Both far from
    # the thresholds, so every backend takes the same branch.
    G = [{"kernel": (R[0] - K * (K * R[0]).sum(0) / (K * K).sum(0)).astype("float32"),
          "bias": rng.normal(size=(3,)).astype("float32")},
         {"kernel": (R[1] + 2.0 * K).astype("float32"),
          "bias": rng.normal(size=(3,)).astype("float32")}]

    def run(make_opt, constraint=None):
        variables = [keras.Variable(W["kernel"], name="kernel"),
                     keras.Variable(W["bias"], name="bias")]
        variables[0].constraint = constraint  # as Layer.add_weight(constraint=...) sets it
        opt = make_opt()
        for g in G:
            opt.apply([ops.convert_to_tensor(g["kernel"]), ops.convert_to_tensor(g["bias"])],
                      variables)
        return {v.name: ops.convert_to_numpy(v).astype(float).tolist() for v in variables}

    LR_SGD, LR_ADAM, MU, LAM = __PARAMS__
    out = {
        "weights": {k: v.tolist() for k, v in W.items()},
        "grads": [{k: v.tolist() for k, v in g.items()} for g in G],
        "sgdw": run(lambda: optimizers.SGDW(LR_SGD, momentum=MU, weight_decay=LAM,
                                            exclude=("bias",))),
        "adamw": run(lambda: optimizers.AdamW(LR_ADAM, weight_decay=LAM, exclude=("bias",))),
        "sgdp": run(lambda: optimizers.SGDP(LR_SGD, momentum=MU, weight_decay=LAM)),
        "adamp": run(lambda: optimizers.AdamP(LR_ADAM, weight_decay=LAM)),
        "unit_norm": run(lambda: keras.optimizers.SGD(LR_SGD), constraints.UnitNorm()),
        "max_norm": run(lambda: keras.optimizers.SGD(LR_SGD), constraints.MaxNorm(1.0)),
    }
    print("RESULT " + json.dumps(out))
    """
).replace("__PARAMS__", repr((LR_SGD, LR_ADAM, MU, LAM)))


def _run(backend):
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    if importlib.util.find_spec(module) is None:
        return None, f"{module} is not installed"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("JAX_ENABLE_X64", None)  # float32 everywhere
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    for line in proc.stdout.splitlines():
        if line.startswith("UNSUPPORTED "):
            return None, line[len("UNSUPPORTED "):]
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):]), None
    pytest.fail(f"{backend} subprocess failed ({proc.returncode}):\n{proc.stdout}\n"
                f"{proc.stderr[-4000:]}")


@pytest.fixture(scope="module")
def results():
    return {backend: _run(backend) for backend in BACKENDS}


def _get(results, backend):
    out, why = results[backend]
    if out is None:
        pytest.skip(f"backend {backend} not available: {why}")
    return out


# ----------------------------------------------------------------------------- NumPy references
def ref_sgdw(w, grads, lam=LAM):
    """Keras SGD with momentum, decoupled decay of the kernel first (semantics="lr")."""
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    for g in grads:
        for k in w:
            if k == "kernel":
                w[k] = w[k] - w[k] * lam * LR_SGD
            m[k] = MU * m[k] - LR_SGD * np.asarray(g[k], np.float64)
            w[k] = w[k] + m[k]
    return w


def ref_adamw(w, grads, lam=LAM, b1=0.9, b2=0.999, eps=1e-7):
    """Keras Adam (ε before the bias correction), decoupled decay of the kernel first."""
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    for t, g in enumerate(grads, start=1):
        alpha = LR_ADAM * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for k in w:
            gk = np.asarray(g[k], np.float64)
            if k == "kernel":
                w[k] = w[k] - w[k] * lam * LR_ADAM
            m[k] = m[k] + (gk - m[k]) * (1 - b1)
            v[k] = v[k] + (gk * gk - v[k]) * (1 - b2)
            w[k] = w[k] - alpha * m[k] / (np.sqrt(v[k]) + eps)
    return w


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["sgdw", "adamw"])
def test_matches_numpy_reference(results, backend, name):
    out = _get(results, backend)
    reference = {"sgdw": ref_sgdw, "adamw": ref_adamw}[name]
    ref = reference(out["weights"], out["grads"])
    for k in ("kernel", "bias"):
        np.testing.assert_allclose(out[name][k], ref[k], rtol=RTOL, atol=ATOL,
                                   err_msg=f"{backend} {name} {k}")
    # the tolerance tells the decay apart: without it the kernel is far outside
    no_decay = reference(out["weights"], out["grads"], lam=0.0)
    assert np.abs(no_decay["kernel"] - np.asarray(out[name]["kernel"])).max() > 100 * ATOL


@pytest.mark.parametrize("name", ["sgdw", "adamw", "sgdp", "adamp", "unit_norm", "max_norm"])
def test_backends_agree(results, name):
    available = [b for b in BACKENDS if results[b][0] is not None]
    if len(available) < 2:
        pytest.skip(f"fewer than 2 backends available: {[(b, results[b][1]) for b in BACKENDS]}")
    for a, b in itertools.combinations(available, 2):
        for k in ("kernel", "bias"):
            np.testing.assert_allclose(results[a][0][name][k], results[b][0][name][k],
                                       rtol=RTOL, atol=ATOL, err_msg=f"{name} {k}: {a} vs {b}")


def test_constraints_hold_on_every_backend(results):
    """Independent check of the constraint outputs: unit column norms, norms capped at 1."""
    for backend in BACKENDS:
        out = results[backend][0]
        if out is None:
            continue
        unit = np.linalg.norm(np.asarray(out["unit_norm"]["kernel"]), axis=0)
        np.testing.assert_allclose(unit, 1.0, rtol=1e-6, err_msg=backend)
        capped = np.linalg.norm(np.asarray(out["max_norm"]["kernel"]), axis=0)
        assert (capped <= 1.0 + 1e-6).all(), (backend, capped)
