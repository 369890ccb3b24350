"""The implementation of :mod:`keras_normreg.invariance` (the rules it applies, its result and
its limits are documented there; import the public names from there).

For one weight ``W`` a *symbolic state* is propagated through the Keras graph (:class:`_State`:
``none``, ``scaled`` with its additive-term axes, ``inv``, ``broken``), one rule per layer kind
(:func:`_apply_op`, :func:`_normalize`, :func:`_merge`, :func:`_declared_rule`); the model's
outputs' states give the verdict (:func:`_verdict`) and the granularity (:func:`_granularity`).

Besides the public names, the package's own modules use :func:`candidate_variables` (the weights
analysed), :func:`verdicts` (the records keyed by ``id(variable)``, optionally for some weights
only) and :func:`is_graph_model`.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from keras_normreg import _compat, _targeting
from keras_normreg._utils import variable_name

# --------------------------------------------------------------------------- verdict


@dataclass(frozen=True)
class ScaleInvariance:
    """The analysis of one weight (what :func:`find_scale_invariant` and friends return).

    Attributes:
        path: the variable path (``"block1/conv/kernel"``).
        invariant: whether the model's function is proved invariant to rescaling the weight.
        reason: the explanation for humans: ``"<path> -> <norm> (via <layer>, ...), <norm>"``
            when invariant, ``"not scale-invariant: ..."`` otherwise. Read the fields below
            instead of parsing it.
        normalizers: names of the layers that remove the scale, in the order met (the
            normalization layers; a WeightNormalization wrapper for its direction ``v``).
            Empty when not invariant.
        via: for each of ``normalizers``, the names of the layers (or raw ops) passed between
            the weight's layer and it.
        granularity: over which axes the function is invariant to rescaling (the groups sphere
            mode, ``DecoupledWeightDecay(scale_invariant="sphere")``, retracts): ``"unit"``
            (each output unit, the last axis of a Keras kernel, on its own: a Dense/Conv kernel
            reaching only per-channel batch/group normalizations through channel-wise layers),
            ``"tensor"`` (the whole tensor: always the case when invariant) or a tuple of axes
            (a WeightNormalization ``v``: its norm axes). None when not invariant.
    """

    path: str
    invariant: bool
    reason: str
    normalizers: tuple[str, ...] = ()
    via: tuple[tuple[str, ...], ...] = ()
    granularity: str | tuple[int, ...] | None = None


# --------------------------------------------------------------------------- states


@dataclass(frozen=True)
class _State:
    kind: str  # "none" | "scaled" | "inv" | "broken"
    bias_axes: frozenset = frozenset()  # for "scaled": axes along which the additive term varies
    via: tuple = ()  # for "scaled": layers passed since the weight
    norms: tuple = ()  # for "inv": ((normalization name, via), ...)
    reason: str = ""  # for "broken"
    # for "scaled": set when only some slices along this axis scale (Concatenate with a branch
    # that does not), which only a per-channel normalization over that axis undoes
    partial_axis: int | None = None

    @property
    def biased(self):
        return bool(self.bias_axes)


_NONE = _State("none")


def _broken(reason):
    return _State("broken", reason=reason)


def _scaled(bias_axes=(), via=(), partial_axis=None):
    return _State("scaled", bias_axes=frozenset(bias_axes), via=tuple(via),
                  partial_axis=partial_axis)


def _merge_norms(states):
    out = []
    for s in states:
        for n in s.norms:
            if n not in out:
                out.append(n)
    return tuple(out)


def _merge_via(states, extra=None):
    out = []
    for s in states:
        for name in s.via:
            if name not in out:
                out.append(name)
    if extra is not None and extra not in out:
        out.append(extra)
    return tuple(out)


# --------------------------------------------------------------------------- layer facts

L = keras.layers
_LINEAR = (L.Dense, L.EinsumDense, L.Conv1D, L.Conv2D, L.Conv3D, L.DepthwiseConv1D,
           L.DepthwiseConv2D, L.SeparableConv1D, L.SeparableConv2D, L.Conv1DTranspose,
           L.Conv2DTranspose, L.Conv3DTranspose)
_CONV_LIKE = _LINEAR[2:]
_DROPOUT_LIKE = (L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
                 L.GaussianDropout)
_IDENTITY_LIKE = (L.Identity, L.ActivityRegularization)
_SHAPE_ONLY = (L.Reshape, L.Permute, L.RepeatVector)  # keep unbiased s; break a biased one
_ZERO_PAD = (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D)
_SPATIAL_KEEP = (L.Cropping1D, L.Cropping2D, L.Cropping3D, L.UpSampling1D, L.UpSampling2D,
                 L.UpSampling3D, L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
                 L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D)
_GLOBAL_POOL = (L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
                L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D)
_ELEMENTWISE = (L.Activation, L.ReLU, L.LeakyReLU, L.PReLU) + _DROPOUT_LIKE + _IDENTITY_LIKE
_SUM_LIKE = {"Add", "Subtract", "Average", "Maximum", "Minimum"}
_HOMOGENEOUS_ACTIVATIONS = {"linear", "relu", "leaky_relu"}


def _rank(tensor):
    return len(tensor.shape)


def _channel_axis(layer, rank):
    fmt = getattr(layer, "data_format", "channels_last")
    return 1 if fmt == "channels_first" else rank - 1


def _norm_axes(axis, rank):
    axes = [axis] if isinstance(axis, int) else list(axis)
    return {a % rank for a in axes}


def _activation_name(fn):
    if fn is None:
        return "linear"
    name = getattr(fn, "__name__", None)
    if name is None:
        try:
            name = keras.activations.serialize(fn)
        except Exception:  # noqa: BLE001 - any failure means "unknown activation"
            name = None
    return name if isinstance(name, str) else repr(fn)


def _apply_activation(state, layer, name_for_reason):
    """Apply ``layer.activation`` (if any) to a scaled state."""
    act = _activation_name(getattr(layer, "activation", None))
    if act == "linear":
        return state
    if act not in _HOMOGENEOUS_ACTIVATIONS:
        return _broken(f"activation {act!r} of {name_for_reason} is not positively homogeneous")
    if state.biased:
        return _broken(
            f"the bias of {name_for_reason} is added before its {act!r} activation "
            "(relu(c*a + b) is not c*relu(a + b'))"
        )
    return state


def _linear_facts(layer):
    """(kind, layer providing use_bias/activation/padding/data_format) for a linear layer."""
    if _targeting.is_weight_normalization(layer):
        inner = _targeting.inner_layer(layer)
        if inner is not None and isinstance(inner, _LINEAR):
            return inner
        return None
    if isinstance(layer, _LINEAR):
        return layer
    return None


def _has_bias(facts):
    if isinstance(facts, L.EinsumDense):
        return facts.bias_axes is not None
    return bool(getattr(facts, "use_bias", False))


# --------------------------------------------------------------------------- targets


@dataclass
class _Target:
    layer: object
    variable: object
    name: str  # variable path, for messages


def _start_state(target, in_states, out_tensor):
    """State of the output of the weight's own layer."""
    layer, variable = target.layer, target.variable
    if any(s.kind != "none" for s in in_states):
        return _broken(f"{layer.name} is called on a tensor that already depends on {target.name}")
    rank = _rank(out_tensor)
    var_name = variable_name(variable)
    kind = _targeting.normalization_kind(layer)
    if kind is not None:
        if var_name != "gamma":
            return _broken(f"{target.name} is not a scale of {layer.name}")
        if getattr(layer, "center", False):  # beta varies along the normalization axis
            return _scaled(_norm_axes(getattr(layer, "axis", -1), rank))
        return _scaled()
    facts = _linear_facts(layer)
    if isinstance(layer, L.Embedding):
        if var_name != "embeddings":
            return _broken(f"{target.name} is not analysed")
        return _scaled()
    if facts is None:
        return _broken(f"{type(layer).__name__} {layer.name!r} is not a layer we can analyse")
    if _targeting.is_weight_normalization(layer) and var_name not in ("g",):
        return _broken(f"{target.name} is not analysed")
    if _has_bias(facts):
        if isinstance(facts, L.EinsumDense):
            return _broken(f"the bias layout of EinsumDense {layer.name!r} is not analysed")
        state = _scaled({_channel_axis(facts, rank)})
    else:
        state = _scaled()
    return _apply_activation(state, facts, layer.name)


