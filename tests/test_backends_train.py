"""Training, saving and evaluating on the JAX and PyTorch backends (subprocesses).

Keras picks its backend at import, so each case runs `keras-normreg` in a fresh interpreter with
``--backend`` (which sets ``KERAS_BACKEND``). The shipped entries in saved_models/ were trained on
TensorFlow; here they are reloaded with ``safe_mode=True`` and re-evaluated on the other
backends against their cards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRIES = sorted(p.name for p in (ROOT / "saved_models").iterdir() if (p / "card.json").is_file())


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_BACKEND", None)
    env.update(extra)
    return env


def _cli(*args, env=None, timeout=900, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "keras_normreg.cli", *args], cwd=cwd,
                          env=env or _env(), capture_output=True, text=True, timeout=timeout)


def _tiny_recipe(tmp_path: Path, name: str, **train) -> Path:
    """MNIST-1D, the zoo's cnn1d with batch norm (narrow), SGDW with decay: seconds per epoch."""
    train_section = {"epochs": 2, "seed": 7, "verbose": 0, **train}
    lines = [f'name = "{name}"', "[model]", 'arch = "cnn1d"', 'norm = "batch"',
             "overrides = { widths = [8, 16] }", "[data]", 'dataset = "mnist1d"',
             "batch_size = 128", "[optimizer]", 'name = "sgdw"', "learning_rate = 0.1",
             "weight_decay = 5e-4", "[schedule]", 'kind = "cosine"', "[train]",
             f'output_dir = "{tmp_path / "saved"}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in train_section.items()]
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_train_save_and_evaluate_on_backend(backend, tmp_path):
    recipe = _tiny_recipe(tmp_path, f"tiny_{backend}")
    proc = _cli("train", str(recipe), "--backend", backend)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    entry = tmp_path / "saved" / f"tiny_{backend}"
    card = json.loads((entry / "card.json").read_text())
    assert card["backend"] == backend
    assert card["versions"][backend]
    assert card["hardware"]["backend"] == backend
    # train.jit_compile = "auto" (the default): XLA on JAX, none on PyTorch
    assert card["recipe"]["train"]["jit_compile"] == "auto"
    assert card["hardware"]["jit_compile"] is (backend == "jax")
    assert len(card["history"]["loss"]) == 2
    # two epochs of SGD on MNIST-1D: well above chance (0.1) already
    assert 0.2 < card["metrics"]["test_accuracy"] <= 1.0
    assert card["metrics"]["test_examples"] == 1000
    proc = _cli("evaluate", str(entry), "--backend", backend)
    assert proc.returncode == 0 and "match" in proc.stdout, proc.stdout + proc.stderr[-2000:]


_DATA_PARALLEL = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    import keras
    from keras_normreg import config, data, distribute, train
    assert len(jax.devices("cpu")) == 2, jax.devices()
    recipe, run_dir = sys.argv[1], sys.argv[2]
    out = {}

    # (1) the training path: one step (128 examples, batch 128) on one device and on two
    sets = ['data.train_split="train[:128]"', "train.epochs=1"]
    for spec in ("default", "cpu:2"):
        cfg = config.load_recipe(recipe, sets + [f'train.strategy="{spec}"'])
        result = train.train(cfg, save=False, run_dir=f"{run_dir}/{spec.replace(':', '')}")
        out[spec] = {"weights": [np.asarray(keras.ops.convert_to_numpy(w)).tolist()
                                 for w in result.model.weights],
                     "loss": result.history["loss"]}

    # (2) batch statistics: a batch whose halves (one per device) have different statistics
    x, y = data.arrays("mnist1d", "train[:128]")
    x = np.array(x, dtype="float32")
    x[64:] = 3.0 * x[64:] + 2.0
    cfg = config.load_recipe(recipe, sets)
    means = {}
    for spec in ("default", "cpu:2"):
        strategy = distribute.resolve(spec)
        with strategy.scope():
            model = train.build_and_compile(cfg, steps_per_epoch=1)
            bn = model.get_layer("block1_norm")
            if spec == "default":  # the pre-normalization activations at the initial weights
                probe = keras.Model(model.inputs, bn.input)
                out["activations"] = np.asarray(keras.ops.convert_to_numpy(
                    probe(x, training=False)), dtype="float64").tolist()
            model.train_on_batch(x, y)
            moving = np.asarray(keras.ops.convert_to_numpy(bn.moving_mean), dtype="float64")
            means[spec] = (moving / (1.0 - bn.momentum)).tolist()   # moving mean starts at 0
    out["batch_means"] = means
    print("RESULT " + json.dumps(out))
""")


def test_jax_data_parallel_two_devices_matches_one(tmp_path):
    """keras.distribution.DataParallel over 2 emulated CPU devices trains the same model as one
    device: the global batch is split over the devices, batch-norm statistics and gradients are
    those of the whole batch (XLA all-reduces them), and the variables stay replicated.

    (1) One step of the training path (``train.train``, one batch of 128) on 1 and 2 devices.
    The runs differ only in the order of float32 reductions: a sum of N terms split in two
    partial sums and then added is rounded differently, by at most ~log2(N)·u·Σ|t| (u = 2^-24;
    N <= 128 examples x 40 positions = 5120, so ~8e-7 relative to the terms' magnitude, which
    is O(1) for this model's gradients, amplified at most a few times by BatchNorm's backward
    pass). One SGD step with lr 0.1 moves a weight by lr·g, so the weights differ by
    <~ 0.1 x 8e-7 x a few ~ 3e-7: atol 1e-6, rtol 1e-5. Per-device statistics or half the
    gradient would differ at the 1e-2 level. Several epochs are NOT compared: with momentum and
    BatchNorm the ~1e-7 differences grow step after step to ~1e-3 over 64 steps on some CPUs
    (not a bug of either run: chaotic growth of rounding differences).

    (2) Batch statistics are global: a batch whose two halves (one per device) have different
    statistics (the second half scaled by 3 and shifted by 2). The first BatchNormalization's
    moving mean after one step gives the batch mean it used, (1 - momentum)·mean from 0; it
    must equal the NumPy mean of the whole batch's pre-normalization activations (float32
    reductions over 5120 values: <= ~13·u·max|a| ~ 1e-6·max|a|; atol 1e-5·max|a|), while
    the mean of either half differs from it by more than 0.1 (checked, so the test can tell
    per-device statistics from global ones)."""
    recipe = _tiny_recipe(tmp_path, "dp")
    env = _env(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, "-c", _DATA_PARALLEL, str(recipe), str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][7:])

    one, two = out["default"], out["cpu:2"]
    assert len(one["weights"]) == len(two["weights"])
    for a, b in zip(one["weights"], two["weights"], strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)

    act = np.asarray(out["activations"])            # (128, positions, channels)
    channels = act.shape[-1]
    whole = act.reshape(-1, channels).mean(axis=0)
    first = act[:64].reshape(-1, channels).mean(axis=0)
    second = act[64:].reshape(-1, channels).mean(axis=0)
    tol = 1e-5 * np.abs(act).max()
    assert min(np.abs(first - whole).max(), np.abs(second - whole).max()) > 0.1 > 100 * tol
    for spec in ("default", "cpu:2"):
        np.testing.assert_allclose(out["batch_means"][spec], whole, rtol=0, atol=tol)


def test_jax_cpu_strategy_without_the_devices_says_how():
    code = ("from keras_normreg import distribute\n"
            "try:\n    distribute.resolve('cpu:2')\n"
            "except ValueError as e:\n    print('ERROR', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(KERAS_BACKEND="jax"),
                          capture_output=True, text=True, timeout=300)
    assert "ERROR" in proc.stdout, proc.stderr[-2000:]
    assert "--xla_force_host_platform_device_count=2" in proc.stdout
    assert "Received: strategy='cpu:2'" in proc.stdout


_EVALUATE_ALL = textwrap.dedent("""
    import json, sys
    import keras
    from keras_normreg import saving
    out = {}
    for name in sys.argv[1:]:
        report = saving.evaluate_saved(name, strict=False)
        out[name] = {"match": report["match"], "measured": report["measured"],
                     "card": report["card"]}
    print("RESULT " + json.dumps({"backend": keras.backend.backend(), "entries": out}))
