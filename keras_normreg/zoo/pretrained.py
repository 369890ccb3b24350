"""Trained zoo entries shipped in ``saved_models/``: ``zoo.load(name)``, ``zoo.list_pretrained()``."""

from __future__ import annotations

from keras_normreg import saving

__all__ = ["list_pretrained", "load"]


def list_pretrained() -> list[str]:
    """Names of the saved entries found (see :func:`keras_normreg.saving.saved_models_dirs`)."""
    return saving.list_saved()


def load(name: str, *, return_card: bool = False):
    """Load a trained entry by name (``"mnist1d_cnn1d_batch"``) or folder path.

    The model file's sha256 is checked against its ``card.json`` first, then the model is loaded
    with ``keras.saving.load_model(safe_mode=True)``. With ``return_card`` returns
    ``(model, card)``.
    """
    return saving.load_saved(name, return_card=return_card)
