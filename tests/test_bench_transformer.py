"""bench/bench_transformer.py: the plain Keras GPT against a hand count, and the script in --quick
mode in a subprocess per backend (Keras picks its backend at import). Checks the table and the
command, never a timing."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import load_bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "bench_transformer.py")
HAS_JAX = importlib.util.find_spec("jax") is not None


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def test_plain_gpt_has_the_zoo_parameter_count_by_hand():
    module = load_bench("bench_transformer")
    # gpt_modular: vocab 99, 4 tokens, width 128, 1 block, MLP 512, 97 classes. Token and
    # position embeddings 99*128 + 4*128; Q, K, V, O without bias 4*128*128; MLP without bias
    # 2*128*512; two LayerNorms in the block and a final one, gamma + beta each 3*2*128;
    # classifier 128*97 + 97.
    by_hand = 99 * 128 + 4 * 128 + 4 * 128 * 128 + 2 * 128 * 512 + 3 * 2 * 128 + 128 * 97 + 97
    assert by_hand == 223_073
    assert module.expected_params() == by_hand
    plain, zoo = module.hand_gpt(), module.zoo_gpt()
    assert _trainable(plain) == _trainable(zoo) == by_hand
    assert module.count(plain) == module.count(zoo) == (by_hand, by_hand)
    assert plain.output_shape == zoo.output_shape == (None, 97)
    # the quick size: width 16, 2 heads, MLP 64
    d = 16
    small = 99 * d + 4 * d + 4 * d * d + 2 * d * 64 + 3 * 2 * d + d * 97 + 97
    assert module.count(module.hand_gpt(**module.QUICK)) == (small, small)


def test_plain_gpt_computes_the_zoo_gpt():
    """With the zoo GPT's weights copied in (same order and shapes: embeddings, LN, Q, K, V, O,
    LN, MLP, LN, classifier), the plain Keras GPT gives the same logits: the same network."""
    module = load_bench("bench_transformer")
    zoo, plain = module.zoo_gpt(**module.QUICK), module.hand_gpt(**module.QUICK)
    assert [tuple(v.shape) for v in zoo.weights] == [tuple(v.shape) for v in plain.weights]
    rng = np.random.default_rng(0)
    weights = [rng.normal(0.0, 0.3, v.shape).astype("float32") for v in zoo.weights]
    zoo.set_weights(weights)
    plain.set_weights(weights)
    x, _ = module.prompts(rng, 16)
    a, b = np.asarray(zoo(x)), np.asarray(plain(x))
    assert np.abs(a).max() > 0.1  # not a trivially small output
    # float32 (eps 6e-8 per rounding): the two differ only in the order of the same ops (scale
    # on q vs on the scores, softmax masking, einsum layouts); dot products of <= 64 terms of
    # O(1) values through 2 LayerNorms give errors ~1e-6 relative; 1e-4 absolute on logits of
    # O(1) leaves a factor > 10.
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_prompts_layout():
    module = load_bench("bench_transformer")
    x, y = module.prompts(np.random.default_rng(1), 64)
    assert x.shape == (64, 4) and x.dtype == np.int32 and y.dtype == np.int32
    assert np.all(x[:, 1] == 97) and np.all(x[:, 3] == 98)
    assert x[:, [0, 2]].min() >= 0 and x[:, [0, 2]].max() < 97
    assert y.min() >= 0 and y.max() < 97


def _run(backend, *extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": backend,
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, SCRIPT, "--quick", "--threads", "0", *extra],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _rows(stdout):
    return [line for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| benchmark")]


@pytest.mark.parametrize("backend", [
    "tensorflow",
    pytest.param("jax", marks=pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")),
])
def test_quick_run(backend):
    stdout = _run(backend)
    assert f"## {backend}: zoo GPT vs plain Keras GPT, nGPT vs pre-LN" in stdout
    assert (f"command: KERAS_BACKEND={backend} .venv/bin/python bench/bench_transformer.py "
            "--quick --threads 0") in stdout
    assert "load avg " in stdout
    modes = ["auto", "xla"] if backend == "tensorflow" else ["auto"]
    got = [(row.split(" | ")[0].rsplit("jit ", 1)[1], row.split(" | ")[1],
            row.split(" | ")[8]) for row in _rows(stdout)]
    assert got == [(mode, pair, target) for mode in modes for pair, target in (
        ("zoo GPT vs plain Keras GPT", "<= 1.05"), ("zoo nGPT vs zoo GPT", "<= 1.25"))]
    assert "-> same;" in stdout  # parameter counts of the zoo and the plain Keras GPT


def test_rejects_bad_batch():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    out = subprocess.run([sys.executable, SCRIPT, "--quick", "--batch", "0"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 2
    assert "--batch must be >= 1. Received: batch=0" in out.stderr
