"""``python -m experiments.grokking``: see :mod:`experiments.grokking`."""

import sys

from .study import main

sys.exit(main())
