"""keras_normreg: normalization and regularization done right for Keras 3.

Importing the package registers every custom object (layers, constraints, regularizers,
optimizers, zoo layers) with Keras and the embedded datasets (``mnist1d``, ``digits``) with
tensorflow-datasets.
"""

from keras_normreg._backend import check_backend as _check_backend

_check_backend()

# Imported for their registrations (keras.saving / tfds) as much as for the namespace.
from keras_normreg import (  # noqa: E402
    constraints,
    data,
    diagnostics,
    invariance,
    layers,
    optimizers,
    regularizers,
    zoo,
)
from keras_normreg._version import __version__  # noqa: E402

__all__ = ["constraints", "data", "diagnostics", "invariance", "layers", "optimizers", "regularizers", "zoo", "__version__"]
