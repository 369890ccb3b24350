"""SGDP and AdamP (Heo et al., ICLR 2021): remove the radial part of the update of weights that
look scale-invariant, so momentum stops inflating their norm.

Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, "AdamP: Slowing Down the Slowdown for Momentum Optimizers
on Scale-invariant Weights", ICLR 2021, arXiv:2006.08217.
"""

from __future__ import annotations

import copy
import math
import numbers

import keras
from keras import ops

from keras_normreg import _compat
from keras_normreg._kernels import column_dots
from keras_normreg._utils import check_bool, check_choice, check_number, register
from keras_normreg.optimizers import _rules
from keras_normreg.optimizers.decoupled import DEFAULT_EXCLUDE, constant

EPSILON_PLACEMENTS = ("pytorch", "keras")

_PROJECTION_DOC = r"""
    **Projection** (weights of rank >= 2 only; ``g`` the gradient, ``p`` the update direction,
    Keras kernels ``(..., in, out)`` have their output unit on the LAST axis). Two views of
    ``w``: the *channel view* reshapes to ``(fan, units)`` with ``fan = prod(shape[:-1])``
    (one column per output unit), the *layer view* is the whole tensor (``dim = w.size``)::

        cos_j   = |⟨w_j, g_j⟩| / (‖w_j‖·‖g_j‖ + ε)                  per column j (channel view)
        cos     = |⟨w, g⟩| / (‖w‖·‖g‖ + ε)                          (layer view)
        if max_j cos_j < δ/√fan:       p_j ← p_j − ŵ_j ⟨ŵ_j, p_j⟩,  ŵ_j = w_j / (‖w_j‖ + ε),  r = wd_ratio
        elif cos < δ/√(w.size):        p   ← p − ŵ ⟨ŵ, p⟩,          ŵ   = w / (‖w‖ + ε),      r = wd_ratio
        else:                          p unchanged,                                           r = 1

    (the channel view is tried first; a small cosine between weight and gradient marks the
    weight as scale-invariant for that view, whose gradient is orthogonal to the weight).
    Rank <= 1 weights are never projected (r = 1).

    **Decay** (decoupled, multiplied by lr as in the paper): ``w ← w − lr_t·λ·r·w`` from the
    pre-step weight, before the update, for variables selected by ``exclude``/``include``
    (same rule language as :class:`DecoupledWeightDecay`; default ``("bias",
    "normalization")``) and by Keras' ``exclude_from_weight_decay``. The reference PyTorch
    implementation of SGDP additionally divides the decay by ``(1 − μ)``; we follow the paper.
"""


def projection_coefficients(w, g, p, delta, wd_ratio, epsilon):
    """The projection of ``p`` as per-unit coefficients: ``(coef, r)`` with ``coef`` of shape
    ``(units,)`` such that the projected direction is ``p - w * coef`` (``coef`` broadcast over
    the last axis), and ``r`` the decay ratio (a scalar).

    Both views reduce to the same form: the channel projection
    ``p_j - ŵ_j⟨ŵ_j, p_j⟩ = p_j - w_j·⟨w_j, p_j⟩/(‖w_j‖ + ε)²`` and the layer projection
    ``p - w·⟨w, p⟩/(‖w‖ + ε)²``; the layer sums are sums of the column sums. So four column
    reductions (``Σw², Σg², Σw·g, Σw·p`` over the fan axis, computed as ONE stacked
    reduction that XLA fuses into one pass over ``w, g, p``) decide the branch and give the
    coefficient, and applying it is one pass over the weight. The branch is chosen with
    ``where`` on ``(units,)`` vectors only (both branches cost O(units), nothing of the size
    of the weight is computed twice). Passes over the weight per step: the optimizer's own
    moment update, this reduction pass, and the update pass (projection, decay and step
    folded into ``w·scale − step·p``): the reduction needs all of ``w, g, p`` before any
    coefficient is known (the channel test takes a max over all units), so two passes after
    the moment update is the least the algorithm allows.
    """
    w, g, p = (ops.convert_to_tensor(x) for x in (w, g, p))
    shape = tuple(w.shape)
    units = int(shape[-1])
    fan = int(math.prod(shape[:-1]))
    dtype = w.dtype
    eps = constant(epsilon, dtype)
    W = ops.reshape(w, (fan, units))
    G = ops.reshape(g, (fan, units))
    P = ops.reshape(p, (fan, units))
    # One reduction pass over (w, g, p) for all four column sums (see keras_normreg._kernels).
    sums = column_dots([(W, W), (G, G), (W, G), (W, P)])
    # one total per row: TensorFlow's XLA compiled ops.sum(sums, axis=1) into a slower step
    # (SGDP / AdamP on the 4x1024 MLP: 1.64x / 1.65x Keras' SGD / AdamW against 1.3x / 1.37x)
    totals = [ops.sum(sums[i]) for i in range(4)]
    return coefficients_from_sums(
        ops, sums, totals, fan=fan, units=units, delta=delta,
        wd_ratio=constant(wd_ratio, dtype), one=constant(1.0, dtype), epsilon=eps,
        thresholds=(constant(delta / math.sqrt(fan), dtype),
                    constant(delta / math.sqrt(fan * units), dtype)))


