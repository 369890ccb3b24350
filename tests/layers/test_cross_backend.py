"""The layers compute the same numbers on the tensorflow, jax and torch backends.

One subprocess per backend (``python -m tests.layers.test_cross_backend BACKEND OUT.npz``)
builds L1BatchNormalization, TopKBatchNormalization (direct and two-stage top-k) and
WeightNormalization(Dense / Conv2D) with the same NumPy-seeded weights and inputs, and saves the
forward output, the gradients of ``sum(y * c)`` w.r.t. the inputs and the kernel (``gamma`` for
the batch norms, ``v`` for weight normalization) and the moving statistics after one training
step. The tests compare the backends with each other and with NumPy formulas. The worker also
runs float64 layers (JAX with ``JAX_ENABLE_X64=1``) against float64 NumPy to ~1e-12: Python
constants (momentum, epsilon, sqrt(pi/2), C(n)) must not pass through float32.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.backend_marks import spawns_backends

pytestmark = spawns_backends

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BACKENDS = ("tensorflow", "jax", "torch")
MOMENTUM, EPSILON, K = 0.9, 1e-3, 3
# Float32 results of different backends differ by reduction order and fused kernels (oneDNN,
# XLA, ATen): a few ulps per reduction of ~100 terms, ~1e-6 relative; 1e-5 relative (plus a
# 1e-5 absolute floor for entries near zero) leaves a margin of ~10x and still catches any
# real difference (a wrong constant, axis or gradient is >= 1e-3).
RTOL, ATOL = 1e-5, 1e-5
# float64 end to end: NumPy and the backends agree to rounding (~1e-15); a float32 detour
# of a constant (0.9 -> 0.8999999761581421) is a 3e-8 relative error.
RTOL64 = 1e-12


def _inputs():
    rng = np.random.default_rng(0)
    return {
        "x_bn": (rng.normal(size=(8, 4, 4, 3)) * 2 + 1).astype("float32"),
        "c_bn": rng.normal(size=(8, 4, 4, 3)).astype("float32"),
        "x_bn2": (rng.normal(size=(16, 5)) * 3 - 2).astype("float32"),
        "c_bn2": rng.normal(size=(16, 5)).astype("float32"),
        "gamma": rng.uniform(0.5, 2.0, 3).astype("float32"),
        "beta": rng.normal(size=3).astype("float32"),
        "gamma2": rng.uniform(0.5, 2.0, 5).astype("float32"),
        "beta2": rng.normal(size=5).astype("float32"),
        "x_dense": rng.normal(size=(6, 5)).astype("float32"),
        "c_dense": rng.normal(size=(6, 4)).astype("float32"),
        "v_dense": rng.normal(size=(5, 4)).astype("float32"),
        "g_dense": rng.uniform(0.5, 2.0, 4).astype("float32"),
        "b_dense": rng.normal(size=4).astype("float32"),
        "x_conv": rng.normal(size=(2, 5, 5, 2)).astype("float32"),
        "c_conv": rng.normal(size=(2, 5, 5, 3)).astype("float32"),
        "v_conv": rng.normal(size=(3, 3, 2, 3)).astype("float32"),
        "g_conv": rng.uniform(0.5, 2.0, 3).astype("float32"),
        "b_conv": rng.normal(size=3).astype("float32"),
        "x64": rng.normal(size=(64, 3)) * 1.7 + 0.3,
    }


def _worker(out_path):  # pragma: no cover - runs in the subprocess
    import keras

    from keras_normreg import layers
    from tests.helpers import gradients

    d = _inputs()
    ops = keras.ops
    out = {}

    def run(name, layer, x, c, kernel):
        def loss(xt):
            return ops.sum(layer(xt, training=True) * ops.convert_to_tensor(c))

        y = ops.convert_to_numpy(layer(x, training=True))  # the training step
        stats = [w.numpy() for w in layer.non_trainable_weights]
        _, (gx, gk) = gradients(loss, [x], [kernel])
        out[f"{name}/y"], out[f"{name}/gx"], out[f"{name}/gk"] = y, gx, gk
        for w, value in zip(layer.non_trainable_weights, stats, strict=True):
            out[f"{name}/{w.name}"] = value

    for name, cls, kw in [("l1", layers.L1BatchNormalization, {}),
                          ("topk", layers.TopKBatchNormalization, {"k": K})]:
        for suffix, x, c, gamma, beta in [("", d["x_bn"], d["c_bn"], d["gamma"], d["beta"]),
                                          ("2", d["x_bn2"], d["c_bn2"], d["gamma2"],
                                           d["beta2"])]:
            layer = cls(momentum=MOMENTUM, epsilon=EPSILON, **kw)
            layer.build(x.shape)
            layer.gamma.assign(gamma)
            layer.beta.assign(beta)
            run(name + suffix, layer, x, c, layer.gamma)

    for name, inner, shape in [("dense", keras.layers.Dense(4), (None, 5)),
                               ("conv", keras.layers.Conv2D(3, 3, padding="same"),
                                (None, 5, 5, 2))]:
        wn = layers.WeightNormalization(inner)
        wn.build(shape)
        wn.v.assign(d[f"v_{name}"])
        wn.g.assign(d[f"g_{name}"])
        wn.bias.assign(d[f"b_{name}"])
        run(name, wn, d[f"x_{name}"], d[f"c_{name}"], wn.v)

    if keras.backend.standardize_dtype(ops.convert_to_tensor(d["x64"]).dtype) == "float64":
        for name, cls, kw in [("l1_64", layers.L1BatchNormalization, {}),
                              ("topk_64", layers.TopKBatchNormalization, {"k": K})]:
            layer = cls(momentum=MOMENTUM, epsilon=EPSILON, dtype="float64", **kw)
            out[f"{name}/y"] = ops.convert_to_numpy(layer(d["x64"], training=True))
            out[f"{name}/moving_mean"] = layer.moving_mean.numpy()
            out[f"{name}/moving_variance"] = layer.moving_variance.numpy()
            out[f"{name}/y_inference"] = ops.convert_to_numpy(layer(d["x64"], training=False))
    np.savez(out_path, backend=keras.backend.backend(), **out)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cross_backend")
    procs = {}
    for backend in BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
                   JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
        procs[backend] = subprocess.Popen(
            [sys.executable, "-m", "tests.layers.test_cross_backend", str(tmp / backend)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    for backend, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{backend}: {err[-3000:]}"
        with np.load(tmp / f"{backend}.npz") as data:
            assert str(data["backend"]) == backend
            out[backend] = {k: data[k] for k in data.files if k != "backend"}
    return out


# ----------------------------------------------------------------------------- NumPy references
def _c(n):
    return 0.5 * (1 + math.sqrt(math.pi * math.log(4.0))) / math.sqrt(2 * math.log(n))


def _bn_ref(x, kind, gamma=None, beta=None):
    """(y, mu, sigma) of a channels-last batch in float64."""
    x = np.asarray(x, np.float64)
    flat = x.reshape(-1, x.shape[-1])
    mu = flat.mean(0)
    dev = np.abs(flat - mu)
    if kind == "l1":
        sigma = math.sqrt(math.pi / 2) * dev.mean(0)
    else:
        sigma = _c(flat.shape[0]) * -np.sort(-dev, axis=0)[:K].mean(0)
    gamma = np.ones_like(mu) if gamma is None else gamma
    beta = np.zeros_like(mu) if beta is None else beta
    return gamma * (x - mu) / (sigma + EPSILON) + beta, mu, sigma


CASES = ["l1", "l12", "topk", "topk2", "dense", "conv"]
KEYS = ["y", "gx", "gk", "moving_mean", "moving_variance"]


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("case", CASES)
def test_backends_agree_with_tensorflow(results, backend, case):
    ref = results["tensorflow"]
    got = results[backend]
    keys = [k for k in ref if k.startswith(case + "/")]
    assert keys and set(keys) <= set(got)
    for key in keys:
        np.testing.assert_allclose(got[key], ref[key], rtol=RTOL, atol=ATOL, err_msg=key)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["l1", "l12", "topk", "topk2"])
def test_batch_norm_forward_and_moving_stats_match_numpy(results, backend, case):
    d = _inputs()
    kind = case.rstrip("2")
    suffix = "2" if case.endswith("2") else ""
    y, mu, sigma = _bn_ref(d["x_bn" + suffix], kind, d["gamma" + suffix], d["beta" + suffix])
    r = results[backend]
    np.testing.assert_allclose(r[f"{case}/y"], y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(r[f"{case}/moving_mean"], (1 - MOMENTUM) * mu, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(r[f"{case}/moving_variance"],
                               MOMENTUM + (1 - MOMENTUM) * sigma**2, rtol=1e-5)
    # d/dgamma of sum(y * c) = sum over the batch of c * (x - mu) / (sigma + eps)
    c = d["c_bn" + suffix].astype(np.float64)
    x = d["x_bn" + suffix].astype(np.float64)
    dgamma = (c * (x - mu) / (sigma + EPSILON)).reshape(-1, x.shape[-1]).sum(0)
    np.testing.assert_allclose(r[f"{case}/gk"], dgamma, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_normalization_dense_matches_numpy(results, backend):
    """y = x @ (g v / ||v||) + b; dL/dv_j = (g_j / ||v_j||) (G_j - <G_j, u_j> u_j), G = x^T c,
    dL/dx = c @ w^T."""
    d = _inputs()
    x, c, v = (d[k].astype(np.float64) for k in ("x_dense", "c_dense", "v_dense"))
    g, b = d["g_dense"].astype(np.float64), d["b_dense"].astype(np.float64)
    norm = np.linalg.norm(v, axis=0)
    u = v / norm
    w = g * u
    G = x.T @ c
    r = results[backend]
    np.testing.assert_allclose(r["dense/y"], x @ w + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r["dense/gx"], c @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r["dense/gk"], g / norm * (G - (G * u).sum(0) * u), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["l1", "topk"])
def test_float64_layers_match_float64_numpy(results, backend, kind):
    """float64 end to end: output (training and inference) and moving statistics after one
    step equal the float64 formulas to ~1e-12 relative (momentum 0.9, epsilon 1e-3, sqrt(pi/2)
    and C(n) reach float64 exactly)."""
    r = results[backend]
    assert f"{kind}_64/y" in r, f"{backend} ran no float64 layer"
    x = _inputs()["x64"]
    y, mu, sigma = _bn_ref(x, kind)
    np.testing.assert_allclose(r[f"{kind}_64/y"], y, rtol=RTOL64, atol=1e-13)
    mm = 0.0 * MOMENTUM + mu * (1.0 - MOMENTUM)
    mv = 1.0 * MOMENTUM + sigma**2 * (1.0 - MOMENTUM)
    np.testing.assert_allclose(r[f"{kind}_64/moving_mean"], mm, rtol=RTOL64, atol=1e-15)
    np.testing.assert_allclose(r[f"{kind}_64/moving_variance"], mv, rtol=RTOL64)
    y_inf = (x - mm) / (np.sqrt(mv) + EPSILON)
    np.testing.assert_allclose(r[f"{kind}_64/y_inference"], y_inf, rtol=RTOL64, atol=1e-13)


if __name__ == "__main__":
    _worker(sys.argv[1])
