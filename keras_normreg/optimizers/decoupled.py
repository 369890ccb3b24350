"""Decoupled weight decay for any Keras optimizer, with explicit selection rules and sphere mode.

See :class:`DecoupledWeightDecay` for the maths. The ready-made aliases :func:`SGDW`,
:func:`AdamW`, :func:`LionW` and :func:`RMSpropW` wrap the corresponding Keras optimizer.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from typing import NamedTuple

import keras
from keras import ops

from keras_normreg import _compat, _invariance, _targeting
from keras_normreg._utils import check_choice, check_number, received, register
from keras_normreg.optimizers import _rules, _sphere
from keras_normreg.optimizers._apply import for_each_variable, shrink

#: The decay semantics (``semantics=``; a recipe's ``optimizer.decay_semantics``).
SEMANTICS = ("lr", "schedule", "corrected")
#: The treatments of scale-invariant weights by name (a recipe's ``optimizer.scale_invariant``;
#: ``scale_invariant=`` also takes None for ``"none"``).
SCALE_INVARIANT_NAMES = ("none", "exclude", "sphere")
SCALE_INVARIANT = (None, *SCALE_INVARIANT_NAMES[1:])
DEFAULT_EXCLUDE = ("bias", "normalization")
SPHERE_EPSILON = 1e-12

_LR_SCHEDULE = keras.optimizers.schedules.LearningRateSchedule
TREATMENTS = ("decay", "skip", "sphere")


def constant(value, dtype):
    """``value`` as a tensor of ``dtype``. A Python number goes straight to ``dtype``
    (``ops.cast(0.9, "float64")`` would first make a float32 tensor: 0.8999999761581421);
    a tensor is cast."""
    if isinstance(value, numbers.Real):
        return ops.convert_to_tensor(value, dtype=dtype)
    return ops.cast(value, dtype)


class Treatment(NamedTuple):
    """How :class:`DecoupledWeightDecay` treats one variable.

    ``kind``: ``"decay"`` (shrunk each step), ``"skip"`` (left alone) or ``"sphere"`` (retracted
    to a fixed norm after each step, see :meth:`DecoupledWeightDecay.sphere_radius_of`);
    ``reason``: why, for humans; ``granularity``: for ``"sphere"``, ``"unit"`` / ``"tensor"`` /
    a tuple of axes (None otherwise); ``radius``: for a ``"sphere"`` variable whose norm a
    fixed-norm constraint sets (nGPT's ``UnitNorm(axis=...)``), that norm (None otherwise: the
    ``sphere_radius`` rule decides).
    """

    kind: str
    reason: str
    granularity: str | tuple[int, ...] | None = None
    radius: float | None = None


def fixed_norm(variable):
    """``(axes, radius)`` when ``variable`` carries a constraint that projects it to a fixed
    norm (keras_normreg's ``UnitNorm`` / ``FixedNorm``, ``keras.constraints.UnitNorm``):
    ``axes`` the granularity it normalizes over (``"tensor"`` or a tuple of axes), ``radius``
    its norm. None otherwise (no constraint, or one that does not fix the norm, as MaxNorm)."""
    constraint = getattr(variable, "constraint", None)
    if constraint is None:
        return None
    if isinstance(constraint, keras.constraints.UnitNorm):
        value = 1.0
    elif callable(getattr(constraint, "norm_axes", None)) and not hasattr(
            constraint, "max_value"):
        value = getattr(constraint, "value", None)
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return None
    else:
        return None
    axes = _targeting.constraint_axes(variable)
    if axes is None:
        return None
    return ("tensor" if not axes else axes), float(value)


def _initial_learning_rate(optimizer):
    """lr_0 of a Keras optimizer: the float value, ``schedule(0)`` or ``callable()``."""
    lr = _compat.optimizer_learning_rate_attr(optimizer)
    if isinstance(lr, _LR_SCHEDULE):
        value = lr(0)
    elif isinstance(lr, keras.Variable):
        return float(lr.numpy())  # works for mirrored variables too (as Keras' get_config)
    elif callable(lr):
        value = lr()
    else:
        value = lr
    return float(ops.convert_to_numpy(value))


def _lr_is_fixed(optimizer):
    return isinstance(_compat.optimizer_learning_rate_attr(optimizer), keras.Variable)


def _resolve_inner(optimizer):
    name = "optimizer"
    if isinstance(optimizer, (str, dict)):
        try:
            optimizer = keras.optimizers.get(optimizer)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"Argument `{name}` could not be resolved to a Keras optimizer ({err}). "
                f"{received(name, optimizer)}"
            ) from None
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            "Argument `optimizer` must not be a LossScaleOptimizer: wrap the other way round, "
            "`keras.optimizers.LossScaleOptimizer(DecoupledWeightDecay(inner, ...))`. "
            f"{received(name, optimizer)}"
        )
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            "Argument `optimizer` must be a keras.optimizers.Optimizer instance (or a name or "
            f"config dict accepted by keras.optimizers.get). {received(name, optimizer)}"
        )
    if isinstance(optimizer, DecoupledWeightDecay):
        raise ValueError(
            "Argument `optimizer` is already a DecoupledWeightDecay: nesting them would apply "
            f"weight decay twice (double decay). {received(name, optimizer)}"
        )
    wd = getattr(optimizer, "weight_decay", None)
    if wd is not None and wd != 0:
        raise ValueError(
            "The wrapped optimizer already applies its own weight decay "
            f"(weight_decay={wd!r}); wrapping it would decay twice (double decay). Create it "
            "with weight_decay=None and pass the decay to DecoupledWeightDecay. "
            f"{received(name, optimizer)}"
        )
    return optimizer


def _resolve_schedule(decay_schedule):
    name = "decay_schedule"
    if decay_schedule is None or isinstance(decay_schedule, _LR_SCHEDULE):
        return decay_schedule
    if isinstance(decay_schedule, dict):
        return keras.saving.deserialize_keras_object(decay_schedule)
    if callable(decay_schedule):
        return decay_schedule
    raise ValueError(
        "Argument `decay_schedule` must be None, a keras.optimizers.schedules."
        "LearningRateSchedule (or its config dict) or a callable taking the step. "
        f"{received(name, decay_schedule)}"
    )


def _check_paths(paths):
    """None, a sequence of paths (granularity "unit") or {path: granularity} -> dict/None."""
    name = "scale_invariant_paths"
    if paths is None:
        return None
    if isinstance(paths, dict):
        items = list(paths.items())
    elif isinstance(paths, str):
        items = None
    else:
        try:
            items = [(p, "unit") for p in paths]
        except TypeError:
            items = None
    if items is None or not all(isinstance(p, str) for p, _ in items):
        raise ValueError(
            f"Argument `{name}` must be None, a sequence of variable paths or a dict "
            f"{{path: 'unit' | 'tensor' | [axes]}}. {received(name, paths)}"
        )
    return {p: _sphere.check_granularity(name, g) for p, g in sorted(items)}


_DWD_ARGS = (
    "semantics", "decay_schedule", "max_learning_rate", "base_learning_rate", "exclude",
    "include", "sphere", "scale_invariant", "scale_invariant_paths", "sphere_radius", "name",
)


def _check_sphere_radius(sphere_radius, scale_invariant, sphere):
    """The radius rule: None -> "units" when some weights are in sphere mode (None otherwise);
    a value given without sphere mode is an error naming both options."""
    sphere_on = scale_invariant == "sphere" or bool(sphere)
    if sphere_radius is None:
        return _sphere.DEFAULT_RADIUS if sphere_on else None
    sphere_radius = _sphere.check_radius(sphere_radius)
    if not sphere_on:
        raise ValueError(
            "Argument `sphere_radius` sets the norm of the weights kept on the sphere, but no "
            "weight is in sphere mode: set `scale_invariant='sphere'` or give `sphere` rules, or "
            f"drop `sphere_radius` (scale_invariant={scale_invariant!r}, sphere="
            f"{list(sphere)!r}). {received('sphere_radius', sphere_radius)}"
        )
    return sphere_radius


@register
class DecoupledWeightDecay(keras.optimizers.Optimizer):
    r"""Decoupled weight decay around ANY Keras optimizer, with explicit selection rules.

    At step ``t`` (``t = inner.iterations`` before the step, the index the learning-rate
    schedule sees), with ``lr_t`` the wrapped optimizer's learning rate and
    ``λ_t = weight_decay · s(t)`` (``s`` = ``decay_schedule``, 1 when None), every *decayed*
    variable ``w`` (with a gradient this step) is first shrunk, **before** the gradient step and
    from the pre-step value (the order of Keras' and PyTorch's AdamW)::

        semantics="lr":         w ← w − w · λ_t · lr_t                     (Keras / PyTorch;
                                                                              multiplied by lr)
        semantics="schedule":   w ← w − w · λ_t · (lr_t / lr_0)            (Loshchilov & Hutter's
                                                                              η_t; not × lr_0)
        semantics="corrected":  w ← w − w · λ_t · (lr_t² / lr_max)         (Defazio 2025, "AdamC")

    then the wrapped optimizer takes its own step ``w ← inner_update(w, g, lr_t)`` (clipping,
    EMA, gradient accumulation, constraints are the inner optimizer's). With
    ``gradient_accumulation_steps`` on the inner optimizer the decay is applied only on the
    steps that update the weights. ``semantics="lr"`` with no exclusions reproduces
    ``keras.optimizers.AdamW`` / ``SGD(weight_decay=λ)`` exactly.

    *Sphere* variables are not decayed. After the inner step each of their normalized groups
    is retracted to the radius ``r``. A group is one output unit (the last axis of Keras
    kernels ``(..., in, out)``; rank <= 1: the whole vector)::

        w[..., j] ← w[..., j] / max(‖w[..., j]‖₂, 1e-12) · r

    Their scale, which a following normalization makes irrelevant, is pinned, and λ
    disappears as a hyperparameter for them ("force ‖w‖ = 1", van Laarhoven 2017). Weights
    listed by ``sphere`` rules are retracted per unit (your assertion that each unit is
    scale-invariant). Weights found by :meth:`bind` get the ``granularity`` the invariance
    analysis reports (:class:`keras_normreg.invariance.ScaleInvariance`). That is per unit
    where per-unit invariance is certain (Dense/Conv kernel -> channel-wise layers -> BatchNorm
    over channels; a WeightNormalization ``v`` over its own norm axes). Otherwise it is one
    norm for the whole tensor (``w ← w / ‖w‖ · r``, e.g. a kernel before LayerNormalization or
    GroupNormalization), which always preserves the function.

    A sphere variable that carries a fixed-norm constraint (keras_normreg's ``UnitNorm`` /
    ``FixedNorm``, ``keras.constraints.UnitNorm``; nGPT's weights, ``UnitNorm(axis=...)`` along
    the embedding dimension) is retracted to *the constraint's* sphere: over the constraint's
    axes, to its norm (1 for UnitNorm), whatever the analysis' granularity and
    ``sphere_radius`` say. The inner optimizer applies the constraint after its step and the
    retraction then computes the same projection again (a no-op up to rounding); retracting
    to another sphere (``√units`` over the whole tensor) would be undone per vector by the
    constraint at the next step, the two fighting.

    Decay and fixed-norm constraints do not mix: a decayed variable (treatment ``"decay"``)
    that carries a fixed-norm constraint would be shrunk and projected back to its norm at
    every step, so λ would do nothing but enlarge the step. With ``weight_decay > 0``,
    :meth:`bind` and :meth:`build` refuse such a variable with a ValueError naming it and λ:
    exclude it (``exclude=(..., "glob:<path>")``), or use ``weight_decay=0`` (nGPT uses no
    weight decay).

    The radius (``sphere_radius``) does not change the function; it sets the step size. On a
    sphere of radius ``r`` a scale-invariant weight has ``∇f(rŴ) = ∇f(Ŵ)/r``, so a step turns
    it by ``≈ η‖∇f(Ŵ)‖/r²``: the effective learning rate is ``η/r²``. The default rule
    ``"units"`` uses ``r = 1`` for per-unit groups, explicit axes and rank <= 1 weights, so
    ``η/‖w_j‖² = η`` for each unit. It uses ``r = √units`` (``units = shape[-1]``) for a
    whole-tensor group of rank >= 2. Then ``mean_j ‖w_j‖² = 1``, and a unit's effective
    learning rate matches the per-unit case on average. Radius 1 would give each unit
    ``‖w_j‖ ≈ 1/√units`` and ``units`` times the per-unit rate at the same ``η``. The units'
    norms within the tensor remain free to differ. The full derivation is in
    :mod:`keras_normreg.optimizers._sphere`.

    Which variables are decayed (first matching line wins):

    1. sphere: matches a ``sphere`` rule, or is in ``scale_invariant_paths`` with
       ``scale_invariant="sphere"``;
    2. not decayed: in ``scale_invariant_paths`` with ``scale_invariant="exclude"``;
    3. not decayed: ``include`` is given and no ``include`` rule matches;
    4. not decayed: any ``exclude`` rule matches (the rules ADD up);
    5. decayed.

    :meth:`treatment` tells which of these applies to a variable (``"decay"``, ``"skip"`` or
    ``"sphere"``), :meth:`decay_plan` lists them for many, and :meth:`effective_decay` gives the
    per-step shrink ``d_t = λ_t · f_t`` of the decayed ones (``w ← w − d_t·w``, with ``f_t`` the
    lr factor of ``semantics``: ``lr_t``, ``lr_t/lr_0`` or ``lr_t²/lr_max``).

    ε placement: the wrapper does not change the inner optimizer's step, so
    ``DecoupledWeightDecay(keras.optimizers.Adam(...))`` (and :func:`AdamW`) follow Keras'
    placement, ``ε`` added to ``√v`` *before* the bias correction
    (``lr_t·√(1 − β₂ᵗ)/(1 − β₁ᵗ) · m/(√v + ε)``), unlike PyTorch's Adam/AdamW and our
    :class:`~keras_normreg.optimizers.AdamP` (``m̂/(√v̂ + ε)``); the two differ by
    ``ε·(1 − √(1 − β₂ᵗ))`` in the denominator, which matters in the first steps and when
    ``√v`` is not large against ``ε``.

    Rules are the small language of :mod:`keras_normreg.optimizers._rules`: keywords ``"bias"``,
    ``"normalization"`` (alias ``"norm"``), ``"1d"``, and patterns ``"glob:<fnmatch on
    variable.path>"`` / ``"regex:<regex searched in variable.path>"``.

    Args:
        optimizer: the inner ``keras.optimizers.Optimizer`` (or a name / config for
            ``keras.optimizers.get``), created with ``weight_decay=None``.
        weight_decay: λ >= 0.
        semantics: ``"lr"`` | ``"schedule"`` | ``"corrected"`` (formulas above).
        decay_schedule: optional ``LearningRateSchedule`` (or callable of the step) ``s``;
            ``λ_t = weight_decay · s(t)`` (use ``weight_decay=1.0`` to let ``s`` give ``λ_t``).
            A plain callable is not serializable with ``safe_mode=True``.
        max_learning_rate: ``lr_max`` for ``"corrected"``. Default: the inner optimizer's
            float learning rate; required when that learning rate is a schedule or callable.
        base_learning_rate: ``lr_0`` for ``"schedule"``. Default: the inner learning rate at
            step 0 (``schedule(0)``); pass the peak explicitly for warm-up schedules.
        exclude: rules of variables NOT to decay (default ``("bias", "normalization")``).
        include: optional rules; when given only matching variables are decayed.
        sphere: rules of variables kept on the unit sphere per output unit.
        scale_invariant: ``None`` / ``"none"`` (no special treatment), ``"exclude"``
            (scale-invariant weights are not decayed) or ``"sphere"`` (they are kept at a fixed
            norm, per unit or per tensor as above). Detection is automatic: :meth:`bind` runs
            ``keras_normreg.invariance.find_scale_invariant``; or give
            ``scale_invariant_paths``. Training without either raises a ValueError.
        scale_invariant_paths: explicit variable paths (each retracted per unit in sphere
            mode) or ``{path: "unit" | "tensor" | [axes]}``; filled in by :meth:`bind` and
            saved in the config, so a reloaded model treats exactly the same variables.
        sphere_radius: the norm sphere weights are retracted to: ``"units"`` (the rule above:
            ``√units`` for a whole-tensor group of rank >= 2, else 1), ``"one"`` (1 for every
            group, the behaviour before this option) or a positive finite number (that norm
            for every group: each unit, or the whole tensor). Default: ``"units"`` when
            ``scale_invariant="sphere"`` or ``sphere`` rules are set. Giving it without either
            raises a ValueError. A saved config without this key is loaded with ``"one"``,
            the radius it was trained with.
        name: optimizer name.

    Example::

        opt = DecoupledWeightDecay(keras.optimizers.SGD(0.1, momentum=0.9), 5e-4,
                                   exclude=("bias", "normalization"), scale_invariant="sphere")
        model.compile(optimizer=opt.bind(model), loss=...)
    """

    def __init__(
        self,
        optimizer,
        weight_decay,
        *,
        semantics="lr",
        decay_schedule=None,
        max_learning_rate=None,
        base_learning_rate=None,
        exclude=DEFAULT_EXCLUDE,
        include=None,
        sphere=None,
        scale_invariant=None,
        scale_invariant_paths=None,
        sphere_radius=None,
        name=None,
        **kwargs,
    ):
        if kwargs:
            raise ValueError(
                f"DecoupledWeightDecay does not take the argument(s) {sorted(kwargs)}: set "
                "clipping, EMA, loss scaling and gradient accumulation on the wrapped optimizer. "
                f"{received('kwargs', kwargs)}"
            )
        inner = _resolve_inner(optimizer)
        check_number("weight_decay", weight_decay, low=0)
        check_choice("semantics", semantics, SEMANTICS)
        decay_schedule = _resolve_schedule(decay_schedule)
        check_number("max_learning_rate", max_learning_rate, low=0, low_inclusive=False,
                     allow_none=True)
        check_number("base_learning_rate", base_learning_rate, low=0, low_inclusive=False,
                     allow_none=True)
        exclude = _rules.parse_rules("exclude", exclude)
        include = _rules.parse_rules("include", include, allow_none=True)
        sphere = _rules.parse_rules("sphere", sphere)
        if scale_invariant == "none":
            scale_invariant = None
        check_choice("scale_invariant", scale_invariant, SCALE_INVARIANT)
        scale_invariant_paths = _check_paths(scale_invariant_paths)
        sphere_radius = _check_sphere_radius(sphere_radius, scale_invariant, sphere)

        if semantics == "schedule" and base_learning_rate is None:
            base_learning_rate = _initial_learning_rate(inner)
            if not base_learning_rate > 0:
                raise ValueError(
                    "semantics='schedule' divides by the initial learning rate lr_0, which is "
                    f"{base_learning_rate!r} for this optimizer; pass base_learning_rate=<peak "
                    f"lr>. {received('base_learning_rate', None)}"
                )
        if semantics == "corrected" and max_learning_rate is None:
            if not _lr_is_fixed(inner):
                raise ValueError(
                    "semantics='corrected' needs `max_learning_rate` (lr_max in "
                    "lr_t**2 / lr_max) when the wrapped optimizer's learning rate is a schedule "
                    "or callable: it cannot be inferred in general (warm-up schedules peak later)."
                    f" {received('max_learning_rate', None)}"
                )
            max_learning_rate = _initial_learning_rate(inner)
            if not max_learning_rate > 0:
                raise ValueError(
                    "semantics='corrected' needs a positive `max_learning_rate`; the wrapped "
                    f"optimizer's learning rate is {max_learning_rate!r}. "
                    f"{received('max_learning_rate', None)}"
                )

        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner
        self.weight_decay = float(weight_decay)
        self.semantics = semantics
        self.decay_schedule = decay_schedule
        self.max_learning_rate = None if max_learning_rate is None else float(max_learning_rate)
        self.base_learning_rate = (
            None if base_learning_rate is None else float(base_learning_rate)
        )
        self.exclude = exclude
        self.include = include
        self.sphere = sphere
        self.scale_invariant = scale_invariant
        self.scale_invariant_paths = scale_invariant_paths
        self.sphere_radius = sphere_radius
        self.scale_invariant_reasons = {}
        self._plan = {}

    # ------------------------------------------------------------------ delegation
    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        inner = self.__dict__.get("inner_optimizer")
        if inner is None:  # base __init__ sets it before the inner optimizer is attached
            return
        inner.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    @property
    def loss_scale_factor(self):
        inner = self.__dict__.get("inner_optimizer")
        return None if inner is None else inner.loss_scale_factor

    @loss_scale_factor.setter
    def loss_scale_factor(self, value):
        inner = self.__dict__.get("inner_optimizer")
        if inner is not None:
            inner.loss_scale_factor = value

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def _apply_weight_decay(self, variables):  # Keras' own (coupled-to-name) decay: never
        return None

    # ------------------------------------------------------------------ selection
    def bind(self, model):
        """Resolve ``scale_invariant`` for ``model`` and return ``self`` (chainable).

        Runs ``keras_normreg.invariance.find_scale_invariant(model)`` and stores the found
        variable paths with their ``granularity`` in ``scale_invariant_paths`` (saved with the
        optimizer config) and the reasons in ``scale_invariant_reasons``. Must run before the optimizer is built (before
        the first training step) on a built model.
        """
        if not isinstance(model, keras.layers.Layer):
            raise ValueError(
                f"bind() expects a Keras model or layer. {received('model', model)}"
            )
        if not model.built or not model.variables:
            raise ValueError(
                "bind() needs a built model (call it on a batch or build it with keras.Input "
                f"first) so that its variables exist. {received('model', model.name)}"
            )
        if self.built:
            raise ValueError(
                "bind() must be called before the optimizer is built (before the first "
                "training step / model.fit); build a new optimizer instead. "
                f"{received('model', model.name)}"
            )
        if self.scale_invariant is None:
            self.check_constrained_decay(model.trainable_variables)
            return self
        found = _invariance.find_scale_invariant(model)
        self.scale_invariant_paths = _check_paths(_sphere.granularities(found))
        self.scale_invariant_reasons = {
            path: v.reason for path, v in found.items() if v.invariant
        }
        self._plan = {}
        self.check_constrained_decay(model.trainable_variables)
        return self

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Keras-compatible, but ADDITIVE: adds exact-path rules for ``var_list`` and
        ``regex:`` rules for ``var_names`` (searched in ``variable.path``) to ``exclude``."""
        if self.built:
            raise ValueError(
                "exclude_from_weight_decay() can only be called before the optimizer is built."
            )
        added = [_rules.exact_path_rule(_rules.variable_path(v)) for v in var_list or ()]
        added += [f"regex:{n}" for n in var_names or ()]
        self.exclude = _rules.parse_rules("exclude", tuple(self.exclude) + tuple(added))
        self._plan = {}

    def _classify(self, variable) -> Treatment:
        path = _rules.variable_path(variable)
        rule = _rules.first_match(self.sphere, variable)
        if rule is not None:
            return self._on_constraint_sphere(
                Treatment("sphere", f"sphere rule {rule!r}", "unit"), variable)
        if self.scale_invariant is not None:
            if self.scale_invariant_paths is None:
                raise ValueError(
                    f"scale_invariant={self.scale_invariant!r} needs the model's scale-invariant "
                    "weights: call `optimizer.bind(model)` on the built model before training "
                    "(or pass scale_invariant_paths=[...]). "
                    f"{received('scale_invariant_paths', None)}"
                )
            if path in self.scale_invariant_paths:
                granularity = self.scale_invariant_paths[path]
                reason = self.scale_invariant_reasons.get(path, "listed in scale_invariant_paths")
                if self.scale_invariant == "sphere":
                    return self._on_constraint_sphere(
                        Treatment("sphere", f"scale-invariant ({reason}); per {granularity}",
                                  granularity), variable)
                return Treatment("skip", f"scale-invariant ({reason})")
        if self.include is not None and _rules.first_match(self.include, variable) is None:
            return Treatment("skip", "matches no include rule")
        rule = _rules.first_match(self.exclude, variable)
        if rule is not None:
            return Treatment("skip", f"exclude rule {rule!r}")
        return Treatment("decay", "no exclusion rule matches")

    @staticmethod
    def _on_constraint_sphere(found, variable):
        """A sphere treatment moved onto the sphere of the variable's fixed-norm constraint."""
        fixed = fixed_norm(variable)
        if fixed is None:
            return found
        axes, r = fixed
        constraint = type(variable.constraint).__name__
        return Treatment("sphere", f"{found.reason}; retracted like its {constraint} "
                                   f"constraint: per {axes}, norm {r:g}", axes, r)

    def check_constrained_decay(self, variables):
        """Raise a ValueError when a variable of ``variables`` would be decayed (treatment
        ``"decay"`` with ``weight_decay > 0``) while a fixed-norm constraint projects it back to
        its norm after every step (see the class docstring). Called by :meth:`bind` and
        :meth:`build`."""
        if not self.weight_decay > 0:
            return
        for variable in variables:
            fixed = fixed_norm(variable)
            if fixed is None or self._classify(variable).kind != "decay":
                continue
            path = _rules.variable_path(variable)
            constraint = type(variable.constraint).__name__
            raise ValueError(
                f"DecoupledWeightDecay would decay {path!r}, which a {constraint} constraint "
                f"projects back to norm {fixed[1]:g} (per {fixed[0]}) after every step, so the "
                "decay would only enlarge the step (nGPT-style weights are trained without "
                f"decay): exclude it (exclude=(..., {_rules.exact_path_rule(path)!r})) or use "
                f"weight_decay=0. {received('weight_decay', self.weight_decay)}")

    def _planned(self, variable) -> Treatment:
        key = _compat.optimizer_variable_key(self, variable)
        if key not in self._plan:
            self._plan[key] = self._classify(variable)
        return self._plan[key]

    def sphere_radius_of(self, variable):
        """The norm ``variable`` is retracted to after each step (each unit's for per-unit
        groups, the whole tensor's for ``"tensor"``), as a float; None when it is not a sphere
        weight. See ``sphere_radius`` in the class docstring."""
        kind, _, granularity, fixed = self._classify(variable)
        if kind != "sphere":
            return None
        if fixed is not None:
            return fixed
        return _sphere.radius(self.sphere_radius or _sphere.DEFAULT_RADIUS, granularity,
                              tuple(variable.shape))

    def treatment(self, variable, reason=False):
        """How ``variable`` is treated: ``"decay"`` (shrunk by :meth:`effective_decay` each
        step), ``"skip"`` (not decayed) or ``"sphere"`` (retracted to
        :meth:`sphere_radius_of` after each step), by the selection order of the class
        docstring. ``reason=True`` returns the :class:`Treatment` ``(kind, reason,
        granularity)`` instead of the kind alone.

        Raises ValueError when ``scale_invariant`` is set but the scale-invariant weights are
        not known yet (call :meth:`bind` first).
        """
        found = self._classify(variable)
        return found if reason else found.kind

    def decay_plan(self, variables=None, reasons=False):
        """``{variable.path: "decay" | "sphere" | "skip"}`` (:meth:`treatment` of each of
        ``variables``, default: the variables the optimizer was built with); ``reasons=True``
        gives ``(treatment, why)``."""
        if variables is None:
            if not self.built:
                raise ValueError(
                    "decay_plan() without `variables` needs a built optimizer; pass "
                    "model.trainable_variables. Received: variables=None"
                )
            variables = self._trainable_variables
        out = {}
        for v in variables:
            kind, why = self._classify(v)[:2]
            out[_rules.variable_path(v)] = (kind, why) if reasons else kind
        return out

    # ------------------------------------------------------------------ build / apply
    @_compat.no_automatic_dependency_tracking
    def build(self, var_list):
        plan = {_compat.optimizer_variable_key(self, v): self._classify(v) for v in var_list}
        self.check_constrained_decay(var_list)
        if not self.inner_optimizer.built:
            self.inner_optimizer.build(var_list)
        super().build(var_list)
        self._plan = plan

    def _decay_rate(self, dtype):
        """``λ_t = weight_decay · s(t)`` in ``dtype``."""
        lam = constant(self.weight_decay, dtype)
        if self.decay_schedule is not None:
            step = _compat.optimizer_iterations(self.inner_optimizer)
            lam = lam * constant(self.decay_schedule(step), dtype)
        return lam

    def _lr_factor(self, dtype):
        """``f_t`` of ``semantics`` in ``dtype`` (0 on the steps gradient accumulation skips)."""
        inner = self.inner_optimizer
        lr = constant(inner.learning_rate, dtype)
        if self.semantics == "lr":
            factor = lr
        elif self.semantics == "schedule":
            factor = lr / constant(self.base_learning_rate, dtype)
        else:
            factor = (lr * lr) / constant(self.max_learning_rate, dtype)
        steps = inner.gradient_accumulation_steps
        if steps:
            is_update = ops.equal((_compat.optimizer_iterations(inner) + 1) % steps, 0)
            factor = factor * ops.cast(is_update, dtype)
        return factor

    def effective_decay(self, dtype="float32"):
        """The per-step shrink ``d_t = λ_t · f_t`` of the decayed variables at the coming step
        (``w ← w − d_t·w``; ``λ_t = weight_decay · s(t)``, ``f_t`` = ``lr_t``, ``lr_t/lr_0`` or
        ``lr_t²/lr_max`` for ``semantics`` "lr", "schedule", "corrected"; 0 on the steps that
        gradient accumulation does not apply), as a scalar tensor of ``dtype``."""
        return self._decay_rate(dtype) * self._lr_factor(dtype)

    def _decay_variables(self, variables):
        def decay(var):
            shrink(var, self.effective_decay(var.dtype))

        for_each_variable(variables, decay)

    def _retract_variables(self, variables_and_treatment):
        rule = self.sphere_radius or _sphere.DEFAULT_RADIUS
        groups = {}
        for var, found in variables_and_treatment:
            granularity = found.granularity
            r = (found.radius if found.radius is not None
                 else _sphere.radius(rule, granularity, tuple(var.shape)))
            groups.setdefault((granularity, r), []).append(var)
        for (granularity, r), variables in groups.items():
            def retract(var, granularity=granularity, r=r):
                # in the variable's own dtype (float32 under a mixed-precision policy: the
                # variables are float32 there; only the layers compute in float16)
                value = ops.cast(ops.convert_to_tensor(var), var.dtype)
                norm = _sphere.norms(value, granularity, SPHERE_EPSILON)
                if keras.backend.backend() == "torch":
                    # in place, as Keras' torch optimizers update (the same division and
                    # multiply as below: no new tensor, no copy back into the variable)
                    import torch

                    with torch.no_grad():
                        var.value.div_(norm)
                        if r != 1.0:
                            var.value.mul_(constant(r, var.dtype))
                    return
                unit = value / norm
                # r = 1: no multiply, so the unit-radius update stays bit for bit as before
                var.assign(unit if r == 1.0 else unit * constant(r, var.dtype))

            for_each_variable(variables, retract)

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "When passing `grads` without `variables`, the optimizer must already be "
                    "built; call `optimizer.build(trainable_variables)` first."
                )
            variables = list(self._trainable_variables)
        else:
            trainable_variables = list(trainable_variables)
            variables = trainable_variables
            if not self.built:
                with keras.name_scope(self.name, caller=self):
                    self.build(variables)
                self.built = True
        present = [
            v for g, v in zip(grads, variables, strict=True)
            if g is not None and not getattr(v, "overwrite_with_gradient", False)
        ]
        plan = [(v, self._planned(v)) for v in present]
        decayed = [v for v, t in plan if t.kind == "decay"]
        sphere = [(v, t) for v, t in plan if t.kind == "sphere"]
        if decayed and (self.weight_decay > 0):
            with keras.name_scope(self.name, caller=self):
                self._decay_variables(decayed)
        self.inner_optimizer.apply(grads, trainable_variables)
        if sphere:
            with keras.name_scope(self.name, caller=self):
                self._retract_variables(sphere)

    # ------------------------------------------------------------------ config
    def get_config(self):
        schedule = self.decay_schedule
        if schedule is not None:
            schedule = keras.saving.serialize_keras_object(schedule)
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "weight_decay": self.weight_decay,
            "semantics": self.semantics,
            "decay_schedule": schedule,
            "max_learning_rate": self.max_learning_rate,
            "base_learning_rate": self.base_learning_rate,
            "exclude": list(self.exclude),
            "include": None if self.include is None else list(self.include),
            "sphere": list(self.sphere),
            "scale_invariant": self.scale_invariant,
            "sphere_radius": self.sphere_radius,
            "scale_invariant_paths": (
                None if self.scale_invariant_paths is None else {
                    p: g if isinstance(g, str) else list(g)
                    for p, g in self.scale_invariant_paths.items()
                }
            ),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = copy.deepcopy(config)  # Keras' from_config mutates nested configs
        if "sphere_radius" not in config and (
            config.get("scale_invariant") == "sphere" or config.get("sphere")
        ):
            config["sphere_radius"] = "one"  # saved before the option: radius 1 throughout
        inner = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects
        )
        if isinstance(config.get("decay_schedule"), dict):
            config["decay_schedule"] = keras.saving.deserialize_keras_object(
                config["decay_schedule"], custom_objects=custom_objects
            )
        return cls(inner, **config)