def coefficients_from_sums(xp, sums, totals, *, fan, units, delta, wd_ratio, one, epsilon,
                           thresholds):
    """The branch test and the coefficient from the four column sums ``sums`` (``(4,
    units)``: Σw², Σg², Σw·g, Σw·p) and their totals over the units (``(4,)``, the layer
    view): O(units) work, written once for ``keras.ops`` and for ``torch`` (``xp``: either
    namespace; the functions used have the same names and meaning in both). ``wd_ratio``,
    ``one``, ``epsilon`` and the two thresholds (``δ/√fan``, ``δ/√(fan·units)``) come as
    0-d tensors of the weight's dtype."""
    sww, sgg, swg, swp = sums[0], sums[1], sums[2], sums[3]
    wn_c = xp.sqrt(sww)
    cos_c = xp.abs(swg) / (wn_c * xp.sqrt(sgg) + epsilon)
    channel = xp.max(cos_c) < thresholds[0]

    wn = xp.sqrt(totals[0])
    cos_l = xp.abs(totals[2]) / (wn * xp.sqrt(totals[1]) + epsilon)
    layer = cos_l < thresholds[1]

    coef_c = swp / xp.square(wn_c + epsilon)
    coef_l = totals[3] / xp.square(wn + epsilon)
    zero = xp.zeros_like(coef_c)
    coef = xp.where(channel, coef_c, xp.where(layer, coef_l + zero, zero))
    ratio = xp.where(xp.logical_or(channel, layer), wd_ratio, one)
    return coef, ratio


def torch_projection_coefficients(w, g, p, tmp, *, delta, wd_ratio, epsilon):
    """:func:`projection_coefficients` as PyTorch ops (``torch.Tensor`` in, ``(coef,
    ratio)`` out), each product written into ``tmp`` (a ``(fan, units)`` buffer the caller
    reuses) and summed over the fan by one matrix-vector product: PyTorch has no eager op
    that sums a product over the fan axis without writing the product (``einsum``,
    ``linalg.vecdot``, ``var_mean`` and ``vector_norm`` over that axis measured 3-70x slower
    on a CPU), so the four column sums are four products and four sums."""
    import torch

    units = int(w.shape[-1])
    fan = w.numel() // units
    W, G, P = (t.reshape(fan, units) for t in (w, g, p))
    ones = torch.ones((1, fan), dtype=w.dtype, device=w.device)
    sums = torch.cat([ones @ torch.mul(a, b, out=tmp)
                      for a, b in ((W, W), (G, G), (W, G), (W, P))])

    def c(value):
        return torch.as_tensor(value, dtype=w.dtype, device=w.device)

    return coefficients_from_sums(
        torch, sums, sums.sum(1), fan=fan, units=units, delta=delta,
        wd_ratio=c(wd_ratio), one=c(1.0), epsilon=c(epsilon),
        thresholds=(c(delta / math.sqrt(fan)), c(delta / math.sqrt(fan * units))))


