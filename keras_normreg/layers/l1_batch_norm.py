"""L1 batch normalization (Hoffer et al. 2018)."""

from __future__ import annotations

import math

from keras import ops

from keras_normreg._utils import register
from keras_normreg.layers._base import DispersionBatchNormalization, all_reduce_sum, constant

#: sqrt(pi/2): for x ~ N(mu, s^2), E|x - mu| = s * sqrt(2/pi), so this factor makes sigma_L1 ~ s.
L1_SCALE = math.sqrt(math.pi / 2.0)


@register
class L1BatchNormalization(DispersionBatchNormalization):
    r"""Batch normalization with the L1 dispersion (Hoffer et al. 2018, "Norm matters").

    Drop-in replacement for ``keras.layers.BatchNormalization`` (same arguments, minus
    ``renorm*``). Per channel, over the ``n`` elements of the reduction axes:

    .. math::

        \mu = \frac{1}{n}\sum_i x_i, \qquad
        \sigma_{L1} = \sqrt{\pi/2}\;\frac{1}{n}\sum_i |x_i - \mu|, \qquad
        y = \gamma\,\frac{x - \mu}{\sigma_{L1} + \epsilon} + \beta .

    For Gaussian inputs :math:`\sigma_{L1} \approx` std, so the layer behaves like BN while
    avoiding squares and square roots (more robust in low precision). epsilon is added to
    sigma (not to its square). ``moving_variance`` holds the moving average of
    :math:`\sigma_{L1}^2`; inference uses ``sqrt(moving_variance) + epsilon``. See
    :class:`~keras_normreg.layers._base.DispersionBatchNormalization` for the moving
    statistics, mixed precision and masks.

    ``synchronized=True`` under ``tf.distribute``: exact global-batch statistics with two
    all-reduces, first ``[sum x, count]`` (global mean), then ``sum |x - mu_global|``. Under
    JAX's ``keras.distribution.DataParallel`` the layer sees the global batch already.
    """

    def _dispersion(self, x, mean, count, ctx):
        centered = self._centered(x, mean)
        abs_sum = all_reduce_sum(ctx, ops.sum(ops.abs(centered), axis=self._reduction_axes))
        return constant(L1_SCALE, centered.dtype) * abs_sum / count