# ---------------------------------------------------------------------- aliases
def _split(kwargs):
    wrapper = {k: kwargs.pop(k) for k in list(kwargs) if k in _DWD_ARGS}
    return wrapper, kwargs


def SGDW(learning_rate=0.01, momentum=0.9, nesterov=False, weight_decay=5e-4, **kwargs):
    """``DecoupledWeightDecay(keras.optimizers.SGD(learning_rate, momentum, nesterov), λ)``.

    Keras SGD: ``m ← μ·m − lr_t·g; w ← w + m`` (Nesterov: ``w ← w + μ·m − lr_t·g``), preceded by
    the decoupled decay of :class:`DecoupledWeightDecay` (``semantics="lr"``:
    ``w ← w − w·λ·lr_t``, multiplied by lr). Keyword arguments of DecoupledWeightDecay
    (``semantics``, ``exclude``, ``sphere``, ...) go to the wrapper, the others (``clipnorm``,
    ``use_ema``, ...) to ``keras.optimizers.SGD``.
    """
    wrapper, inner = _split(dict(kwargs))
    sgd = keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum,
                               nesterov=nesterov, **inner)
    return DecoupledWeightDecay(sgd, weight_decay, **wrapper)


def AdamW(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.004,
          **kwargs):
    """``DecoupledWeightDecay(keras.optimizers.Adam(...), λ)`` with selection rules.

    Keras Adam: ``m ← m + (g − m)(1 − β₁); v ← v + (g² − v)(1 − β₂);
    w ← w − lr_t·√(1 − β₂ᵗ)/(1 − β₁ᵗ) · m / (√v + ε)``, preceded by the decoupled decay
    (``semantics="lr"``: ``w ← w − w·λ·lr_t``, multiplied by lr, as keras/PyTorch AdamW). Same
    defaults as ``keras.optimizers.AdamW`` except the default ``exclude=("bias",
    "normalization")``; pass ``exclude=()`` to decay everything like Keras.
    """
    wrapper, inner = _split(dict(kwargs))
    adam = keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                                 epsilon=epsilon, **inner)
    return DecoupledWeightDecay(adam, weight_decay, **wrapper)