# --------------------------------------------------------------------------- op rules


def _normalize(layer, kind, s, in_tensor, name):
    """A normalization layer receiving the scaled state ``s``."""
    rank = _rank(in_tensor)
    via = f" (via {', '.join(s.via)})" if s.via else ""
    if s.biased:
        if kind in ("unit", "rms") or (kind == "layer" and getattr(layer, "rms_scaling", False)):
            return _broken(
                f"{name}: the bias added before {layer.name} is not removed "
                f"(it does not subtract a mean){via}"
            )
        if kind == "batch":
            reduced = set(range(rank)) - _norm_axes(getattr(layer, "axis", -1), rank)
        elif kind == "layer":
            reduced = _norm_axes(layer.axis, rank)
        else:  # group
            ch = layer.axis % rank
            channels = in_tensor.shape[ch]
            one_per_group = layer.groups == -1 or (channels is not None and layer.groups == channels)
            reduced = set(range(1, rank)) - ({ch} if one_per_group else set())
        if s.bias_axes & reduced:
            return _broken(
                f"{name}: the per-channel bias added before {layer.name} varies over the axes it "
                f"normalizes, so it is not removed (use use_bias=False){via}"
            )
    return _State("inv", norms=((layer.name, s.via),))


def _merge(op, node, states, name, out_rank):
    cls = type(op).__name__
    w_dep = [s for s in states if s.kind != "none"]
    scaled = [s for s in states if s.kind == "scaled"]
    label = op.name if isinstance(op, keras.layers.Layer) else cls
    nontensor = len(node.arguments.keras_tensors) != _count_call_values(node)
    if nontensor and not isinstance(op, keras.layers.Layer):
        return _broken(f"{name} meets a constant in {label}")
    if any(st.partial_axis is not None for st in scaled) and cls != "Concatenate":
        return _broken(f"{name}: {label} mixes a partially scaled tensor (after a Concatenate)")
    if cls == "Concatenate":
        axis = getattr(op, "axis", -1) % out_rank
        if any(st.partial_axis not in (None, axis) for st in scaled):
            return _broken(f"{name}: {label} concatenates along another axis")
        bias = frozenset().union(*(st.bias_axes for st in scaled))
        bias = bias | {axis} if bias else bias
        full = len(scaled) == len(states) and all(st.partial_axis is None for st in scaled)
        # mixed with branches that do not scale: only some channels scale; a per-channel
        # normalization over `axis` still removes the scale (DenseNet: concat -> BN)
        return _scaled(bias, _merge_via(scaled, label), None if full else axis)
    if cls in _SUM_LIKE:
        if len(scaled) != len(states):
            return _broken(
                f"{name} is combined in {label} with a branch that does not scale with it "
                "(e.g. a residual connection)"
            )
        bias = frozenset().union(*(s.bias_axes for s in scaled))
        if bias and cls in ("Maximum", "Minimum"):
            return _broken(f"{name}: {label} of biased branches")
        return _scaled(bias, _merge_via(scaled, label))
    if cls == "Multiply":
        if len(scaled) == 1 and not scaled[0].biased and len(w_dep) >= 1:
            others = [s for s in states if s is not scaled[0]]
            if all(o.kind in ("none", "inv") for o in others):
                return _scaled((), _merge_via(scaled, label))
        return _broken(f"{name} is multiplied in {label} in a way that is not homogeneous")
    return _broken(f"{name} reaches {label} ({cls}), which is not known to be homogeneous")


