"""Batches of NumPy arrays for ``model.fit`` on any backend (no TensorFlow).

:class:`ArrayEpochs` is the NumPy counterpart of :func:`keras_normreg.data.pipelines.load_epochs`
for the embedded sets: epoch ``e`` visits the examples in an order drawn from ``(seed, e)`` alone,
so a rerun or a second iterator sees the same batches, and the number of batches per epoch is
known ahead. It is what training uses on the JAX and PyTorch backends. The orders differ from
tf.data's shuffle (another generator), so a JAX run and a TensorFlow run of one recipe see the
same examples per epoch in different batches.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from keras_normreg._utils import check_bool, check_number, received

__all__ = ["ArrayEpochs", "array_batches"]


def _check_arrays(x, y):
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise ValueError(f"Arguments `x` and `y` must be NumPy arrays. "
                         f"{received('x', type(x).__name__)}, y={type(y).__name__!r}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"Arguments `x` and `y` must hold the same positive number of examples. "
                         f"Received: len(x)={len(x)}, len(y)={len(y)}")


class ArrayEpochs(keras.utils.PyDataset):
    """Batches of ``(x, y)`` for ``model.fit``, reshuffled every epoch from ``(seed, epoch)``.

    Args:
        x, y: NumPy arrays with the same first dimension.
        batch_size: global batch size.
        shuffle: draw a new order each epoch (``numpy.random.default_rng([seed, epoch])``);
            False keeps the array order.
        seed: integer seed of the orders.
        multiple_of: every batch's size must be a multiple of this (the devices of a
            data-parallel run): a last partial batch that is not is dropped, and
            ``batch_size`` itself must be one.
        start_epoch: the epoch the stream starts at (a run resumed after ``k`` finished
            epochs passes ``k``, so its epoch ``k`` sees the batches an uninterrupted run's
            epoch ``k`` sees).
    """

    def __init__(self, x, y, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 multiple_of: int = 1, start_epoch: int = 0):
        super().__init__(workers=1, use_multiprocessing=False)
        _check_arrays(x, y)
        check_number("batch_size", batch_size, low=1, integer=True)
        check_number("multiple_of", multiple_of, low=1, integer=True)
        check_number("seed", seed, integer=True)
        check_bool("shuffle", shuffle)
        check_number("start_epoch", start_epoch, low=0, integer=True)
        if batch_size % multiple_of:
            raise ValueError(
                f"data.batch_size is the global batch and must be a multiple of the "
                f"{multiple_of} devices. Received: data.batch_size={batch_size!r}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.multiple_of = multiple_of
        self.start_epoch = int(start_epoch)
        self.epoch = self.start_epoch
        self._order = self._draw(self.epoch)

    @staticmethod
    def steps(num_examples: int, batch_size: int, multiple_of: int = 1) -> int:
        """Batches per epoch: ``ceil(n / batch_size)``, less a last partial batch whose size
        is not a multiple of ``multiple_of``."""
        steps = math.ceil(num_examples / batch_size)
        if num_examples % batch_size % multiple_of:
            steps -= 1
        return steps

    def _draw(self, epoch: int) -> np.ndarray:
        n = len(self.x)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def __len__(self) -> int:
        return self.steps(len(self.x), self.batch_size, self.multiple_of)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"Batch index out of range. Received: index={index!r}")
        rows = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        return self.x[rows], self.y[rows]

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._draw(self.epoch)


def array_batches(x, y, batch_size: int):
    """The ``(x, y)`` batches of the arrays in order (the last one partial), as a list."""
    _check_arrays(x, y)
    check_number("batch_size", batch_size, low=1, integer=True)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
