"""Saved models: verify, load and re-evaluate ``saved_models/<name>/`` entries.

The functions live in :mod:`keras_normreg.saving`; this module keeps the names the CLI
(``keras-normreg evaluate``) and users import from here.
"""

from __future__ import annotations

from keras_normreg.saving import (
    LOSS_TOLERANCE,
    REQUIRED_CARD_KEYS,
    CardError,
    ChecksumError,
    MetricMismatchError,
    evaluate_model,
    evaluate_saved,
    find_entry,
    list_saved,
    load_card,
    load_saved,
    saved_models_dirs,
)

__all__ = [
    "LOSS_TOLERANCE",
    "REQUIRED_CARD_KEYS",
    "CardError",
    "ChecksumError",
    "MetricMismatchError",
    "evaluate_model",
    "evaluate_saved",
    "find_entry",
    "list_saved",
    "load_card",
    "load_saved",
    "saved_models_dirs",
]
