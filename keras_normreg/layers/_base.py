"""Shared machinery of the batch-normalization family with a pluggable dispersion.

``DispersionBatchNormalization`` is the common base of :class:`L1BatchNormalization` and
:class:`TopKBatchNormalization`: both centre by the batch mean and divide by a per-channel
*dispersion* sigma that estimates the standard deviation from a cheaper / more robust
statistic (Hoffer et al. 2018, "Norm matters: efficient and accurate normalization schemes
in deep networks"). A subclass only implements :meth:`_dispersion`.

Written with ``keras.ops`` for the TensorFlow, JAX and torch backends. Cross-replica
("synchronized") statistics go through :mod:`keras_normreg._replica` (the ``tf.distribute``
replica context on TensorFlow; on JAX a ``keras.distribution.DataParallel`` step already sees
the global batch); :class:`WeightNormalization` uses the same helpers for its data-dependent
init.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_normreg._replica import all_gather, all_reduce_sum, replica_context
from keras_normreg._utils import check_bool, check_number, received

# Re-exported for the subclasses and WeightNormalization (one import site for the layers).
sync_replica_context = replica_context

__all__ = [
    "DispersionBatchNormalization",
    "all_gather",
    "all_reduce_sum",
    "channel_count",
    "constant",
    "maximum",
    "minimum",
    "sync_replica_context",
]


def constant(value, dtype):
    """A Python number as a tensor of ``dtype``, converted directly: ``ops.cast(0.9, "float64")``
    goes through float32 on TensorFlow (0.8999999761581421), this gives 0.9 exactly."""
    return ops.convert_to_tensor(value, dtype=dtype)


def maximum(a, b):
    """Elementwise max keeping the dtype of same-dtype operands: ``ops.maximum`` follows Keras'
    promotion, which returns float32 for float64 on JAX and torch (Keras 3.15)."""
    return ops.where(a >= b, a, b)


def minimum(a, b):
    """Elementwise min keeping the dtype (see :func:`maximum`)."""
    return ops.where(a <= b, a, b)


def channel_count(x, axis):
    """Number of elements per channel of ``x`` (all elements but along ``axis``), as x.dtype."""
    return ops.cast(ops.size(x) // ops.shape(x)[axis], x.dtype)


class DispersionBatchNormalization(keras.layers.Layer):
    r"""Batch normalization dividing by a per-channel dispersion ``sigma`` instead of the std.

    For every channel ``c`` (the entries of ``axis``), over the ``n`` elements of the
    reduction axes (all axes but ``axis``) of the batch:

    .. math::

        \mu_c = \frac{1}{n}\sum_i x_{ic}, \qquad
        y_{ic} = \gamma_c \frac{x_{ic} - \mu_c}{\sigma_c + \epsilon} + \beta_c

    where :math:`\sigma_c` is computed by the subclass from the centred values
    :math:`x_{ic} - \mu_c` (and is scaled so that :math:`\sigma_c \approx` std for Gaussian
    inputs). **epsilon is added to sigma, not to sigma squared** (Keras' BN uses
    ``sqrt(var + epsilon)``; here it is ``sigma + epsilon``), in training and inference alike.
    Gradients flow through ``mu`` and ``sigma`` as in ordinary BN.

    Moving statistics (non-trainable, updated only in training mode with ``trainable=True``)::

        moving_mean     <- moving_mean * momentum     + mu      * (1 - momentum)
        moving_variance <- moving_variance * momentum + sigma**2 * (1 - momentum)

    i.e. ``moving_variance`` keeps the moving average of the **squared dispersion**, the same
    name and meaning as the variance of ``keras.layers.BatchNormalization`` (checkpoints and
    weight names are interchangeable with BN). Inference computes
    ``gamma * (x - moving_mean) / (sqrt(moving_variance) + epsilon) + beta``.

    Like Keras BN, setting ``layer.trainable = False`` makes the layer run in inference mode.

    Mixed precision: float16/bfloat16 inputs are upcast and all statistics are computed in
    float32 (float64 for a float64 layer); the output is cast to the layer's compute dtype.
    Weights are float32 and not autocast.

    float64: Python-number constants (momentum, epsilon, the dispersion factors) reach float64
    inputs exactly, never through float32.

    ``synchronized=True`` (TensorFlow ``tf.distribute``): inside a replica context with more
    than one replica, the statistics are those of the global batch (see the subclass for how
    its dispersion is reduced; the mean uses one all-reduce of ``[sum x, count]``). Outside a
    strategy it has no effect. On JAX it is not needed: under
    ``keras.distribution.DataParallel`` the layer sees the global (sharded) batch, so its
    batch statistics already are global. On torch (no in-graph replicas) it has no effect.

    Masks are not supported: every element contributes to the statistics and no mask is
    propagated to the next layer.

    Args:
        axis: int, the channel axis (normalized per entry of this axis).
        momentum: float in [0, 1], momentum of the moving statistics.
        epsilon: float > 0 added to the dispersion.
        center, scale: bools, use ``beta`` / ``gamma``.
        beta_initializer, gamma_initializer, moving_mean_initializer,
        moving_variance_initializer, beta_regularizer, gamma_regularizer, beta_constraint,
        gamma_constraint: as in ``keras.layers.BatchNormalization``.
        synchronized: bool, global-batch statistics across replicas under ``tf.distribute``
            (TensorFlow; JAX data parallelism is global-batch already).
        **kwargs: base layer arguments (``name``, ``dtype``, ...).
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.axis = check_number("axis", axis, integer=True)
        self.momentum = float(check_number("momentum", momentum, low=0.0, high=1.0))
        self.epsilon = float(check_number("epsilon", epsilon, low=0.0, low_inclusive=False))
        self.center = check_bool("center", center)
        self.scale = check_bool("scale", scale)
        self.synchronized = check_bool("synchronized", synchronized)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = keras.constraints.get(beta_constraint)
        self.gamma_constraint = keras.constraints.get(gamma_constraint)
        self.gamma = None
        self.beta = None
        self.moving_mean = None
        self.moving_variance = None
        self._reduction_axes = None
        self._channel_axis = None

    # ------------------------------------------------------------------ build
    def build(self, input_shape):
        ndim = len(input_shape)
        if not -ndim <= self.axis < ndim:
            raise ValueError(
                f"Argument `axis` is out of bounds for an input of rank {ndim} "
                f"(input shape {tuple(input_shape)}). {received('axis', self.axis)}"
            )
        self._channel_axis = self.axis % ndim
        channels = input_shape[self._channel_axis]
        if channels is None:
            raise ValueError(
                "The channel axis of the input must have a known size. "
                f"Received: input_shape={tuple(input_shape)} with axis={self.axis}"
            )
        shape = (channels,)
        if self.scale:
            self.gamma = self.add_weight(
                shape=shape, name="gamma", initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer, constraint=self.gamma_constraint,
                trainable=True, autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=shape, name="beta", initializer=self.beta_initializer,
                regularizer=self.beta_regularizer, constraint=self.beta_constraint,
                trainable=True, autocast=False,
            )
        self.moving_mean = self.add_weight(
            shape=shape, name="moving_mean", initializer=self.moving_mean_initializer,
            trainable=False, autocast=False,
        )
        self.moving_variance = self.add_weight(
            shape=shape, name="moving_variance", initializer=self.moving_variance_initializer,
            trainable=False, autocast=False,
        )
        self.input_spec = keras.layers.InputSpec(ndim=ndim, axes={self.axis: channels})
        self._reduction_axes = [i for i in range(ndim) if i != self._channel_axis]

    def compute_output_shape(self, input_shape):
        return input_shape

    # ------------------------------------------------------------------ maths
    def _dispersion(self, x, mean, count, ctx):
        """Per-channel dispersion sigma, shape (channels,), of the batch about ``mean``.

        Args:
            x: the local (per-replica) batch (float32/float64).
            mean: per-channel mean of the *global* batch, shape (channels,).
            count: scalar tensor, number of elements per channel of the *global* batch.
            ctx: replica context to reduce over, or None (statistics are local).
        """
        raise NotImplementedError

    def _centered(self, x, mean):
        """``x - mean`` with ``mean`` broadcast along the channel axis."""
        return x - self._broadcast(mean, len(x.shape))

    def _broadcast(self, stat, ndim):
        shape = [1] * ndim
        shape[self._channel_axis] = -1
        return ops.reshape(stat, shape)

    def batch_statistics(self, x):
        """(mu, sigma) of the (global, if synchronized) batch ``x``, each of shape (channels,)."""
        ctx = sync_replica_context() if self.synchronized else None
        local_sum = ops.sum(x, axis=self._reduction_axes)
        local_count = channel_count(x, self._channel_axis)
        if ctx is None:
            total_sum, count = local_sum, local_count
        else:
            reduced = all_reduce_sum(ctx, ops.concatenate([local_sum, local_count[None]], 0))
            total_sum, count = reduced[:-1], reduced[-1]
        mean = total_sum / count
        return mean, self._dispersion(x, mean, count, ctx)

    def call(self, inputs, training=None):
        # float64 stays float64, anything else (float16/bfloat16/float32) computes in float32.
        # Not keras.backend.result_type(dtype, "float32"): on torch it gives float32 for float64.
        input_dtype = keras.backend.standardize_dtype(inputs.dtype)
        compute_dtype = "float64" if input_dtype == "float64" else "float32"
        x = ops.cast(inputs, compute_dtype)
        if training and self.trainable:
            mean, sigma = self.batch_statistics(x)
            moving_mean = ops.cast(self.moving_mean, compute_dtype)
            moving_variance = ops.cast(self.moving_variance, compute_dtype)
            m = self.momentum
            self.moving_mean.assign(moving_mean * m + ops.stop_gradient(mean) * (1.0 - m))
            self.moving_variance.assign(
                moving_variance * m + ops.square(ops.stop_gradient(sigma)) * (1.0 - m)
            )
        else:
            mean = ops.cast(self.moving_mean, compute_dtype)
            sigma = ops.sqrt(ops.cast(self.moving_variance, compute_dtype))
        inv = 1.0 / (sigma + constant(self.epsilon, compute_dtype))
        if self.scale:
            inv = inv * ops.cast(self.gamma, compute_dtype)
        # y = (x - mu) * inv + beta, folded into one full-size multiply-add as TF's own BN does:
        # y = x * inv + (beta - mu * inv) (the per-channel offset costs nothing).
        ndim = len(x.shape)
        offset = -mean * inv
        if self.center:
            offset = offset + ops.cast(self.beta, compute_dtype)
        outputs = x * self._broadcast(inv, ndim) + self._broadcast(offset, ndim)
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        config = {
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": keras.initializers.serialize(self.beta_initializer),
            "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
            "moving_mean_initializer": keras.initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": keras.initializers.serialize(
                self.moving_variance_initializer
            ),
            "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": keras.regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": keras.constraints.serialize(self.beta_constraint),
            "gamma_constraint": keras.constraints.serialize(self.gamma_constraint),
            "synchronized": self.synchronized,
        }
        return {**super().get_config(), **config}
