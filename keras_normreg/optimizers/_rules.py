"""The optimizers' rules: :mod:`keras_normreg.selectors`, matched on variables only.

The optimizers (``DecoupledWeightDecay(exclude=, include=, sphere=)``, ``SGDP`` / ``AdamP``, the
recipe key ``optimizer.exclude``) see variables, not the layers that own them, so their rules are
the selectors of :mod:`keras_normreg.selectors` without layer classes / class names, with roles
read from the variable name. A rule set is a string or a sequence of strings; a variable matches
the set when it matches ANY of its rules (rules add up):

* the roles ``"kernel"``, ``"depthwise_kernel"``, ``"bias"``, ``"gamma"``, ``"beta"``,
  ``"embeddings"``, ``"all"``;
* the keywords ``"normalization"`` (alias ``"norm"``) and ``"1d"``;
* ``"glob:<pattern>"`` (fnmatch on ``variable.path``), ``"regex:<pattern>"`` (searched in it).

Parsed rule sets are tuples of plain strings, the form saved in ``get_config()``; every rule set
saved before the languages were merged (``bias``, ``normalization``, ``1d``, ``glob:``,
``regex:``) parses to the same tuple.
"""

from __future__ import annotations

from keras_normreg import selectors
from keras_normreg._utils import variable_name, variable_path
from keras_normreg.selectors import NORM_PARAM_NAMES, NORM_SCOPED_NAMES, PREFIXES

#: Every bare word a rule may be (the first three are the pre-merge keywords).
KEYWORDS = ("bias", "normalization", "1d") + tuple(
    w for w in selectors.WORDS if w not in ("bias", "normalization", "1d")
)

__all__ = [
    "KEYWORDS",
    "NORM_PARAM_NAMES",
    "NORM_SCOPED_NAMES",
    "PREFIXES",
    "exact_path_rule",
    "first_match",
    "matches",
    "normalize_rules",
    "parse",
    "parse_rules",
    "rule_matches",
    "variable_name",
    "variable_path",
]


def parse_rules(name: str, rules, *, allow_none: bool = False):
    """Validate a rule set and return it as a tuple of canonical rule strings.

    ``None`` gives ``()`` (or ``None`` when ``allow_none``); a single string is one rule.
    """
    return selectors.parse(name, rules, allow_none=allow_none, what="rule", layers=False)


def rule_matches(rule: str, variable) -> bool:
    """Whether one canonical rule matches ``variable``."""
    return selectors.matches(rule, variable)


def first_match(rules, variable):
    """The first rule of ``rules`` matching ``variable`` or ``None``."""
    return selectors.first_match(rules, variable)


def exact_path_rule(path: str) -> str:
    """A glob rule that matches exactly ``path`` (fnmatch metacharacters escaped)."""
    return selectors.exact_path(path)


# Other names for the same functions (the selector module's vocabulary).
parse = normalize_rules = parse_rules
matches = rule_matches
