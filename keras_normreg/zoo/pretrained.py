"""Trained zoo entries: ``zoo.load(name)``, ``zoo.list_pretrained()``.

The shipped entries are the repository's ``saved_models/``, carried by the installed package
as ``keras_normreg/saved_models/``; names are looked up as
:func:`keras_normreg.saving.saved_models_dirs` says (``$KERAS_NORMREG_SAVED_MODELS`` and
``./saved_models`` first).
"""

from __future__ import annotations

from keras_normreg import saving

__all__ = ["list_pretrained", "load"]


def list_pretrained() -> list[str]:
    """Names of the saved entries found (see :func:`keras_normreg.saving.saved_models_dirs`)."""
    return saving.list_saved()


def load(name: str, *, return_card: bool = False):
    """Load a trained entry by name (``"mnist1d_cnn1d_batch"``, looked up in
    :func:`keras_normreg.saving.saved_models_dirs`) or folder path (any folder holding
    ``card.json`` and ``model.keras``).

    The model file's sha256 is checked against its ``card.json`` first, then the model is loaded
    with ``keras.saving.load_model(safe_mode=True)``. With ``return_card`` returns
    ``(model, card)``.
    """
    return saving.load_saved(name, return_card=return_card)
