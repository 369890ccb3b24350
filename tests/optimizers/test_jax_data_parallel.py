"""The optimizers under JAX data parallelism (keras.distribution.DataParallel) on 2 emulated CPU
devices: the decoupled decay, the sphere retraction and the SGDP/AdamP projection keep the
replicated variables replicated, and training gives the weights of the same run on 1 device.

The device count is fixed when JAX starts (``XLA_FLAGS=--xla_force_host_platform_device_count=2``),
so the check runs in a subprocess with ``KERAS_BACKEND=jax``; it runs whatever the backend of the
test session. It is skipped where JAX is not installed or keras_normreg refuses the JAX backend.

Tolerance: the runs differ only in how XLA sums over the batch (two per-device partial sums and
an all-reduce instead of one sum) — float32 roundings of ~1e-7 relative per reduction,
propagated through BatchNorm and momentum over 4 steps. Measured: see ``ATOL`` below. The
tolerance stays far below what a per-replica mistake would cause: a decay or retraction
applied on one replica only (or twice) changes a weight by lr·λ·|w| = 5e-3·|w| (SGD) per step.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.backend_marks import spawns_backends

pytestmark = spawns_backends

# Measured max |distributed - single| over all weights: 6e-8 (sgd_sphere and adamp);
# 1e-6 leaves a >10x margin and is 5000x below one step's decay of a unit-size weight.
ATOL = 1e-6

SCRIPT = textwrap.dedent(
    r"""
    import json
    import sys

    import numpy as np

    try:
        import keras_normreg  # noqa: F401
    except ImportError as err:  # the backend guard refuses JAX (yet)
        print("UNSUPPORTED " + str(err).replace("\n", " "))
        sys.exit(0)
    import jax
    import keras

    from keras_normreg import optimizers

    assert len(jax.devices()) == 2, jax.devices()
    L = keras.layers

    def build():
        inp = keras.Input((8,))
        h = L.Dense(6, use_bias=False, name="d1")(inp)
        h = L.BatchNormalization(name="bn1")(h)
        h = L.ReLU(name="r1")(h)
        return keras.Model(inp, L.Dense(3, name="head")(h))

    keras.utils.set_random_seed(0)
    init = build().get_weights()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, 3, size=64)

    def make(name, model):
        if name == "sgd_sphere":  # decay of head/kernel, sphere retraction of d1/kernel
            return optimizers.DecoupledWeightDecay(
                keras.optimizers.SGD(0.1, momentum=0.9), 0.05,
                scale_invariant="sphere").bind(model)
        return optimizers.AdamP(0.01, weight_decay=0.05)  # projection + decay

    def replicated(value):
        shards = [np.asarray(s.data) for s in value.addressable_shards]
        return (value.sharding.is_fully_replicated and len(shards) == 2
                and all(np.array_equal(shards[0], s) for s in shards[1:]))

    def train(name, distributed):
        keras.distribution.set_distribution(
            keras.distribution.DataParallel() if distributed else None)
        model = build()
        model.set_weights(init)
        opt = make(name, model)
        model.compile(optimizer=opt,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # 4 steps
        if distributed:
            bad = [v.path for v in model.variables + opt.variables if not replicated(v.value)]
            assert not bad, f"not replicated after training: {bad}"
        out = {v.path: np.asarray(v.value).astype(float).tolist() for v in model.weights}
        if name == "sgd_sphere":
            assert opt.decay_plan()["head/kernel"] == "decay", opt.decay_plan()
            assert opt.decay_plan()["d1/kernel"] == "sphere", opt.decay_plan()
            norms = np.linalg.norm(np.asarray(out["d1/kernel"]), axis=0)
            assert np.allclose(norms, 1.0, atol=1e-6), norms
        return out

    results = {name: {"distributed": train(name, True), "single": train(name, False)}
               for name in ("sgd_sphere", "adamp")}
    start = build()
    start.set_weights(init)
    results["init"] = {v.path: np.asarray(v.value).astype(float).tolist() for v in start.weights}
    print("RESULT " + json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def results():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("JAX_ENABLE_X64", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    for line in proc.stdout.splitlines():
        if line.startswith("UNSUPPORTED "):
            pytest.skip(f"keras_normreg refuses the JAX backend: {line[12:]}")
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    pytest.fail(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")


@pytest.mark.parametrize("name", ["sgd_sphere", "adamp"])
def test_data_parallel_matches_single_device(results, name):
    run = results[name]
    assert set(run["distributed"]) == set(run["single"])
    for path, value in run["distributed"].items():
        np.testing.assert_allclose(value, run["single"][path], rtol=0, atol=ATOL,
                                   err_msg=f"{name} {path}")
    # the runs trained: the kernels moved by far more than the tolerance
    for path in ("d1/kernel", "head/kernel"):
        moved = np.abs(np.asarray(run["single"][path]) - np.asarray(results["init"][path]))
        assert moved.max() > 1000 * ATOL, (name, path, moved.max())