def LionW(learning_rate=0.001, beta_1=0.9, beta_2=0.99, weight_decay=0.01, **kwargs):
    """``DecoupledWeightDecay(keras.optimizers.Lion(...), λ)``.

    Keras Lion: ``w ← w − lr_t · sign(β₁·m + (1 − β₁)·g); m ← β₂·m + (1 − β₂)·g``, preceded by
    the decoupled decay (``semantics="lr"``: ``w ← w − w·λ·lr_t``, multiplied by lr). Lion's
    sign update has unit size per coordinate, so λ is typically 3-10x AdamW's.
    """
    wrapper, inner = _split(dict(kwargs))
    lion = keras.optimizers.Lion(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                                 **inner)
    return DecoupledWeightDecay(lion, weight_decay, **wrapper)


def RMSpropW(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, weight_decay=1e-4,
             **kwargs):
    """``DecoupledWeightDecay(keras.optimizers.RMSprop(...), λ)``.

    Keras RMSprop: ``v ← ρ·v + (1 − ρ)·g²; Δ = lr_t·g / √(v + ε)``; ``w ← w − Δ`` (with momentum
    ``μ``: ``m ← μ·m + Δ; w ← w − m``), preceded by the decoupled decay (``semantics="lr"``:
    ``w ← w − w·λ·lr_t``, multiplied by lr).
    """
    wrapper, inner = _split(dict(kwargs))
    rms = keras.optimizers.RMSprop(learning_rate=learning_rate, rho=rho, momentum=momentum,
                                   epsilon=epsilon, **inner)
    return DecoupledWeightDecay(rms, weight_decay, **wrapper)


