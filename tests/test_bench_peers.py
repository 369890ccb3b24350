"""bench/_peers.py: the plain-PyTorch AdamP reference against the NumPy transcription of the
paper's algorithm in tests/optimizers/test_projection.py (written independently of the PyTorch
code), on each of its three branches; the PyTorch MLP and ResNet have the zoo's parameter counts.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tests.helpers import load_bench
from tests.optimizers.test_projection import (
    DELTA,
    EPS,
    LAM,
    WD_RATIO,
    RefAdamP,
    RefSGDP,
    make_grad,
)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="torch is not installed")
STEPS = 5
LR = 0.01


#: name -> (PyTorch optimizer from (peers module, params), NumPy reference); the NumPy
#: references take delta, wd_ratio, eps and the decay LAM from test_projection's constants.
OPTIMIZERS = {
    "adamp": (lambda peers, params: peers.adamp_class()(
        params, lr=LR, weight_decay=LAM, delta=DELTA, wd_ratio=WD_RATIO, eps=EPS),
        lambda: RefAdamP(LR)),
    "sgdp": (lambda peers, params: peers.sgdp_class()(
        params, lr=0.1, momentum=0.9, weight_decay=LAM, delta=DELTA, wd_ratio=WD_RATIO,
        eps=EPS), lambda: RefSGDP(0.1)),
    "sgdp_nesterov_dampening": (lambda peers, params: peers.sgdp_class()(
        params, lr=0.1, momentum=0.5, dampening=0.3, nesterov=True, weight_decay=LAM),
        lambda: RefSGDP(0.1, momentum=0.5, nesterov=True, dampening=0.3)),
}


@pytest.mark.parametrize("branch", ["channel", "layer", "none"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_torch_optimizer_matches_the_numpy_reference(name, branch):
    """A conv-shaped weight (4 output channels of 2x3) and a bias, 5 steps of given gradients.

    PyTorch puts the output channel first and the NumPy reference last (Keras' layout): the
    reference sees the weight as ``w.reshape(4, -1).T`` (6 x 4, one column per channel), the
    same (fan, units) matrix as the channel view of the PyTorch code."""
    import torch

    peers = load_bench("_peers")
    make_opt, make_ref = OPTIMIZERS[name]
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4, 2, 3))
    bias = rng.normal(size=(4,))
    params = [torch.nn.Parameter(torch.tensor(a, dtype=torch.float32)) for a in (kernel, bias)]
    opt = make_opt(peers, params)
    ref_kernel, ref_bias = make_ref(), make_ref()
    k = kernel.reshape(4, -1).T.copy()  # float64, Keras layout
    b = bias.copy()
    branches = []
    for _ in range(STEPS):
        g_k = make_grad(branch, k, rng)
        g_b = rng.normal(size=(4,))
        params[0].grad = torch.tensor(g_k.T.reshape(4, 2, 3), dtype=torch.float32)
        params[1].grad = torch.tensor(g_b, dtype=torch.float32)
        opt.step()
        k, taken = ref_kernel.step(k, g_k)
        b, rank1 = ref_bias.step(b, g_b)
        branches.append(taken)
        assert rank1 == "rank1"
    assert branches == [branch] * STEPS  # the intended branch is the one exercised
    # float32 (u = 2^-24 ~ 6e-8) against float64: each step rounds ~20 float32 ops (moments,
    # bias corrections, square root, the four reductions of the projection, decay, update),
    # each with an error <= u times the terms it combines; the terms are at most ~3 in size
    # (weights and gradients ~N(0, 1); Adam steps <= ~0.05; SGD steps lr x a momentum buffer of
    # <= 5 gradients). Summed without cancellation over 5 steps: <= 100 x u x 3 ~ 2e-5 absolute
    # (rtol adds the same relative bound for large entries). The branches differ by far more:
    # the projections and the decay ratio 0.1 vs 1 move weights by >= 1e-3 over 5 steps (the
    # test below checks one such case).
    np.testing.assert_allclose(params[0].detach().numpy(), k.T.reshape(4, 2, 3), rtol=2e-5,
                               atol=2e-5)
    np.testing.assert_allclose(params[1].detach().numpy(), b, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("branch", ["channel", "layer"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_comparison_sees_a_missing_projection(name, branch):
    """The check above can fail: with the projection off (delta tiny: no weight passes a
    cosine test) the weights end >= 1e-3 away from the reference's projected ones, 50x the
    tolerance (measured: 1.6e-2 to 0.2)."""
    import torch

    peers = load_bench("_peers")
    make_opt, make_ref = OPTIMIZERS[name]
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4, 6))
    w = torch.nn.Parameter(torch.tensor(kernel, dtype=torch.float32))
    opt = make_opt(peers, [w])
    opt.param_groups[0]["delta"] = 1e-12
    ref = make_ref()
    k = kernel.T.copy()
    for _ in range(STEPS):
        g = make_grad(branch, k, rng)
        w.grad = torch.tensor(g.T, dtype=torch.float32)
        opt.step()
        k, taken = ref.step(k, g)
        assert taken == branch
    assert np.abs(w.detach().numpy() - k.T).max() > 1e-3


def test_torch_mlp_has_the_zoo_parameter_counts():
    from keras_normreg import zoo

    peers = load_bench("_peers")
    for width, depth in ((8, 2), (1024, 4)):
        keras_model = zoo.mlp(norm="batch", input_shape=(width,), units=(width,) * depth)
        trainable = sum(int(np.prod(v.shape)) for v in keras_model.trainable_variables)
        total = sum(int(np.prod(v.shape)) for v in keras_model.variables)
        torch_model = peers.torch_mlp(width, (width,) * depth)
        # by hand: per hidden layer width^2 (no bias: BN follows) + 2 width (gamma, beta) + 2
        # width of moving statistics; the head width * 10 + 10
        assert trainable == depth * (width * width + 2 * width) + 10 * width + 10
        assert peers.torch_param_counts(torch_model) == (total, trainable)


def test_torch_resnet_is_the_one_of_bench_gpu():
    """bench_gpu.py imports its PyTorch ResNet from _peers (one copy)."""
    gpu = load_bench("bench_gpu")
    peers = load_bench("_peers")  # a second copy of the module (load_bench's own name)
    for name in ("torch_resnet", "torch_param_counts"):
        assert getattr(gpu, name).__code__.co_filename == getattr(peers, name).__code__.co_filename
        assert getattr(gpu, name).__module__ == "_peers"
    assert gpu.RESNET20_TRAINABLE == peers.RESNET20_TRAINABLE


def _peer_args(**kw):
    import argparse

    args = dict(quick=True, threads=0, no_peers=False, no_torch_compile=False,
                torch_compile=None, torch_compile_timeout=900)
    return argparse.Namespace(**{**args, **kw})


def _images():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((4, 8, 8, 3)).astype("float32"),
            rng.integers(0, 10, 4).astype("int32"))


def test_peers_options_and_a_failing_arm():
    """--no-torch-compile leaves the compiled arm out; a torch.compile that fails is reported
    under errors (the run goes on with the other arms); --no-peers builds nothing."""
    peers_module = load_bench("_peers")
    x, y = _images()
    peers = peers_module.Peers(_peer_args(no_torch_compile=True))
    arms, extra = peers.arms("resnet20", x, y)
    assert list(arms) == [peers_module.RESNET_EAGER] and extra == [] and peers.errors == {}
    assert isinstance(arms[peers_module.RESNET_EAGER](), float)  # the loss, synchronized
    assert "no torch.compile arm" in peers.report()

    peers = peers_module.Peers(_peer_args(torch_compile="no_such_backend"))
    arms, _ = peers.arms("resnet20", x, y)
    assert list(arms) == [peers_module.RESNET_EAGER]
    (key,) = peers.errors
    assert key == "resnet20/PyTorch ResNet-20 torch.compile(no_such_backend)"
    assert "errors (arms left out):" in peers.report() and key in peers.report()

    peers = peers_module.Peers(_peer_args(no_peers=True))
    assert peers.arms("resnet20", x, y) == ({}, [])
    assert "left out (--no-peers)" in peers.report()


def test_peers_pairs_keep_the_arms_that_built():
    peers = load_bench("_peers").Peers(_peer_args(no_peers=True))
    assert peers.pairs(["a", "b", "c"], "a", [("b", "c"), ("b", "gone")]) == [
        ("b", "a"), ("c", "a"), ("b", "c")]
