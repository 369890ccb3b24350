"""Backend guard: keras_normreg runs on Keras 3 with the TensorFlow, JAX or torch backend.

Imported first by ``keras_normreg/__init__.py`` so that an unsupported ``KERAS_BACKEND`` (e.g.
``numpy``, ``openvino``) or a TensorFlow backend without TensorFlow installed fails at import
time with a message that says what to do. TensorFlow itself is not required by this check: the
JAX and torch backends do not need it here.
"""

from __future__ import annotations

import os

#: The Keras backends keras_normreg supports.
SUPPORTED_BACKENDS = ("tensorflow", "jax", "torch")

INSTALL_HINT = (
    "Install it with `pip install 'keras_normreg[cpu]'` (CPU) or "
    "`pip install 'keras_normreg[gpu]'` (CUDA GPUs), or set KERAS_BACKEND=jax or "
    "KERAS_BACKEND=torch."
)


def _unsupported(backend):
    return ImportError(
        f"keras_normreg supports the Keras backends {', '.join(SUPPORTED_BACKENDS)}. Set "
        f"KERAS_BACKEND to one of them. Received: KERAS_BACKEND={backend!r}"
    )


def check_backend() -> None:
    """Raise ImportError unless Keras runs (or will run) on a supported backend."""
    backend = os.environ.get("KERAS_BACKEND")
    if backend is not None and backend not in SUPPORTED_BACKENDS:
        raise _unsupported(backend)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    try:
        import keras  # heavy external package: imported here so the checks above come first
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "tensorflow":
            raise
        raise ImportError(
            "keras_normreg on the TensorFlow backend of Keras requires TensorFlow, which is "
            "not installed. " + INSTALL_HINT
        ) from exc
    # KERAS_BACKEND unset: Keras took the backend from ~/.keras/keras.json (or its default).
    if keras.backend.backend() not in SUPPORTED_BACKENDS:
        raise _unsupported(keras.backend.backend())