def normalized_weight_decay(lambda_norm, batch_size, num_train_samples, epochs):
    """Loshchilov & Hutter's normalized weight decay (AdamW paper, Appendix B.1).

    ``λ = λ_norm · sqrt(b / (B · T))`` with ``b`` the batch size, ``B`` the number of training
    points and ``T`` the number of epochs, so that the total decay over a run is comparable
    across budgets: tune ``λ_norm`` once, then get ``λ`` for each (b, B, T).
    """
    check_number("lambda_norm", lambda_norm, low=0)
    check_number("batch_size", batch_size, low=1, integer=True)
    check_number("num_train_samples", num_train_samples, low=1, integer=True)
    check_number("epochs", epochs, low=0, low_inclusive=False)
    if batch_size > num_train_samples:
        warnings.warn(
            f"batch_size={batch_size} is larger than num_train_samples={num_train_samples}.",
            stacklevel=2,
        )
    return float(lambda_norm) * math.sqrt(batch_size / (num_train_samples * float(epochs)))


__all__ = [
    "DEFAULT_EXCLUDE", "SEMANTICS", "TREATMENTS", "DecoupledWeightDecay", "Treatment",
    "SCALE_INVARIANT_NAMES", "fixed_norm",
    "constant", "SGDW", "AdamW", "LionW",
    "RMSpropW", "normalized_weight_decay", "for_each_variable",
]