def project_radial(w, g, p, delta, wd_ratio, epsilon):
    """Return ``(p', r)``: ``p`` with its radial part removed if ``w`` looks scale-invariant
    (see the SGDP/AdamP docstrings for the formulas), and the decay ratio ``r``."""
    w, g, p = (ops.convert_to_tensor(x) for x in (w, g, p))
    coef, ratio = projection_coefficients(w, g, p, delta, wd_ratio, epsilon)
    return p - w * coef, ratio


class _ProjectedOptimizer(keras.optimizers.Optimizer):
    """Shared parts of SGDP / AdamP: argument checks, decay selection, projection, config."""

    def __init__(self, learning_rate, *, weight_decay, delta, wd_ratio, epsilon, nesterov,
                 exclude, include, name, **kwargs):
        if isinstance(learning_rate, numbers.Real):  # a schedule or callable is Keras' to check
            check_number("learning_rate", learning_rate, low=0)
        check_number("weight_decay", weight_decay, low=0, allow_none=True)
        check_number("delta", delta, low=0, low_inclusive=False)
        check_number("wd_ratio", wd_ratio, low=0)
        check_number("epsilon", epsilon, low=0, low_inclusive=False)
        check_bool("nesterov", nesterov)
        exclude = _rules.parse_rules("exclude", exclude)
        include = _rules.parse_rules("include", include, allow_none=True)
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, name=name,
                         **kwargs)
        self.delta = float(delta)
        self.wd_ratio = float(wd_ratio)
        self.epsilon = float(epsilon)
        self.nesterov = nesterov
        self.exclude = exclude
        self.include = include
        self._decay_mask = {}

    def _apply_weight_decay(self, variables):
        # Decay is applied inside update_step, scaled by the projection's wd_ratio.
        return None

    def _selected_for_decay(self, variable):
        if not self.weight_decay:
            return False
        if self.include is not None and _rules.first_match(self.include, variable) is None:
            return False
        if _rules.first_match(self.exclude, variable) is not None:
            return False
        return self._use_weight_decay(variable)

    def _build_decay_mask(self, var_list):
        self._decay_mask = {
            _compat.optimizer_variable_key(self, v): self._selected_for_decay(v) for v in var_list
        }

    def _decays(self, variable):
        """Whether ``variable`` is decayed (the mask built with the optimizer)."""
        return self._decay_mask.get(_compat.optimizer_variable_key(self, variable), False)

    def decay_plan(self, variables=None):
        """``{variable.path: "decay" | "skip"}`` (default: the variables built with)."""
        variables = self._trainable_variables if variables is None else variables
        return {
            _rules.variable_path(v): "decay" if self._selected_for_decay(v) else "skip"
            for v in variables
        }

    def _project_decay_update(self, variable, gradient, direction, lr, step):
        """``w ← w − lr·λ·r·w − step·(p − w·coef)`` in one assignment: the projection of the
        direction (rank >= 2, :func:`projection_coefficients`), the decoupled decay from the
        pre-step weight and the update, folded into one per-unit scale of ``w``."""
        decay = self._decays(variable)
        projected = len(variable.shape) >= 2
        if not (projected or decay):  # rank <= 1 and no decay: the plain update
            self.assign_sub(variable, step * direction)
            return
        w = ops.convert_to_tensor(variable)
        scale, ratio = 1.0, 1.0
        if projected:
            coef, ratio = projection_coefficients(
                w, gradient, direction, self.delta, self.wd_ratio, self.epsilon
            )
            scale = scale + step * coef
        if decay:
            scale = scale - lr * constant(self.weight_decay, variable.dtype) * ratio
        self.assign(variable, w * scale - step * direction)

    # ------------------------------------------------------------------ PyTorch
    # Keras' own PyTorch optimizers update in place (``torch._foreach_*``); the ``keras.ops``
    # form above allocates a new tensor for every elementwise result (on a CPU each fresh
    # 4 MB buffer costs page faults as well as the pass) and goes through Keras' op dispatch.
    # On PyTorch the same update runs as in-place torch ops (the arithmetic, the branch
    # rule and the order of operations are those above: :func:`coefficients_from_sums` is
    # shared), with two scratch buffers per weight shape reused across steps.

    def _torch_scratch(self, tensor, slot):
        cache = self.__dict__.setdefault("_torch_buffers", {})
        key = (tuple(tensor.shape), tensor.dtype, tensor.device, slot)
        buf = cache.get(key)
        if buf is None:
            import torch

            buf = cache[key] = torch.empty_like(tensor)
        return buf

    def _torch_project_decay_update(self, variable, w, g, p, lr, step):
        """In-place ``w ← w·(1 + step·coef − lr·λ·r) − step·p`` (see
        :meth:`_project_decay_update`); ``lr`` and ``step`` are 0-d tensors."""
        decay = self._decays(variable)
        projected = w.ndim >= 2
        if not (projected or decay):
            w.addcmul_(p, step, value=-1.0)
            return
        scale, ratio = None, 1.0
        if projected:
            units = int(w.shape[-1])
            tmp = self._torch_scratch(w.reshape(-1, units), "product")
            coef, ratio = torch_projection_coefficients(
                w, g, p, tmp, delta=self.delta, wd_ratio=self.wd_ratio, epsilon=self.epsilon)
            scale = 1.0 + step * coef
        if decay:
            shrink = lr * self.weight_decay * ratio
            scale = 1.0 - shrink if scale is None else scale - shrink
        w.mul_(scale)
        w.addcmul_(p, step, value=-1.0)

    @staticmethod
    def _torch_scalars(variable, learning_rate):
        w = variable.value
        return w, ops.convert_to_tensor(learning_rate).to(dtype=w.dtype, device=w.device)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "delta": self.delta,
                "wd_ratio": self.wd_ratio,
                "epsilon": self.epsilon,
                "nesterov": self.nesterov,
                "exclude": list(self.exclude),
                "include": None if self.include is None else list(self.include),
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Keras' from_config replaces a serialized schedule in place: work on a copy.
        return super().from_config(copy.deepcopy(config), custom_objects=custom_objects)


