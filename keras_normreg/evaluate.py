"""Deprecated alias of :mod:`keras_normreg.saving`: import saved-entry functions from there.

Saved entries (``saved_models/<name>/``: write, find, load and verify, re-evaluate) have one
home, :mod:`keras_normreg.saving`. This module used to re-export part of it under the name of
the ``keras-normreg evaluate`` command; a second, partial home left readers asking which one to
import from, and what the other lacked (``save_entry``, ``EntryLoadError``, ...). It now only
keeps old code working: each name it used to export is looked up in :mod:`keras_normreg.saving`
on access, with a ``DeprecationWarning`` that names the import to use instead::

    from keras_normreg.saving import evaluate_saved   # not: from keras_normreg.evaluate import
"""

from __future__ import annotations

import warnings

from keras_normreg import saving as _saving

#: The names this module exported before it became an alias (all of them are saving's).
_OLD_NAMES = ("LOSS_TOLERANCE", "REQUIRED_CARD_KEYS", "CardError", "ChecksumError",
              "MetricMismatchError", "evaluate_model", "evaluate_saved", "find_entry",
              "list_saved", "load_card", "load_saved", "saved_models_dirs")
# ``from keras_normreg.evaluate import *`` reaches them through __getattr__ as well
__all__ = list(_OLD_NAMES)


def __getattr__(name: str):
    """``keras_normreg.evaluate.<name>``: saving's object, with a DeprecationWarning."""
    if name in _OLD_NAMES:
        warnings.warn(
            f"keras_normreg.evaluate is deprecated: use `from keras_normreg.saving import "
            f"{name}` (the same object).", DeprecationWarning, stacklevel=2)
        return getattr(_saving, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(_OLD_NAMES)
