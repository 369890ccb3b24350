"""Small shared helpers: argument validation with uniform error messages, and registration with
Keras (the tables of named choices are :mod:`keras_normreg._registry`)."""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Iterable

import keras

PACKAGE = "keras_normreg"


def register(obj):
    """Register a custom object with Keras under the ``keras_normreg`` package."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(obj)


def received(name: str, value) -> str:
    return f"Received: {name}={value!r}"


def variable_name(variable) -> str:
    """The short name of a variable (``"kernel"`` for ``"block1/conv/kernel:0"``)."""
    return str(getattr(variable, "name", "")).split(":")[0].split("/")[-1]


def variable_path(variable) -> str:
    """Keras 3 ``variable.path`` (``"<layer path>/<name>"``), or the name without ``:0``."""
    path = getattr(variable, "path", None)
    if path is None:
        path = str(getattr(variable, "name", "")).split(":")[0]
    return path


def check_number(name: str, value, *, low=None, high=None, low_inclusive=True,
                 high_inclusive=True, integer=False, allow_none=False, allow_inf=False):
    """Validate a scalar argument and return it; raise ValueError naming the argument otherwise.

    NaN is always refused (every comparison with it is False, so a bound alone lets it through);
    ±inf is refused unless ``allow_inf=True`` (then the bounds still apply to it).
    """
    if value is None and allow_none:
        return value
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an integer" if integer else "a number"
        raise ValueError(f"Argument `{name}` must be {what}. {received(name, value)}")
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        what = "a number (not NaN)" if allow_inf else "a finite number"
        raise ValueError(f"Argument `{name}` must be {what}. Received: {name}={value}")
    if low is not None and (value < low or (not low_inclusive and value == low)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"Argument `{name}` must be {op} {low}. {received(name, value)}")
    if high is not None and (value > high or (not high_inclusive and value == high)):
        op = "<=" if high_inclusive else "<"
        raise ValueError(f"Argument `{name}` must be {op} {high}. {received(name, value)}")
    return value


def check_choice(name: str, value, choices: Iterable):
    """Validate that ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(
            f"Argument `{name}` must be one of {choices}. {received(name, value)}"
        )
    return value


def check_bool(name: str, value):
    if not isinstance(value, bool):
        raise ValueError(f"Argument `{name}` must be a bool. {received(name, value)}")
    return value


@contextlib.contextmanager
def environ(updates: dict):
    """Set environment variables for the duration of a ``with`` block, then restore them
    (variables that were unset are removed again)."""
    saved = {k: os.environ.get(k) for k in updates}
    os.environ.update({k: str(v) for k, v in updates.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
