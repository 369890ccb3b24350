"""keras_normreg on JAX and PyTorch with TensorFlow hidden.

Each case runs in a fresh interpreter where ``tensorflow`` and ``tensorflow_datasets`` cannot be
imported (``sys.modules[name] = None`` makes ``import name`` raise ImportError), the way a user
with only ``keras`` and ``jax`` (or ``torch``) installed meets the package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

HIDE_TF = """
import sys
for _name in ("tensorflow", "tensorflow_datasets"):
    sys.modules[_name] = None
"""

USER_STORY = HIDE_TF + """
import json, os, sys
import numpy as np
import keras
from keras_normreg import constraints, diagnostics, layers, optimizers, regularizers, zoo

out = {"backend": keras.backend.backend()}
keras.utils.set_random_seed(0)
model = zoo.create("resnet20", norm="l1_batch", num_classes=10, input_shape=(16, 16, 3))
model.compile(optimizer=optimizers.AdamP(1e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
x = rng.normal(size=(16, 16, 16, 3)).astype("float32")
y = rng.integers(0, 10, size=(16,))
history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
out["losses"] = [float(v) for v in history.history["loss"]]
before = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
path = os.path.join(sys.argv[1], "model.keras")
model.save(path)
reloaded = keras.saving.load_model(path, safe_mode=True)
after = keras.ops.convert_to_numpy(reloaded.predict(x, verbose=0))
out["max_abs_diff"] = float(np.max(np.abs(before - after)))
out["optimizer"] = type(reloaded.optimizer).__name__
out["tf_loaded"] = any(m == "tensorflow" or m.startswith("tensorflow.")
                       for m, v in sys.modules.items() if v is not None)
print("RESULT " + json.dumps(out))
"""


def _run(code: str, backend: str, *args, timeout=600):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc


def _result(proc):
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_user_story_without_tensorflow(backend, tmp_path):
    """Build a zoo ResNet-20 with L1 batch norm, compile with AdamP, fit on NumPy arrays, save,
    reload with safe_mode=True: the same predictions, and TensorFlow never imported."""
    out = _result(_run(USER_STORY, backend, str(tmp_path)))
    assert out["backend"] == backend
    assert out["tf_loaded"] is False
    assert len(out["losses"]) == 2 and all(v == v and v < 1e3 for v in out["losses"])
    assert out["optimizer"] == "AdamP"
    # the same weights and inputs through the same compiled code: bitwise equal is expected;
    # 1e-6 leaves room only for a different kernel choice after reload
    assert out["max_abs_diff"] <= 1e-6


def test_tensorflow_only_parts_say_what_to_install():
    code = HIDE_TF + """
import keras_normreg
from keras_normreg import data
x, y = data.arrays("mnist1d", "test")
print("RESULT", x.shape, y.shape)
try:
    data.load("mnist1d", "test", 32)
except ImportError as e:
    print("ERROR", e)
"""
    proc = _run(code, "jax")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT (1000, 40, 1) (1000,)" in proc.stdout
    error = [ln for ln in proc.stdout.splitlines() if ln.startswith("ERROR ")]
    assert error and "pip install" in error[0], proc.stdout