def _count_call_values(node):
    args = keras.tree.flatten((node.arguments.args, node.arguments.kwargs))
    return len(args)


def _single_input_op(op, s, in_tensor, out_tensor, name):
    """Rules for one-input layers given a scaled input state ``s``."""
    label = op.name
    via = _merge_via([s], label)
    in_rank, out_rank = _rank(in_tensor), _rank(out_tensor)
    kind = _targeting.normalization_kind(op)
    if s.partial_axis is not None:
        if kind == "batch" and s.partial_axis in _norm_axes(getattr(op, "axis", -1), in_rank):
            return _normalize(op, kind, s, in_tensor, name)
        if isinstance(op, _ELEMENTWISE):
            out = _single_input_op(op, _scaled(s.bias_axes, s.via), in_tensor, out_tensor, name)
            if out.kind != "scaled":
                return out
            return _scaled(out.bias_axes, out.via, s.partial_axis)
        return _broken(
            f"{name} was concatenated with a branch that does not scale with it; only a "
            f"per-channel batch normalization undoes that, not {label}"
        )
    if kind is not None:
        return _normalize(op, kind, s, in_tensor, name)
    facts = _linear_facts(op)
    if facts is not None:
        if s.biased:
            ok_dense = isinstance(facts, L.Dense)
            ok_conv = (isinstance(facts, _CONV_LIKE)
                       and getattr(facts, "padding", None) == "valid"
                       and not isinstance(facts, _LINEAR[-3:])  # transposed convs spread borders
                       and s.bias_axes <= {_channel_axis(facts, in_rank)})
            if not (ok_dense or ok_conv):
                return _broken(f"{name}: its bias reaches {label}, which does not keep it constant")
            bias = ({out_rank - 1} | (s.bias_axes - {in_rank - 1}) if ok_dense
                    else {_channel_axis(facts, out_rank)})
        else:
            bias = set()
        if _has_bias(facts):
            if isinstance(facts, L.EinsumDense):
                return _broken(f"{name}: the bias layout of EinsumDense {label!r} is not analysed")
            bias = bias | {_channel_axis(facts, out_rank)}
        return _apply_activation(_scaled(bias, via), facts, label)
    if isinstance(op, L.Activation):
        return _apply_activation(_scaled(s.bias_axes, via), op, label)
    if isinstance(op, L.ReLU):
        if op.max_value is not None or float(op.threshold) != 0.0:
            return _broken(f"{name} reaches {label}, a ReLU with max_value/threshold")
        return _broken(f"{name}: bias before {label}") if s.biased else _scaled((), via)
    if isinstance(op, (L.LeakyReLU, L.PReLU)):
        return _broken(f"{name}: bias before {label}") if s.biased else _scaled((), via)
    if isinstance(op, _IDENTITY_LIKE):
        return _scaled(s.bias_axes, via)
    if isinstance(op, _DROPOUT_LIKE):
        if s.biased:
            return _broken(f"{name}: bias before {label} (training-mode dropout makes it random)")
        return _scaled((), via)
    if isinstance(op, _SHAPE_ONLY) or isinstance(op, _ZERO_PAD):
        return _broken(f"{name}: bias before {label}") if s.biased else _scaled((), via)
    if isinstance(op, L.Flatten):
        return _scaled({1} if s.biased else (), via)
    if isinstance(op, _SPATIAL_KEEP):
        if s.biased and not s.bias_axes <= {_channel_axis(op, in_rank)}:
            return _broken(f"{name}: bias varying over space before {label}")
        return _scaled(s.bias_axes, via)
    if isinstance(op, _GLOBAL_POOL):
        ch_in = _channel_axis(op, in_rank)
        if s.biased and not s.bias_axes <= {ch_in}:
            return _broken(f"{name}: bias varying over space before {label}")
        if not s.biased:
            return _scaled((), via)
        return _scaled({_channel_axis(op, out_rank)} if out_rank == in_rank else {1}, via)
    if type(op).__name__ == "Relu" and not isinstance(op, keras.layers.Layer):
        return _broken(f"{name}: bias before relu") if s.biased else _scaled((), via)
    return None


