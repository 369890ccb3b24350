"""The ``eta-only`` study: see :mod:`experiments.eta_only.study`."""

from .study import *  # noqa: F403
from .study import __all__, _duplicates, _json_default, _versions, _worker_env  # noqa: F401
