"""``python -m experiments.eta_only``: see :mod:`experiments.eta_only`."""

import sys

from .study import main

sys.exit(main())