# --------------------------------------------------------------------------- propagation


def _sublayer_ids(op):
    if not isinstance(op, keras.layers.Layer):
        return set()
    return {id(layer) for layer in _targeting.iter_layers(op)}


def _apply_op(op, node, in_states, in_tensors, out_tensors, target, cache):
    """Output states of one call of ``op``."""
    n_out = len(out_tensors)
    if op is target.layer:
        return [_start_state(target, in_states, out_tensors[0])] * n_out
    if id(op) not in cache:
        cache[id(op)] = _sublayer_ids(op)
    contains = id(target.layer) in cache[id(op)]
    all_none = all(s.kind == "none" for s in in_states)
    if is_graph_model(op) and (contains or not all_none):
        return _run_model(op, in_states, target, cache)
    if contains:
        return [_broken(
            f"{target.name} lives inside {type(op).__name__} {op.name!r}, which is not analysed"
        )] * n_out
    if all_none:
        return [_NONE] * n_out
    for s in in_states:
        if s.kind == "broken":
            return [s] * n_out
    if not any(s.kind == "scaled" for s in in_states):
        return [_State("inv", norms=_merge_norms(in_states))] * n_out
    name = target.name
    rule = (getattr(type(op), "keras_normreg_scale_rule", None)
            if isinstance(op, keras.layers.Layer) else None)
    if rule is not None:
        return [_declared_rule(op, rule, in_states, name)] * n_out
    if len(in_states) == 1 and isinstance(op, keras.layers.Layer):
        out = _single_input_op(op, in_states[0], in_tensors[0], out_tensors[0], name)
        if out is not None:
            return [out] * n_out
    if len(in_states) == 1 and not isinstance(op, keras.layers.Layer):
        out = _single_input_op_raw(op, node, in_states[0], name)
        if out is not None:
            return [out] * n_out
    return [_merge(op, node, in_states, name, _rank(out_tensors[0]))] * n_out


