"""``keras.layers.BatchNormalization`` with TensorFlow's fused kernel in training."""

from __future__ import annotations

import keras
from keras import ops

from keras_normreg._utils import register

#: Input dtypes the fused path takes (Keras computes BN in float32 for these; float64 stays
#: float64 on Keras' path).
FUSED_DTYPES = ("float16", "bfloat16", "float32")

#: TensorFlow's fused kernel raises any epsilon below this to it: smaller ones take Keras' path.
FUSED_MIN_EPSILON = 1.001e-5


@register
class FusedBatchNormalization(keras.layers.BatchNormalization):
    r"""``keras.layers.BatchNormalization`` (same arguments, variables, config and maths) whose
    training step runs TensorFlow's fused kernel where it applies.

    Keras 3's BatchNormalization computes the batch moments and the normalization with
    separate ops, and its gradient is the autodiff of that chain: several passes over the
    activations forward and backward. TensorFlow has one fused op for the training forward
    pass (``FusedBatchNormV3``: mean, variance and output) with a fused gradient; oneDNN runs
    both on CPU and cuDNN on GPU. In a ResNet-20 train step on a 2-core CPU (TensorFlow,
    batch 128) Keras' BatchNormalization took ~45% of the step; the fused kernel made the
    step ~1.5x faster (bench/bench_backends.py, group ``resnet20``: 126 vs 197 ms;
    docs/benchmarks.md).

    The fused path is taken on TensorFlow in training (``training=True`` and
    ``trainable``) for rank-4 inputs normalized over the last axis (channels-last images),
    without mask, ``renorm`` or ``synchronized``, with ``epsilon >= 1.001e-5`` (the kernel
    raises smaller ones) and float16/bfloat16/float32 inputs, computed in float32 as Keras
    does (float16/bfloat16 inputs are cast up, the output cast back; float64 inputs take
    Keras' path, which computes in float64). Everything else, inference included, is
    Keras' own ``call``. Same results: per channel, over the ``n`` batch x spatial entries,
    ``mu`` and the biased variance ``s^2``, ``y = gamma (x - mu) / sqrt(s^2 + eps) + beta``,
    and the moving statistics ``m <- momentum m + (1 - momentum) mu``,
    ``v <- momentum v + (1 - momentum) s^2`` (the kernel reports the unbiased variance
    ``n s^2 / (n - 1)``, which is converted back), equal to Keras' to float rounding
    (tests/layers/test_fused_batch_norm.py compares outputs, gradients and moving
    statistics with NumPy and with Keras' layer). On JAX and PyTorch the layer is Keras'
    BatchNormalization (XLA fuses Keras' ops on JAX).
    """

    def _fused_applies(self, inputs, training, mask):
        if keras.backend.backend() != "tensorflow":
            return False
        if not (training and self.trainable) or mask is not None:
            return False
        if self.renorm or self.synchronized or self.epsilon < FUSED_MIN_EPSILON:
            return False
        if keras.backend.standardize_dtype(inputs.dtype) not in FUSED_DTYPES:
            return False  # float64: Keras computes in float64, the kernel in float32
        ndim = len(inputs.shape)
        return ndim == 4 and self.axis in (-1, ndim - 1)

    def call(self, inputs, training=None, mask=None):
        if not self._fused_applies(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = ops.cast(inputs, "float32")
        channels = x.shape[-1]
        gamma = (ops.cast(self.gamma, "float32") if self.scale
                 else ops.ones((channels,), "float32"))
        beta = (ops.cast(self.beta, "float32") if self.center
                else ops.zeros((channels,), "float32"))
        y, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        n = ops.cast(ops.size(x) // channels, "float32")
        variance = unbiased * ((n - 1.0) / ops.maximum(n, 1.0))
        momentum = self.momentum
        moving_mean = ops.cast(self.moving_mean, "float32")
        moving_variance = ops.cast(self.moving_variance, "float32")
        self.moving_mean.assign(moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(moving_variance * momentum + variance * (1.0 - momentum))
        return ops.cast(y, self.compute_dtype)
