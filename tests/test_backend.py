"""keras_normreg._backend: tensorflow, jax and torch accepted; other backends and a TensorFlow
backend without TensorFlow refused with instructions."""

import os
import subprocess
import sys

import pytest

from keras_normreg import _backend

pytestmark = pytest.mark.backends  # a block's tests: run on every backend (backend_marks.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs _backend.check_backend from its file (not through keras_normreg/__init__, which imports
# the rest of the package) with `tensorflow` made unimportable (as if not installed).
_NO_TF = """
import importlib.util, sys

sys.modules["tensorflow"] = None  # `import tensorflow` raises ModuleNotFoundError, find_spec: None
spec = importlib.util.spec_from_file_location("_backend", "keras_normreg/_backend.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.check_backend()
import keras
print("BACKEND", keras.backend.backend(), sys.modules["tensorflow"] is not None)
"""


def _run(code, backend):
    env = {"KERAS_BACKEND": backend, "PATH": os.environ.get("PATH", ""),
           "HOME": os.environ.get("HOME", "/tmp"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=180)


@pytest.mark.parametrize("backend", ["numpy", "openvino", "nope"])
def test_unsupported_keras_backend_fails_with_instructions(backend, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", backend)
    with pytest.raises(ImportError, match=(
            r"supports the Keras backends tensorflow, jax, torch\. Set KERAS_BACKEND to one of "
            rf"them\. Received: KERAS_BACKEND='{backend}'")):
        _backend.check_backend()


def test_unsupported_backend_fails_at_package_import():
    proc = _run("import keras_normreg", "numpy")
    assert proc.returncode != 0
    assert "Received: KERAS_BACKEND='numpy'" in proc.stderr
    assert "tensorflow, jax, torch" in proc.stderr


def test_missing_tensorflow_says_what_to_install():
    proc = _run(_NO_TF, "tensorflow")
    assert proc.returncode != 0
    assert "requires TensorFlow, which is not installed" in proc.stderr
    assert "keras_normreg[cpu]" in proc.stderr and "keras_normreg[gpu]" in proc.stderr
    assert "KERAS_BACKEND=jax" in proc.stderr


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_jax_and_torch_accepted_without_tensorflow(backend):
    pytest.importorskip(backend)
    proc = _run(_NO_TF, backend)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"BACKEND {backend} False" in proc.stdout


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_supported_backend_names_accepted(backend, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", backend)
    _backend.check_backend()  # no exception (Keras keeps the session's backend once imported)


def test_session_backend_accepted(monkeypatch):
    import keras

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    _backend.check_backend()  # no exception
    assert keras.backend.backend() in _backend.SUPPORTED_BACKENDS
