"""A small, explicit rule language that selects model variables (for weight decay, sphere mode).

A *rule set* is a string or a sequence of strings; a variable matches the set when it matches
ANY of its rules (rules add up). Each rule is one of

=====================  ===================================================================
``"bias"``             ``variable.name`` is ``"bias"`` or ends in ``"_bias"``
``"normalization"``    a parameter or statistic of a normalization layer: ``variable.name`` in
                       {gamma, beta, moving_mean, moving_variance, moving_stddev, renorm_mean,
                       renorm_stddev}; or ``variable.name`` in {scale, offset, g} and the owning
                       layer's path segment contains ``"norm"`` (RMSNormalization's ``scale``,
                       WeightNormalization's gain ``g``). ``"norm"`` is accepted as an alias.
``"1d"``               ``len(variable.shape) <= 1`` (biases, gains, scalars)
``"glob:<pattern>"``   ``fnmatch.fnmatchcase(variable.path, pattern)``, e.g. ``"glob:*/conv*/kernel"``
``"regex:<pattern>"``  ``re.search(pattern, variable.path)``
=====================  ===================================================================

Paths are Keras 3 ``variable.path`` values (``"<layer path>/<variable name>"``, e.g.
``"block1/conv2d/kernel"``), so rules keep working after a ``.keras`` save and reload and do not
depend on ``variable.name`` alone (Keras' own ``exclude_from_weight_decay`` matches names only).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from keras_normreg._utils import received, variable_name, variable_path

KEYWORDS = ("bias", "normalization", "1d")
_ALIASES = {"norm": "normalization"}
PREFIXES = ("glob:", "regex:")

NORM_PARAM_NAMES = frozenset(
    {"gamma", "beta", "moving_mean", "moving_variance", "moving_stddev", "renorm_mean",
     "renorm_stddev"}
)
NORM_SCOPED_NAMES = frozenset({"scale", "offset", "g"})

_GRAMMAR = (
    f"a rule is one of the keywords {list(KEYWORDS)} or a pattern 'glob:<fnmatch pattern on "
    "variable.path>' or 'regex:<regular expression searched in variable.path>'"
)


def parse_rules(name: str, rules, *, allow_none: bool = False):
    """Validate a rule set and return it as a tuple of canonical rule strings.

    ``None`` gives ``()`` (or ``None`` when ``allow_none``); a single string is one rule.
    """
    if rules is None:
        return None if allow_none else ()
    original = rules
    if isinstance(rules, str):
        rules = (rules,)
    if not isinstance(rules, Iterable):
        raise ValueError(
            f"Argument `{name}` must be a string or a sequence of rule strings ({_GRAMMAR}). "
            f"{received(name, original)}"
        )
    out = []
    for rule in rules:
        if not isinstance(rule, str):
            raise ValueError(
                f"Every rule of `{name}` must be a string ({_GRAMMAR}); got {rule!r}. "
                f"{received(name, original)}"
            )
        rule = rule.strip()
        rule = _ALIASES.get(rule, rule)
        if rule in KEYWORDS:
            pass
        elif rule.startswith("glob:"):
            if not rule[len("glob:"):]:
                raise ValueError(
                    f"Empty glob pattern in argument `{name}`. {received(name, original)}"
                )
        elif rule.startswith("regex:"):
            try:
                re.compile(rule[len("regex:"):])
            except re.error as err:
                raise ValueError(
                    f"Invalid regular expression {rule!r} in argument `{name}`: {err}. "
                    f"{received(name, original)}"
                ) from None
        else:
            raise ValueError(
                f"Unknown rule {rule!r} in argument `{name}`: {_GRAMMAR}. "
                f"{received(name, original)}"
            )
        if rule not in out:
            out.append(rule)
    return tuple(out)


def _is_normalization(variable) -> bool:
    name = variable_name(variable)
    if name in NORM_PARAM_NAMES:
        return True
    if name in NORM_SCOPED_NAMES:
        parts = variable_path(variable).split("/")
        owner = parts[-2] if len(parts) >= 2 else ""
        return "norm" in owner.lower()
    return False


def rule_matches(rule: str, variable) -> bool:
    """Whether one canonical rule matches ``variable``."""
    if rule == "bias":
        name = variable_name(variable)
        return name == "bias" or name.endswith("_bias")
    if rule == "normalization":
        return _is_normalization(variable)
    if rule == "1d":
        return len(tuple(variable.shape)) <= 1
    if rule.startswith("glob:"):
        return fnmatch.fnmatchcase(variable_path(variable), rule[len("glob:"):])
    if rule.startswith("regex:"):
        return re.search(rule[len("regex:"):], variable_path(variable)) is not None
    raise ValueError(f"Unknown rule {rule!r}. {_GRAMMAR}.")  # unreachable after parse_rules


def first_match(rules, variable):
    """The first rule of ``rules`` matching ``variable`` or ``None``."""
    for rule in rules or ():
        if rule_matches(rule, variable):
            return rule
    return None


def exact_path_rule(path: str) -> str:
    """A glob rule that matches exactly ``path`` (fnmatch metacharacters escaped)."""
    escaped = "".join(f"[{c}]" if c in "*?[" else c for c in path)
    return "glob:" + escaped