def _declared_rule(op, rule, states, name):
    """A layer's own ``keras_normreg_scale_rule`` (see the module docstring), given that at
    least one input is scaled and none is broken."""
    label = op.name
    if any(s.partial_axis is not None for s in states):
        return _broken(f"{name}: {label} receives a partially scaled tensor (after a Concatenate)")
    if rule == "linear" and len(states) == 1:
        s = states[0]
        if s.biased:
            return _broken(f"{name}: bias before {label}")
        return _scaled((), _merge_via([s], label))
    if rule == "attention" and len(states) == 3:
        q, k, v = states
        if q.kind == "scaled" or k.kind == "scaled":
            return _broken(f"{name} reaches the queries or keys of {label} (softmax is not "
                           "homogeneous)")
        if 1 in v.bias_axes:
            return _broken(f"{name}: an additive term varying over tokens reaches the values "
                           f"of {label}")
        return _scaled(v.bias_axes, _merge_via([v], label))
    return _broken(f"{name} reaches {label}, whose declared scale rule {rule!r} does not fit "
                   f"its {len(states)} input(s)")


def _single_input_op_raw(op, node, s, name):
    """A few raw keras.ops on KerasTensors (no Layer): relu, reshape/transpose/flatten-like."""
    cls = type(op).__name__
    if _count_call_values(node) != 1:
        return None
    if cls == "Relu":
        return _broken(f"{name}: bias before relu") if s.biased else _scaled((), s.via)
    if cls in ("Reshape", "Transpose", "ExpandDims", "Squeeze"):
        return _broken(f"{name}: bias before {cls}") if s.biased else _scaled((), s.via)
    return None


