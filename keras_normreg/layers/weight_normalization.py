"""Weight normalization wrapper (Salimans & Kingma 2016; bounded variant of Hoffer et al. 2018)."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_normreg._compat import in_stateless_scope, stored_value
from keras_normreg._kernels import Scratch, column_norms, scaled_matmul
from keras_normreg._utils import check_bool, check_choice, check_number, received, register
from keras_normreg.layers._base import all_reduce_sum, sync_replica_context

_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_DEPTHWISE_TYPES = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
SUPPORTED_LAYERS = (keras.layers.Dense,) + _CONV_TYPES + _DEPTHWISE_TYPES

#: Added to the pre-activation variance in the data-dependent initialization.
DATA_INIT_EPSILON = 1e-6

#: Where ``g / ||v||`` is applied: chosen per call ("auto"), on the kernel, on the outputs.
FORMS = ("auto", "kernel", "output")


def _kind(layer):
    if isinstance(layer, keras.layers.Dense):
        return "dense"
    if isinstance(layer, _CONV_TYPES):
        return "conv"
    if isinstance(layer, _DEPTHWISE_TYPES):
        return "depthwise"
    return None


@register
class WeightNormalization(keras.layers.Wrapper):
    r"""Weight normalization of a Dense / ConvND / DepthwiseConvND layer.

    The kernel is re-parametrized by a direction ``v`` (same shape as the kernel) and a
    gain ``g`` (Salimans & Kingma 2016, "Weight normalization"):

    .. math::  w = g \, \frac{v}{\lVert v \rVert_\epsilon}, \qquad
               \lVert v \rVert_\epsilon = \sqrt{\max\big(\textstyle\sum v^2,\ \epsilon\big)}

    with the norm taken per output unit:

    * ``Dense`` kernel ``(in, units)``: over axis 0, ``g`` of shape ``(units,)``;
    * ``Conv1D/2D/3D`` kernel ``(*kernel_size, in // groups, filters)``: over all axes but the
      last, ``g`` of shape ``(filters,)``;
    * ``DepthwiseConv1D/2D`` kernel ``(*kernel_size, in, multiplier)``: over the spatial axes,
      ``g`` of shape ``(in, multiplier)`` (one gain per output channel).

    The output is invariant to the scale of ``v`` (while ``sum v^2 > epsilon``): ``v`` is
    a scale-invariant weight. The variables are named ``v`` (path ``<wrapper>/v``) and ``g``
    (path ``<wrapper>/g``), plus ``bias`` when the inner layer uses one; other modules
    (diagnostics, optimizers) recognize scale-invariant weights by the name ``v``.

    How the inner layer is run: the wrapper never builds the inner layer (so it has no
    kernel variable of its own); it reads the inner layer's configuration (units/filters,
    strides, padding incl. ``"causal"``, data_format, dilation_rate, groups, use_bias,
    activation, initializers, regularizers, constraints) and computes the same op with
    ``keras.ops`` (``matmul`` / ``conv`` / ``depthwise_conv``) on ``w``. ``v`` uses the inner
    layer's kernel (depthwise) initializer, regularizer and constraint; ``bias`` its bias
    ones; its activity regularizer becomes the wrapper's. The inner layer must not be built
    and must not use LoRA. Subclasses of the supported layers with a custom ``call`` are
    run as their base class.

    Initialization: ``g`` starts at ``||v||`` so that initially ``w = v`` (the layer computes
    the same function as the unwrapped layer with the same kernel initializer).

    ``data_init=True`` (Salimans & Kingma §3): on the first call in training mode (e.g. the
    first batch of ``model.fit``; works inside ``tf.function`` through a non-trainable
    ``initialized`` flag and ``keras.ops.cond``), with ``t = x * v/||v||`` the
    pre-activation for ``g = 1`` and no bias, and ``mu``, ``s^2`` its per-unit batch mean and
    variance (over all axes but the channel axis)::

        g <- 1 / sqrt(s^2 + 1e-6)        bias <- -mu * g

    so that the pre-activations ``g * t + bias`` of that batch have zero mean and unit
    variance per unit. With ``fixed_g`` only the bias is set (``-mu * fixed_g``, zero mean;
    the variance cannot be changed because the output is invariant to ``||v||``); without a
    bias only ``g`` is set. Under ``tf.distribute`` with several replicas the statistics are
    all-reduced, so every replica initializes identically (global-batch statistics); under
    JAX's ``keras.distribution.DataParallel`` the layer sees the global batch already.
    **JAX**: the trainer keeps no assignment to trainable variables made inside a train step,
    so call the model once in training mode before ``fit`` (``model(x_batch,
    training=True)``, eager). A ``stateless_call`` in training mode on an uninitialized
    wrapper raises a ValueError saying so; inside ``fit`` JAX has detached the variable
    values, so the check cannot see them and the init would be lost silently.
    TensorFlow and torch initialize inside ``fit``.

    ``fixed_g=c`` ("bounded weight norm", Hoffer et al. 2018): ``g`` is a non-trainable
    constant ``c`` for every unit, so ``||w|| = c`` per unit at all times.

    **Two forms of the same function** (``form``). With ``s = g / ||v||`` per output unit and
    ``L`` the inner layer's linear op (matmul / conv / depthwise conv, linear in its kernel
    and acting on each output unit's kernel slice separately)::

        kernel form:   y = L(x, v * s) + b           (build w = v * s, then run the op)
        output form:   y = L(x, v) * s + b           (Salimans & Kingma 2016, eq. 2)

    equal because ``L(x, v * s)_u = s_u * L(x, v)_u`` for every output unit ``u``. Gradients
    (``dy`` upstream, ``z = L(x, v)``, ``c_u = -(dL/ds_u) g_u / ||v_u||^3``)::

        kernel form:   dw = L*(x, dy);  dv = dw * s + v * c';   dg = <dw, v> / ||v||
        output form:   dz = dy * s;  dv = L*(x, dz) + v * c;    dg = sum(dy * z) / ||v||

    Elementwise work beyond the shared op and norm (the ``v * c`` term and ``||v||`` are in
    both): the kernel form touches every kernel entry twice (``v * s`` forward, ``dw * s``
    backward), ``2 K`` with ``K = prod(kernel shape)``; the output form touches every output
    entry three times (``z * s``, ``dy * s``, ``dy * z``), ``3 R U`` with ``R`` the rows of
    the output (batch x output positions) and ``U`` the output units (XLA fuses the first
    and last into the bias add and the loss gradient, leaving ``~R U``). ``form="auto"``
    takes the output form when ``R * U <= K`` (from the static shapes of the call;
    ``R <= fan_in`` for Dense): a Dense layer on a batch no larger than its fan-in, a conv
    on small maps / few positions. Large feature maps (``R U >> K``, the usual conv) keep the
    kernel form. An unknown batch size counts as 1 for convolutions and, for Dense, takes the
    output form on rank-2 inputs (a batch of feature vectors). ``"kernel"`` / ``"output"``
    force a form; the results agree to float rounding (the order of one multiplication).

    Args:
        layer: an unbuilt ``keras.layers.Dense``, ``Conv1D``, ``Conv2D``, ``Conv3D``,
            ``DepthwiseConv1D`` or ``DepthwiseConv2D``.
        data_init: bool, data-dependent initialization on the first training batch.
        fixed_g: None (trainable ``g``) or a float > 0 (``g`` fixed at that value).
        epsilon: float > 0, lower bound on the squared norm of ``v``.
        form: ``"auto"`` (default), ``"kernel"`` or ``"output"``: where ``g / ||v||`` is
            applied (see above; the same function either way).
        **kwargs: base layer arguments; ``dtype`` defaults to the inner layer's dtype policy.
    """

    def __init__(self, layer, data_init=False, fixed_g=None, epsilon=1e-12, form="auto",
                 **kwargs):
        if _kind(layer) is None:
            names = ", ".join(cls.__name__ for cls in SUPPORTED_LAYERS)
            raise ValueError(
                f"Argument `layer` must be a Keras layer of type {names}. "
                f"{received('layer', layer)}"
            )
        if layer.built:
            raise ValueError(
                "Argument `layer` must not be built yet: WeightNormalization creates the "
                f"kernel variables itself. {received('layer', layer)}"
            )
        if getattr(layer, "lora_rank", None):
            raise ValueError(
                f"Argument `layer` must not use LoRA (lora_rank). {received('layer', layer)}"
            )
        check_bool("data_init", data_init)
        check_number("fixed_g", fixed_g, low=0.0, low_inclusive=False, allow_none=True)
        check_number("epsilon", epsilon, low=0.0, low_inclusive=False)
        check_choice("form", form, FORMS)
        if "dtype" not in kwargs:
            kwargs["dtype"] = layer.dtype_policy
        super().__init__(layer, **kwargs)
        self.data_init = data_init
        self.fixed_g = None if fixed_g is None else float(fixed_g)
        self.epsilon = float(epsilon)
        self.form = form
        if self.activity_regularizer is None and layer.activity_regularizer is not None:
            self.activity_regularizer = layer.activity_regularizer
        self._layer_kind = _kind(layer)
        self._untrack_inner_layer()
        # PyTorch's output form writes its temporary v * v here (an untracked plain object)
        self._scratch = Scratch()
        self.v = None
        self.g = None
        self.bias = None
        self.initialized = None

    def _untrack_inner_layer(self):
        """Keep the inner layer off the list of sublayers (``self.layer`` stays, and so does
        its configuration and its place in saved files, which Keras finds by attribute).

        The inner layer is never built: it only describes the op. Keras' trainers check
        that every sublayer is built before each ``train_on_batch`` / ``test_on_batch`` /
        ``predict_on_batch`` and ``fit`` / ``evaluate`` / ``predict`` call, and otherwise
        rebuild the whole model symbolically (tracing every layer's ``call``): per call, a
        few milliseconds on JAX and PyTorch and more on TensorFlow, which made a
        weight-normalized ``Dense(1024)`` step ~1.5-2x slower than a plain one.
        """
        self._layers[:] = [sub for sub in self._layers if sub is not self.layer]

    # ------------------------------------------------------------------ build
    def _channel_axis(self, ndim):
        if self._layer_kind == "dense" or self.layer.data_format == "channels_last":
            return ndim - 1
        return 1

    def build(self, input_shape):
        layer = self.layer
        ndim = len(input_shape)
        in_dim = input_shape[self._channel_axis(ndim)]
        if in_dim is None:
            raise ValueError(
                "The channel axis of the input must have a known size. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        if self._layer_kind == "dense":
            kernel_shape = (in_dim, layer.units)
            initializer = layer.kernel_initializer
        elif self._layer_kind == "conv":
            if in_dim % layer.groups:
                raise ValueError(
                    f"The number of input channels ({in_dim}) must be divisible by the "
                    f"inner layer's groups. Received: groups={layer.groups}"
                )
            kernel_shape = tuple(layer.kernel_size) + (in_dim // layer.groups, layer.filters)
            initializer = layer.kernel_initializer
        else:
            kernel_shape = tuple(layer.kernel_size) + (in_dim, layer.depth_multiplier)
            initializer = layer.depthwise_initializer
        if self._layer_kind == "depthwise":
            self._norm_axes = tuple(range(len(kernel_shape) - 2))
            regularizer, constraint = layer.depthwise_regularizer, layer.depthwise_constraint
        else:
            self._norm_axes = tuple(range(len(kernel_shape) - 1))
            regularizer, constraint = layer.kernel_regularizer, layer.kernel_constraint
        gain_shape = tuple(kernel_shape[len(self._norm_axes):])
        self.v = self.add_weight(
            name="v", shape=kernel_shape, initializer=initializer, regularizer=regularizer,
            constraint=constraint, trainable=True, autocast=False,
        )
        if self.fixed_g is None:
            gain_init, gain_trainable = self._initial_gain, True
        else:
            gain_init = keras.initializers.Constant(self.fixed_g)
            gain_trainable = False
        self.g = self.add_weight(
            name="g", shape=gain_shape, initializer=gain_init, trainable=gain_trainable,
            autocast=False,
        )
        if layer.use_bias:
            units = 1
            for d in gain_shape:
                units *= d
            self.bias = self.add_weight(
                name="bias", shape=(units,), initializer=layer.bias_initializer,
                regularizer=layer.bias_regularizer, constraint=layer.bias_constraint,
                trainable=True, autocast=False,
            )
        if self.data_init:
            self.initialized = self.add_weight(
                name="initialized", shape=(), dtype="bool", initializer="zeros",
                trainable=False, autocast=False,
            )
        self.input_spec = keras.layers.InputSpec(
            ndim=None if self._layer_kind == "dense" else ndim,
            min_ndim=2,
            axes={self._channel_axis(ndim) - ndim: in_dim},
        )

    def _initial_gain(self, shape, dtype=None):
        return ops.cast(self._norm(ops.convert_to_tensor(self.v)), dtype or "float32")

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    # ------------------------------------------------------------------ maths
    def _norm(self, v):
        """Per-unit ``sqrt(max(sum(v**2 over the norm axes), epsilon))``, shape of ``g``."""
        lead = len(self._norm_axes)  # the norm axes are the leading axes of the kernel
        fan = math.prod(v.shape[:lead])
        norms = column_norms(ops.reshape(v, (fan, -1)), self.epsilon)
        return ops.reshape(norms, tuple(v.shape[lead:]))

    def _direction(self):
        v = ops.convert_to_tensor(self.v)
        return v / self._norm(v)

    def _unit_scale(self, v):
        """The per-unit factor ``g / ||v||`` (shape of ``g``)."""
        return ops.convert_to_tensor(self.g) / self._norm(v)

    def effective_kernel(self):
        """The effective kernel ``w = g * v / ||v||`` (variable dtype), computed as
        ``v * (g / ||v||)``: the per-unit factor first saves one pass over the kernel."""
        v = ops.convert_to_tensor(self.v)
        return v * self._unit_scale(v)

    def _linear(self, x, w):
        """The inner layer's op on ``x`` with kernel ``w``, without bias and activation."""
        layer = self.layer
        if self._layer_kind == "dense":
            return ops.matmul(x, w)
        padding = layer.padding
        if padding == "causal":
            left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
            pads = [[0, 0], [left, 0], [0, 0]]
            if layer.data_format == "channels_first":
                pads = [[0, 0], [0, 0], [left, 0]]
            x = ops.pad(x, pads)
            padding = "valid"
        op = ops.conv if self._layer_kind == "conv" else ops.depthwise_conv
        return op(
            x, w, strides=layer.strides, padding=padding, data_format=layer.data_format,
            dilation_rate=layer.dilation_rate,
        )

    def _scale_outputs(self, x):
        """Whether ``call`` scales the outputs rather than the kernel (see the class docstring:
        ``form="auto"`` takes the output form when output rows x units <= kernel size)."""
        if self.form != "auto":
            return self.form == "output"
        if self._layer_kind == "dense":
            rows = x.shape[:-1]
            if any(d is None for d in rows):
                return len(x.shape) == 2
            return math.prod(rows) <= self.v.shape[0]
        out_shape = self.layer.compute_output_shape(tuple(x.shape))
        axis = self._channel_axis(len(out_shape))
        positions = [d for i, d in enumerate(out_shape) if i != axis]
        if any(d is None for d in positions[1:]):
            return False
        rows = math.prod(positions[1:]) * (positions[0] or 1)
        return rows * out_shape[axis] <= math.prod(self.v.shape)

    def _broadcast_units(self, values, ndim):
        shape = [1] * ndim
        shape[self._channel_axis(ndim)] = -1
        return ops.reshape(values, shape)

    def _local_moment_sums(self, x):
        """Per-unit [sum t, sum t^2, count] of the pre-activations t = x * v/||v||, shape (3, units)."""
        ndim = len(x.shape)
        t = ops.cast(self._linear(x, ops.cast(self._direction(), x.dtype)), "float32")
        axis = self._channel_axis(ndim)
        axes = [i for i in range(ndim) if i != axis]
        total = ops.sum(t, axis=axes)
        count = ops.cast(ops.size(t) // ops.shape(t)[axis], "float32")
        return ops.stack([total, ops.sum(ops.square(t), axis=axes), ops.ones_like(total) * count])

    def _initial_values(self, sums):
        """The data-init ``(g, bias)`` from the moment sums (either may be None: unchanged)."""
        count = ops.maximum(sums[2], 1.0)  # zeros once initialized: keep the maths finite
        mean = sums[0] / count
        variance = ops.maximum(sums[1] / count - ops.square(mean), 0.0)
        g = None
        if self.fixed_g is None:
            gain = 1.0 / ops.sqrt(variance + DATA_INIT_EPSILON)
            g = ops.cast(ops.reshape(gain, tuple(self.g.shape)), self.g.dtype)
        else:
            gain = ops.reshape(ops.cast(self.g, "float32"), (-1,))
        bias = None if self.bias is None else ops.cast(-mean * gain, self.bias.dtype)
        return g, bias

    def _maybe_initialize(self, x):
        """Data-dependent init on the first training call (a no-op afterwards).

        Written without side effects inside a ``cond`` (JAX traces both branches; a
        collective cannot sit inside a ``cond`` under ``tf.distribute``): one ``cond`` yields
        the local moment sums (zeros once initialized, so later steps skip the pass over the
        batch), the (3 x units) sums are all-reduced across replicas (TensorFlow, several
        replicas), and ``g`` / ``bias`` are assigned ``where(initialized, old, new)``.
        """
        done = self.initialized.value
        units = math.prod(self.g.shape)
        local = ops.cond(done, lambda: ops.zeros((3, units), "float32"),
                         lambda: self._local_moment_sums(x))
        sums = all_reduce_sum(sync_replica_context(), local)
        g, bias = self._initial_values(sums)
        if g is not None:
            self.g.assign(ops.where(done, self.g.value, g))
        if bias is not None:
            self.bias.assign(ops.where(done, self.bias.value, bias))
        self.initialized.assign(ops.ones_like(done))

    def _check_can_initialize(self):
        """JAX: refuse to data-initialize inside a stateless (trainer) step, which would lose
        the assignments to the trainable ``g`` / ``bias`` and keep ``initialized=True``."""
        if keras.backend.backend() != "jax" or not in_stateless_scope():
            return
        value = stored_value(self.initialized)
        if value is None:  # purged by JAX's fit while its step runs: the state is unknown here
            return
        try:
            done = bool(ops.convert_to_numpy(value))
        except Exception:  # a traced value: initialized inside the same trace, nothing to say
            return
        if not done:
            raise ValueError(
                "WeightNormalization(data_init=True) cannot initialize inside a JAX train step: "
                "JAX's trainer keeps no assignment to trainable variables (g, bias). Call the "
                "model once in training mode on a batch before fit, e.g. "
                "`model(x_batch, training=True)`. Received: data_init=True"
            )

    def call(self, inputs, training=None):
        if self.data_init and training:
            self._check_can_initialize()
            self._maybe_initialize(inputs)
        x = inputs
        if self._scale_outputs(x):
            # L(x, v * s) == L(x, v) * s with s = g / ||v|| per output unit: scale the
            # (rows, units) output instead of the kernel (cheaper when rows * units <= size).
            v = ops.convert_to_tensor(self.v)
            if (self._layer_kind == "dense" and keras.backend.backend() == "torch"
                    and keras.backend.standardize_dtype(x.dtype)
                    == keras.backend.standardize_dtype(v.dtype)):
                return self._finish(self._dense_output_form(x, v))
            outputs = self._linear(x, ops.cast(v, x.dtype))
            # x.dtype, not outputs.dtype: Keras' torch matmul returns float32 for float64.
            scale = ops.reshape(ops.cast(self._unit_scale(v), x.dtype), (-1,))
            outputs = outputs * self._broadcast_units(scale, len(outputs.shape))
        else:
            w = ops.cast(self.effective_kernel(), x.dtype)
            outputs = self._linear(x, w)
        return self._finish(outputs)

    def _dense_output_form(self, x, v):
        """PyTorch, Dense, output form: ``(x @ v) * (g / ||v||)`` as one autograd op
        (:func:`keras_normreg._kernels.scaled_matmul`: its gradient written out, one pass
        fewer over the kernel than autograd's), for inputs of any rank (flattened to rows x
        fan_in). TensorFlow and JAX keep the composed ops (XLA fuses them; TensorFlow has no
        accumulating GEMM to gain from)."""
        g = ops.reshape(ops.convert_to_tensor(self.g), (-1,))
        if len(x.shape) == 2:
            return scaled_matmul(x, v, g, self.epsilon, self._scratch)
        rows = ops.reshape(x, (-1, x.shape[-1]))
        out = scaled_matmul(rows, v, g, self.epsilon, self._scratch)
        return ops.reshape(out, tuple(ops.shape(x)[:-1]) + (v.shape[-1],))

    def _finish(self, outputs):
        """Bias and activation of the inner layer."""
        if self.bias is not None:
            bias = ops.cast(self.bias, outputs.dtype)
            outputs = outputs + self._broadcast_units(bias, len(outputs.shape))
        if self.layer.activation is not None:
            outputs = self.layer.activation(outputs)
        return outputs

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # keras.layers.Wrapper.from_config pops "layer" from the dict it is given: work on a copy.
        return super().from_config(dict(config), custom_objects=custom_objects)

    def get_config(self):
        config = {
            "data_init": self.data_init,
            "fixed_g": self.fixed_g,
            "epsilon": self.epsilon,
            "form": self.form,
        }
        return {**super().get_config(), **config}