""")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_every_saved_entry_reproduces_its_card(backend):
    """Each entry (trained on TensorFlow) loads with safe_mode=True and re-evaluates to its
    card on this backend: the same correct count, the loss within saving.LOSS_TOLERANCE."""
    assert len(ENTRIES) >= 9, ENTRIES
    proc = subprocess.run([sys.executable, "-c", _EVALUATE_ALL, *ENTRIES], cwd=ROOT,
                          env=_env(KERAS_BACKEND=backend), capture_output=True, text=True,
                          timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][7:])
    assert result["backend"] == backend
    mismatched = {k: v for k, v in result["entries"].items() if not v["match"]}
    assert not mismatched, mismatched
    for name, entry in result["entries"].items():
        assert entry["measured"]["test_correct"] == entry["card"]["test_correct"], name


def test_tuning_study_on_jax(tmp_path):
    """keras-tuner is backend-agnostic: the tiny λ × normalization study runs its trials on JAX,
    writes the leaderboard and exports the best model with a card that says jax."""
    proc = _cli("tune", str(ROOT / "tuning" / "tiny_digits.toml"), "--max-trials", "3",
                "--directory", str(tmp_path), env=_env(KERAS_BACKEND="jax"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "3/3 trials done" in proc.stdout
    project = tmp_path / "tiny_digits"
    assert (project / "leaderboard.csv").is_file()
    cards = list(tmp_path.rglob("card.json"))
    assert len(cards) == 1, cards
    card = json.loads(cards[0].read_text())
    assert card["backend"] == "jax" and card["metrics"]["test_examples"] == 360
    assert card["tuning"]["study"] == "tiny_digits"