def is_graph_model(op):
    """True for a Sequential or functional model (one whose graph can be walked)."""
    return isinstance(op, keras.Sequential) or (
        isinstance(op, keras.Model) and _compat.graph_nodes_by_depth(op) is not None
    )


def _run_model(model, in_states, target, cache):
    """Propagate states through a Sequential or functional model; return the output states."""
    if isinstance(model, keras.Sequential):
        functional = _compat.sequential_functional(model)
        if functional is None:
            return [_broken(
                f"Sequential {model.name!r} has no symbolic graph (build it with an input shape)"
            )]
        model = functional
    states = {}
    for tensor, state in zip(keras.tree.flatten(model.inputs), in_states, strict=False):
        states[id(tensor)] = state
    nodes_by_depth = _compat.graph_nodes_by_depth(model)
    for depth in sorted(nodes_by_depth.keys(), reverse=True):
        for node in nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            in_tensors = list(node.input_tensors)
            node_in = [states.get(id(t), _NONE) for t in in_tensors]
            outs = _apply_op(node.operation, node, node_in, in_tensors, list(node.outputs),
                             target, cache)
            for tensor, state in zip(node.outputs, outs, strict=False):
                states[id(tensor)] = state
    return [states.get(id(t), _NONE) for t in keras.tree.flatten(model.outputs)]


def _verdict(target, out_states, layers):
    name = target.name
    scaled = [s for s in out_states if s.kind == "scaled"]
    broken = [s for s in out_states if s.kind == "broken"]
    inv = [s for s in out_states if s.kind == "inv"]
    if broken:
        return ScaleInvariance(name, False, f"not scale-invariant: {broken[0].reason}")
    if scaled:
        via = f" (via {', '.join(scaled[0].via)})" if scaled[0].via else ""
        return ScaleInvariance(name, False, f"not scale-invariant: {name} reaches the model "
                                            f"output without normalization{via}")
    if not inv:
        return ScaleInvariance(
            name, False, f"not scale-invariant: {name} does not reach any model output")
    norms = _merge_norms(inv)
    parts = [f"{norm} (via {', '.join(via)})" if via else norm for norm, via in norms]
    normalizers = tuple(norm for norm, _ in norms)
    vias = tuple(tuple(via) for _, via in norms)
    granularity = _granularity(target.layer, target.variable, normalizers, vias, layers)
    return ScaleInvariance(name, True, f"{name} -> {', '.join(parts)}", normalizers, vias,
                           granularity)


# --------------------------------------------------------------------------- granularity

# Layers that act on each channel separately (so a per-channel rescaling passes through them
# as a per-channel rescaling, for positive factors).
_CHANNELWISE = tuple(
    getattr(L, n) for n in (
        "Activation", "ReLU", "LeakyReLU", "PReLU", "Identity", "Dropout", "SpatialDropout1D",
        "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout", "GaussianNoise",
        "ActivityRegularization", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
        "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalMaxPooling1D",
        "GlobalMaxPooling2D", "GlobalMaxPooling3D", "GlobalAveragePooling1D",
        "GlobalAveragePooling2D", "GlobalAveragePooling3D", "ZeroPadding1D", "ZeroPadding2D",
        "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D",
        "UpSampling2D", "UpSampling3D", "Flatten",
    ) if hasattr(L, n)
)
_UNIT_LAST_KERNELS = (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D)
_CONV_TRANSPOSE = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)


def _per_channel_norm(layer):
    """A normalization that normalizes each channel (last axis) on its own."""
    kind = _targeting.normalization_kind(layer)
    try:
        rank = len(layer.input.shape)
    except (AttributeError, ValueError):
        return False
    if kind == "batch":
        axis = getattr(layer, "axis", -1)
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        return [a % rank for a in axes] == [rank - 1]
    if kind == "group":
        channels = layer.input.shape[-1]
        return (layer.axis % rank == rank - 1) and (
            layer.groups == -1 or (channels is not None and layer.groups == channels)
        )
    return False


