"""One language for "which weights": regularizers, constraints and optimizers all read it.

A *selector* picks model variables. Everywhere a set of weights is chosen, the same selectors
are accepted:

* :func:`keras_normreg.regularizers.apply` ``(targets=, include=, exclude=)``;
* :func:`keras_normreg.constraints.attach` ``(targets=, include=, exclude=)``;
* the optimizers' rules: ``DecoupledWeightDecay(exclude=, include=, sphere=)`` (and SGDW, AdamW,
  ...), ``SGDP`` / ``AdamP`` ``(exclude=, include=)``, the recipe key ``optimizer.exclude``;
* :func:`matching_paths` here, to see what a selector picks before using it.

A selector list (a string, a class, or a sequence of them) picks the UNION of what its items
pick. ``regularizers.apply`` / ``constraints.attach`` take a variable when it matches
``targets`` (default ``"kernel"``) and ``include`` (when given) and no ``exclude`` entry.

==========================  ========================================================================
selector                    picks
==========================  ========================================================================
``"kernel"``                role kernel: ``kernel`` / ``*_kernel`` (Dense, Conv*, Conv*Transpose,
                            EinsumDense, pointwise and recurrent kernels), ``WeightNormalization``'s
                            direction ``v``
``"depthwise_kernel"``      role depthwise_kernel: DepthwiseConv*'s ``kernel``, SeparableConv*'s
                            ``depthwise_kernel``
``"bias"``                  role bias: ``bias`` / ``*_bias``
``"gamma"``                 role gamma: a normalization scale ``gamma``, ``WeightNormalization``'s
                            gain ``g``
``"beta"``                  role beta: a normalization offset ``beta``
``"embeddings"``            role embeddings: an Embedding table
``"all"``                   every variable
``"normalization"``         a parameter or statistic of a normalization layer: a variable named
                            gamma, beta, moving_mean, moving_variance, moving_stddev, renorm_mean or
                            renorm_stddev; a learned gain named scale (RMSNormalization's
                            ``scale``, the transformer zoo's ``LearnedScale``: nGPT's step sizes);
                            offset / g in a layer whose path segment contains ``"norm"``
                            (WeightNormalization's ``g``); where the layer is known, also every
                            variable of a normalization layer and every variable of role gamma.
                            ``"norm"`` is an alias.
``"1d"``                    ``len(variable.shape) <= 1`` (biases, gains, scalars)
``keras.layers.Conv2D``     a layer class: variables of layers that are instances of it
``"Conv2D"``                a class name: variables of layers whose class or a base class has that
                            name (the name of a ``keras.layers.Layer`` subclass)
``"glob:<pattern>"``        ``fnmatch.fnmatchcase(variable.path, pattern)``, e.g.
                            ``"glob:block1_*/kernel"``, ``"glob:*/embeddings"``
``"regex:<pattern>"``       ``re.search(pattern, variable.path)``, e.g. ``"regex:^(conv|dense)/"``
``[s1, s2, ...]``           the union: a variable matching any item
==========================  ========================================================================

Paths are Keras 3 ``variable.path`` values (``"<layer path>/<variable name>"``, e.g.
``"block1/conv2d/kernel"``), so selections survive a ``.keras`` save and reload.

Where the layer is known and where it is not. ``regularizers.apply`` and ``constraints.attach``
walk the model and know each variable's layer; the optimizers see variables only. So:

* roles come from the layer type where it is known and from the variable name otherwise: the two
  agree except for DepthwiseConv*'s ``kernel`` (``"depthwise_kernel"`` with its layer,
  ``"kernel"`` by name), ``WeightNormalization``'s ``v`` / ``g`` (``"kernel"`` / ``"gamma"``
  with the layer, no role by name: use ``"normalization"`` for ``g`` or ``glob:``) and the
  transformer zoo's ``ClassToken`` ``token`` (``"embeddings"`` with the layer, none by name);
  ``"normalization"`` picks the zoo's ``LearnedScale`` gains (``scale``) both ways;
* ``"normalization"`` also takes the variables of a normalization layer whose name lacks
  ``"norm"`` where the layer is known;
* layer classes and class names need the layer: the optimizers reject them with a ValueError
  (select by path with ``glob:`` / ``regex:`` there).

Older spellings, still accepted:

* in ``include`` / ``exclude`` of ``regularizers.apply`` / ``constraints.attach``, any other string
  is a bare glob matched against the variable path, the layer name and the class names
  (``"block1_*/kernel"``, ``"head"``); it still works (``"glob:block1_*/kernel"`` is the path-only
  spelling). In ``targets`` and in the optimizers an unknown word is an error, so a typo such as
  ``"kernal"`` cannot silently select nothing;
* ``"norm"`` for ``"normalization"``.

A bad selector is a ValueError naming the argument and the value: an unknown word, an empty
``glob:``, a regular expression that does not compile.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Iterable

import keras

from keras_normreg import _targeting
from keras_normreg._utils import received, variable_name, variable_path

#: Roles (from :mod:`keras_normreg._targeting`), ``"all"`` included.
ROLES = _targeting.ROLES
#: Keywords that are not roles.
KEYWORDS = ("normalization", "1d")
#: Every word of the language: roles and keywords.
WORDS = ROLES + KEYWORDS
ALIASES = {"norm": "normalization"}
PREFIXES = ("glob:", "regex:")

NORM_PARAM_NAMES = frozenset(
    {"gamma", "beta", "moving_mean", "moving_variance", "moving_stddev", "renorm_mean",
     "renorm_stddev"}
)
NORM_SCOPED_NAMES = frozenset({"offset", "g"})
#: Names of learned gains, counted as normalization parameters wherever they are: a variable
#: named ``scale`` multiplies (RMSNormalization's scale, the transformer zoo's
#: ``LearnedScale``: nGPT's step sizes and scalings, ``keras.layers.Attention``'s score scale).
GAIN_NAMES = frozenset({"scale"})


class ClassName(str):
    """A parsed class-name selector (``"Conv2D"``): a ``str`` that matches by layer class."""

    __slots__ = ()


class BareGlob(str):
    """A parsed older-style bare string of ``include`` / ``exclude``: matched with fnmatch
    against the variable path and the layer name, and as a class name."""

    __slots__ = ()


def _grammar(what: str, layers: bool) -> str:
    classes = "a keras.layers.Layer subclass or its class name, " if layers else ""
    return (
        f"a {what} is a role {list(ROLES)}, a keyword {list(KEYWORDS)}, {classes}"
        "'glob:<fnmatch pattern on variable.path>' or 'regex:<regular expression searched in "
        "variable.path>'"
    )


def layer_class_names() -> frozenset[str]:
    """Names of ``keras.layers.Layer`` and of every subclass defined so far."""
    seen = set()
    stack = [keras.layers.Layer]
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
    return frozenset(cls.__name__ for cls in seen)


def parse(name: str, value, *, allow_none: bool = False, what: str = "selector",
          layers: bool = True, bare_globs: bool = False):
    """Validate a selector list and return it as a tuple of canonical selectors.

    Args:
        name: the argument name, for error messages (``"exclude"``, ``"targets"``, ...).
        value: None, one selector or a sequence of selectors.
        allow_none: None gives None (else ``()``).
        what: the noun of error messages (``"rule"`` for the optimizers, ``"target"`` ...).
        layers: whether the caller knows each variable's layer; False rejects layer classes
            and class names (the optimizers).
        bare_globs: accept older-style bare strings (``include`` / ``exclude`` of
            ``regularizers.apply`` / ``constraints.attach``).

    Canonical selectors are the words (aliases resolved), ``"glob:..."`` / ``"regex:..."``
    strings, layer classes, :class:`ClassName` and :class:`BareGlob` strings; duplicates are
    dropped, order is kept.
    """
    if value is None:
        return None if allow_none else ()
    original = value
    items = (value,) if isinstance(value, (str, type)) else value
    if not isinstance(items, Iterable) or isinstance(items, dict):
        noun = f"{what} string or layer class" if layers else f"{what} string"
        raise ValueError(
            f"Argument `{name}` must be a {noun} or a sequence of {what} strings "
            f"({_grammar(what, layers)}). {received(name, original)}"
        )
    out = []
    for item in items:
        if isinstance(item, type):
            if not (layers and issubclass(item, keras.layers.Layer)):
                raise ValueError(
                    f"Argument `{name}`: {_class_problem(item, layers)} "
                    f"{received(name, original)}"
                )
        elif not isinstance(item, str):
            also = " or a keras.layers.Layer subclass" if layers else ""
            raise ValueError(
                f"Argument `{name}`: every {what} must be a string{also} "
                f"({_grammar(what, layers)}); got {item!r}. {received(name, original)}"
            )
        else:
            item = _parse_string(name, item, original, what, layers, bare_globs)
        if item not in out:
            out.append(item)
    return tuple(out)


def _class_problem(item, layers: bool) -> str:
    if not layers:
        return (f"the layer class {item.__name__} needs the layer that owns each variable, "
                "which the optimizers do not see; select by path with 'glob:<pattern>' or "
                "'regex:<pattern>'.")
    return f"{item!r} is not a keras.layers.Layer subclass."


def _parse_string(name, item, original, what, layers, bare_globs):
    rule = item.strip()
    rule = ALIASES.get(rule, rule)
    if rule in WORDS:
        return rule
    if rule.startswith("glob:"):
        if not rule[len("glob:"):]:
            raise ValueError(f"Empty glob pattern in argument `{name}`. {received(name, original)}")
        return rule
    if rule.startswith("regex:"):
        try:
            re.compile(rule[len("regex:"):])
        except re.error as err:
            raise ValueError(
                f"Invalid regular expression {rule!r} in argument `{name}`: {err}. "
                f"{received(name, original)}"
            ) from None
        return rule
    if not rule:
        raise ValueError(f"Empty {what} in argument `{name}`. {received(name, original)}")
    if rule in layer_class_names():
        if not layers:
            raise ValueError(
                f"Argument `{name}`: the class name {rule!r} needs the layer that owns each "
                "variable, which the optimizers do not see; select by path with "
                f"'glob:<pattern>' or 'regex:<pattern>'. {received(name, original)}"
            )
        return BareGlob(item) if bare_globs else ClassName(rule)
    if bare_globs:
        return BareGlob(item)
    head = (f"Unknown rule {rule!r} in argument `{name}`" if what == "rule"
            else f"Argument `{name}` has an unknown {what} {rule!r}")
    raise ValueError(f"{head}: {_grammar(what, layers)}. {received(name, original)}")


def parse_targets(targets, name: str = "targets"):
    """:func:`parse` for ``targets=`` of ``regularizers.apply`` / ``constraints.attach``:
    a non-empty selector list, no bare globs."""
    parsed = parse(name, targets, what="target")
    if not parsed:
        raise ValueError(f"Argument `{name}` must not be empty. {received(name, targets)}")
    return parsed


def parse_filter(value, name: str):
    """:func:`parse` for ``include=`` / ``exclude=``: None stays None; bare globs accepted."""
    return parse(name, value, allow_none=True, bare_globs=True)


# --------------------------------------------------------------------------- matching


def is_normalization(variable, layer=None) -> bool:
    """The keyword ``"normalization"`` (see the module doc)."""
    name = variable_name(variable)
    if name in NORM_PARAM_NAMES or name in GAIN_NAMES:
        return True
    if layer is not None and _targeting.variable_role(layer, variable) == "gamma":
        return True
    if name in NORM_SCOPED_NAMES:
        parts = variable_path(variable).split("/")
        owner = parts[-2] if len(parts) >= 2 else ""
        if "norm" in owner.lower():
            return True
    if layer is None:
        return False
    if _targeting.is_weight_normalization(layer):
        return name == "g"
    return _targeting.normalization_kind(layer) is not None


def role(variable, layer=None) -> str:
    """The role of ``variable``: by layer type where ``layer`` is given, else by name."""
    if layer is None:
        return _targeting.name_role(variable)
    return _targeting.variable_role(layer, variable)


def _need_layer(selector):
    label = selector.__name__ if isinstance(selector, type) else str(selector)
    return ValueError(
        f"The selector {label!r} matches by layer class and needs the layer that owns the "
        f"variable. {received('layer', None)}"
    )


def matches(selector, variable, layer=None) -> bool:
    """Whether one canonical selector (from :func:`parse`) picks ``variable``.

    ``layer`` is the layer that owns ``variable`` when the caller knows it (None: only the
    variable is known, as in the optimizers).
    """
    if isinstance(selector, type):
        if layer is None:
            raise _need_layer(selector)
        return isinstance(layer, selector)
    if isinstance(selector, BareGlob):
        path = variable_path(variable)
        if fnmatch.fnmatchcase(path, selector):
            return True
        return layer is not None and (selector in _targeting.class_names(layer)
                                      or fnmatch.fnmatchcase(layer.name, selector))
    if isinstance(selector, ClassName):
        if layer is None:
            raise _need_layer(selector)
        return selector in _targeting.class_names(layer)
    if selector == "all":
        return True
    if selector in ROLES:
        return role(variable, layer) == selector
    if selector == "normalization":
        return is_normalization(variable, layer)
    if selector == "1d":
        return len(tuple(variable.shape)) <= 1
    if selector.startswith("glob:"):
        return fnmatch.fnmatchcase(variable_path(variable), selector[len("glob:"):])
    if selector.startswith("regex:"):
        return re.search(selector[len("regex:"):], variable_path(variable)) is not None
    raise ValueError(
        f"Unknown selector {selector!r}: parse it with keras_normreg.selectors.parse first "
        f"({_grammar('selector', True)}). {received('selector', selector)}"
    )


def first_match(selectors, variable, layer=None):
    """The first selector of ``selectors`` that picks ``variable``, or None."""
    for selector in selectors or ():
        if matches(selector, variable, layer):
            return selector
    return None


def exact_path(path: str) -> str:
    """A ``glob:`` selector that matches exactly ``path`` (fnmatch metacharacters escaped)."""
    escaped = "".join(f"[{c}]" if c in "*?[" else c for c in path)
    return "glob:" + escaped


def describe(selectors) -> str:
    """``'kernel' / 'Dense'``: the selectors as a short human-readable list."""
    return " / ".join(repr(s.__name__ if isinstance(s, type) else str(s)) for s in selectors)


# --------------------------------------------------------------------------- models


def select(pairs, targets, include=None, exclude=None, *, name_prefix=""):
    """Filter ``[(layer, variable)]``: in ``targets``, in ``include`` (if given), not in
    ``exclude``. All three are parsed selector lists.

    Warns about include/exclude entries that matched no targeted variable (a typo there would
    otherwise be silent).
    """
    used = set()
    chosen = []
    for layer, variable in pairs:
        if first_match(targets, variable, layer) is None:
            continue
        if include is not None:
            hits = [i for i, item in enumerate(include) if matches(item, variable, layer)]
            used.update(("include", i) for i in hits)
            if not hits:
                continue
        if exclude is not None:
            hits = [i for i, item in enumerate(exclude) if matches(item, variable, layer)]
            used.update(("exclude", i) for i in hits)
            if hits:
                continue
        chosen.append((layer, variable))
    for kind, items in (("include", include), ("exclude", exclude)):
        for i, item in enumerate(items or ()):
            if (kind, i) not in used:
                label = item.__name__ if isinstance(item, type) else str(item)
                warnings.warn(
                    f"{name_prefix}`{kind}` entry {label!r} matched no targeted variable.",
                    stacklevel=3,
                )
    return chosen


def matching_paths(model, selectors, *, layers: bool = True):
    """Paths of the (declared-)trainable variables of a built ``model`` that ``selectors`` pick.

    ``layers=False`` matches as the optimizers do (variable only: no layer classes, roles by
    name), to check an optimizer rule set on a model.
    """
    _targeting.check_built(model, "selectors.matching_paths")
    parsed = parse("selectors", selectors, layers=layers)
    return [variable.path for layer, variable in _targeting.layer_variables(model)
            if first_match(parsed, variable, layer if layers else None) is not None]