@register
class SGDP(_ProjectedOptimizer):
    __doc__ = r"""SGD with momentum and the radial projection of Heo et al. (2021).

    Per step (``lr_t`` the learning rate, ``μ`` momentum, ``τ`` dampening, buffer ``b₀ = 0``)::

        b ← μ·b + (1 − τ)·g
        p ← g + μ·b  (nesterov)   or   p ← b          (μ = 0: p ← g, no buffer)
        p, r ← projection(w, g, p)
        w ← w − lr_t·λ·r·w                            (decoupled decay, × lr)
        w ← w − lr_t·p

    ε appears only in the projection (cosines and ``ŵ``): SGD has no denominator, so there is
    no Keras-vs-PyTorch ε placement to choose (see :class:`AdamP`).
    """ + _PROJECTION_DOC + r"""
    Args:
        learning_rate: float, schedule or callable.
        momentum: μ in [0, 1).
        dampening: τ in [0, 1].
        nesterov: Nesterov momentum.
        weight_decay: λ >= 0 or None.
        delta: δ > 0, the cosine threshold (paper: 0.1).
        wd_ratio: decay multiplier r for projected weights (paper: 0.1).
        epsilon: ε > 0 in the cosine and the normalization (paper: 1e-8).
        exclude, include: decay selection rules.
        **kwargs: base optimizer arguments (clipnorm, use_ema, ...).
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, dampening=0.0, nesterov=False,
                 weight_decay=None, delta=0.1, wd_ratio=0.1, epsilon=1e-8,
                 exclude=DEFAULT_EXCLUDE, include=None, name="SGDP", **kwargs):
        check_number("momentum", momentum, low=0, high=1, high_inclusive=False)
        check_number("dampening", dampening, low=0, high=1)
        super().__init__(learning_rate, weight_decay=weight_decay, delta=delta,
                         wd_ratio=wd_ratio, epsilon=epsilon, nesterov=nesterov,
                         exclude=exclude, include=include, name=name, **kwargs)
        self.momentum = float(momentum)
        self.dampening = float(dampening)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.momentums = []
        if self.momentum != 0:
            self.momentums = [
                self.add_variable_from_reference(v, name="momentum") for v in var_list
            ]
        self._build_decay_mask(var_list)

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() == "torch":
            return self._torch_update_step(gradient, variable, learning_rate)
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.momentum != 0:
            mu = constant(self.momentum, variable.dtype)
            buf = self.momentums[self._get_variable_index(variable)]
            # (1 - τ)·g costs a pass over the weight: skipped for the default τ = 0.
            damped = g if self.dampening == 0 else constant(1.0 - self.dampening,
                                                            variable.dtype) * g
            self.assign(buf, mu * buf + damped)
            buf = ops.convert_to_tensor(buf)
            direction = g + mu * buf if self.nesterov else buf
        else:
            direction = g
        self._project_decay_update(variable, g, direction, lr, lr)

    def _torch_update_step(self, gradient, variable, learning_rate):
        import torch

        with torch.no_grad():
            w, lr = self._torch_scalars(variable, learning_rate)
            g = gradient.to(w.dtype)
            if self.momentum != 0:
                buf = self.momentums[self._get_variable_index(variable)].value
                if self.dampening == 0:  # μ·b + g in one pass over the buffer
                    torch.add(g, buf, alpha=self.momentum, out=buf)
                else:
                    buf.mul_(self.momentum).add_(g, alpha=1.0 - self.dampening)
                if self.nesterov:
                    direction = torch.add(g, buf, alpha=self.momentum,
                                          out=self._torch_scratch(w, "direction"))
                else:
                    direction = buf
            else:
                direction = g
            self._torch_project_decay_update(variable, w, g, direction, lr, lr)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "dampening": self.dampening})
        return config


@register
class AdamP(_ProjectedOptimizer):
    __doc__ = r"""Adam with the radial projection of Heo et al. (2021).

    Per step ``t = 1, 2, ...`` (``m₀ = v₀ = 0``)::

        m ← β₁·m + (1 − β₁)·g
        v ← β₂·v + (1 − β₂)·g²
        d = √v / √(1 − β₂ᵗ) + ε,      η = lr_t / (1 − β₁ᵗ)                 ("pytorch", default)
        d = √v + ε,                   η = lr_t·√(1 − β₂ᵗ) / (1 − β₁ᵗ)      ("keras")
        p ← (β₁·m + (1 − β₁)·g) / d  (nesterov)   or   p ← m / d
        p, r ← projection(w, g, p)
        w ← w − lr_t·λ·r·w                            (decoupled decay, × lr)
        w ← w − η·p

    ε placement: by default ε is added *after* the bias correction of ``v``
    (``m̂ / (√v̂ + ε)``), as the reference AdamP and PyTorch's Adam/AdamW do;
    ``epsilon_placement="keras"`` adds it *before* (``√(1 − β₂ᵗ)·m̂' / (√v + ε)``), as Keras'
    Adam/AdamW and :class:`~keras_normreg.optimizers.DecoupledWeightDecay` around Keras' Adam
    do. The two differ by ``ε·(1 − √(1 − β₂ᵗ))`` in the denominator; pick the one of the
    code whose hyperparameters (ε in particular) you port.
    """ + _PROJECTION_DOC + r"""
    Args:
        learning_rate: float, schedule or callable.
        beta_1, beta_2: moment decay rates in [0, 1).
        epsilon: ε > 0 (denominator, cosine and normalization; paper: 1e-8).
        epsilon_placement: ``"pytorch"`` (default: ε after the bias correction) or
            ``"keras"`` (ε before it), see above.
        weight_decay: λ >= 0 or None.
        delta: δ > 0, the cosine threshold (paper: 0.1).
        wd_ratio: decay multiplier r for projected weights (paper: 0.1).
        nesterov: Nesterov-style first moment.
        exclude, include: decay selection rules.
        **kwargs: base optimizer arguments (clipnorm, use_ema, ...).
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 weight_decay=None, delta=0.1, wd_ratio=0.1, nesterov=False,
                 exclude=DEFAULT_EXCLUDE, include=None, epsilon_placement="pytorch",
                 name="AdamP", **kwargs):
        check_number("beta_1", beta_1, low=0, high=1, high_inclusive=False)
        check_number("beta_2", beta_2, low=0, high=1, high_inclusive=False)
        check_choice("epsilon_placement", epsilon_placement, EPSILON_PLACEMENTS)
        super().__init__(learning_rate, weight_decay=weight_decay, delta=delta,
                         wd_ratio=wd_ratio, epsilon=epsilon, nesterov=nesterov,
                         exclude=exclude, include=include, name=name, **kwargs)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon_placement = epsilon_placement

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.momentums = [self.add_variable_from_reference(v, name="momentum") for v in var_list]
        self.velocities = [
            self.add_variable_from_reference(v, name="velocity") for v in var_list
        ]
        self._build_decay_mask(var_list)

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() == "torch":
            return self._torch_update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        b1 = constant(self.beta_1, dtype)
        b2 = constant(self.beta_2, dtype)
        t = ops.cast(self.iterations + 1, dtype)
        bc1 = 1.0 - ops.power(b1, t)
        bc2 = 1.0 - ops.power(b2, t)
        index = self._get_variable_index(variable)
        m = self.momentums[index]
        v = self.velocities[index]
        self.assign(m, b1 * m + (1.0 - b1) * g)
        self.assign(v, b2 * v + (1.0 - b2) * ops.square(g))
        m = ops.convert_to_tensor(m)
        v = ops.convert_to_tensor(v)
        eps = constant(self.epsilon, dtype)
        if self.epsilon_placement == "pytorch":
            denom = ops.sqrt(v) / ops.sqrt(bc2) + eps
            step = lr / bc1
        else:
            denom = ops.sqrt(v) + eps
            step = lr * ops.sqrt(bc2) / bc1
        if self.nesterov:
            direction = (b1 * m + (1.0 - b1) * g) / denom
        else:
            direction = m / denom
        self._project_decay_update(variable, g, direction, lr, step)

    def _torch_update_step(self, gradient, variable, learning_rate):
        import torch

        with torch.no_grad():
            w, lr = self._torch_scalars(variable, learning_rate)
            g = gradient.to(w.dtype)
            b1, b2 = self.beta_1, self.beta_2
            t = (self.iterations.value + 1).to(w.dtype)
            bc1 = 1.0 - torch.pow(torch.as_tensor(b1, dtype=w.dtype, device=w.device), t)
            bc2 = 1.0 - torch.pow(torch.as_tensor(b2, dtype=w.dtype, device=w.device), t)
            index = self._get_variable_index(variable)
            m = self.momentums[index].value
            v = self.velocities[index].value
            m.lerp_(g, 1.0 - b1)  # b1·m + (1 − b1)·g in one pass (as torch.optim.Adam)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            denom = torch.sqrt(v, out=self._torch_scratch(w, "direction"))
            if self.epsilon_placement == "pytorch":
                denom.div_(torch.sqrt(bc2)).add_(self.epsilon)
                step = lr / bc1
            else:
                denom.add_(self.epsilon)
                step = lr * torch.sqrt(bc2) / bc1
            if self.nesterov:
                # (b1·m + (1 − b1)·g) / d, into the scratch buffer that holds d
                direction = torch.div(torch.add(m * b1, g, alpha=1.0 - b1), denom, out=denom)
            else:
                direction = torch.div(m, denom, out=denom)
            self._torch_project_decay_update(variable, w, g, direction, lr, step)

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2,
                       "epsilon_placement": self.epsilon_placement})
        return config