def _granularity(layer, variable, normalizers, vias, layers):
    """``"unit"`` where rescaling each output unit (last axis) separately is certainly
    harmless: a Dense/Conv kernel whose output reaches only per-channel normalizations through
    channel-wise layers only; else ``"tensor"`` (invariance to rescaling the whole tensor)."""
    if variable_name(variable) != "kernel" or len(variable.shape) < 2:
        return "tensor"
    if not isinstance(layer, _UNIT_LAST_KERNELS) or isinstance(layer, _CONV_TRANSPOSE):
        return "tensor"
    if getattr(layer, "groups", 1) not in (1, None):
        return "tensor"
    for norm, via in zip(normalizers, vias, strict=True):
        norm_layer = layers.get(norm)
        if norm_layer is None or not _per_channel_norm(norm_layer):
            return "tensor"
        if not all(isinstance(layers.get(name), _CHANNELWISE) for name in via):
            return "tensor"
    return "unit" if normalizers else "tensor"


# --------------------------------------------------------------------------- public


def candidate_variables(model):
    """``[(layer, variable)]`` whose scale invariance is analysed: kernels, depthwise/pointwise
    kernels, embeddings, normalization scales (gamma) and WeightNormalization's v and g."""
    out = []
    for layer, variable in _targeting.layer_variables(model):
        role = _targeting.variable_role(layer, variable)
        if role in ("kernel", "depthwise_kernel", "embeddings", "gamma"):
            out.append((layer, variable))
    return out


def verdicts(model, variables=None) -> dict[int, ScaleInvariance]:
    """``{id(variable): ScaleInvariance}`` for the candidate variables of a built model.

    ``variables`` limits the analysis to those (others get no entry).
    """
    _targeting.check_built(model, "find_scale_invariant")
    wanted = None if variables is None else {id(v) for v in variables}
    pairs = [(la, v) for la, v in candidate_variables(model) if wanted is None or id(v) in wanted]
    result = {}
    cache = {}
    graph = is_graph_model(model)
    layers = None
    for layer, variable in pairs:
        path = variable.path
        if _targeting.is_weight_normalization(layer) and variable_name(variable) == "v":
            axes = getattr(layer, "_norm_axes", None)  # our WeightNormalization's norm axes
            granularity = ("tensor" if axes is None or not len(axes)
                           else tuple(int(a) for a in axes))
            result[id(variable)] = ScaleInvariance(
                path, True, f"{path}: weight normalization: output depends on v/||v||",
                (layer.name,), ((),), granularity)
            continue
        if not graph:
            result[id(variable)] = ScaleInvariance(
                path, False,
                f"not scale-invariant: {type(model).__name__} is not a functional or Sequential "
                "model, so its graph cannot be analysed",
            )
            continue
        if layers is None:
            layers = {la.name: la for la in _compat.flatten_layers(model)}
        target = _Target(layer=layer, variable=variable, name=path)
        in_states = [_NONE] * len(keras.tree.flatten(model.inputs))
        out_states = _run_model(model, in_states, target, cache)
        result[id(variable)] = _verdict(target, out_states, layers)
    return result


def explain_scale_invariance(model) -> dict[str, ScaleInvariance]:
    """``{variable path: ScaleInvariance}`` for every analysed weight of a built model."""
    return {v.path: v for v in verdicts(model).values()}


def find_scale_invariant(model) -> dict[str, ScaleInvariance]:
    """``{variable path: ScaleInvariance}`` for every weight the model's function is invariant
    to rescaling (the rules: :mod:`keras_normreg.invariance`).

    Example: ``find_scale_invariant(model)["conv2d/kernel"].reason`` is
    ``"conv2d/kernel -> batch_normalization (via re_lu)"``, with ``normalizers ==
    ("batch_normalization",)``, ``via == (("re_lu",),)`` and ``granularity == "unit"``.
    """
    return {path: v for path, v in explain_scale_invariance(model).items() if v.invariant}
