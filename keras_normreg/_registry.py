"""The one helper behind every table of named choices, and the one rule for their names.

A family that offers choices by name (normalizations, constraints, regularizers, optimizers)
keeps them in one :class:`Registry`: ``register`` adds a name, ``unregister`` removes one added
later (the built-in names stay), ``get`` looks one up and ``names`` lists them in table order.
The config schema, the CLI help and the catalog read the tables, so a name registered at run
time is accepted everywhere at once.

The name rule (:data:`NAME_RULE`), the same for every table: lower-case snake case, a
lower-case letter then lower-case letters, digits or ``_`` (``"l1_batch"``, ``"unit_norm"``,
``"elastic_net"``, ``"sgdw"``). Every built-in name follows it; another spelling accepted
by a family is an *alias* of a name (``"l1_l2"`` for ``"elastic_net"``), looked up like a name
but not listed as a choice.

A table reads like a dict (``name in table``, ``table[name]``, iteration in table order,
``items()``), except that its ``get`` raises for an unknown name; it changes only through
``register`` / ``unregister``. :meth:`Registry.view` gives a derived
read-only table (the entries of which a part is set, e.g. the optimizer names that a recipe
can use), so one table can serve two purposes without a second list of names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping

from keras_normreg._utils import received

__all__ = ["NAME_RULE", "Registry", "check_name", "get_from_table"]

_NAME = re.compile(r"[a-z][a-z0-9_]*")

#: What a name of a table must be (quoted in the error for a bad one).
NAME_RULE = ("an identifier in lower-case snake case (a lower-case letter, then lower-case "
             "letters, digits or _)")

#: The wording of an unknown name: ``family``, ``value``, ``names`` (the valid names),
#: ``hint`` (the reserved name's hint, with a leading space, or "") and ``received``.
UNKNOWN = "Unknown {family} {value!r}; valid names are {names}.{hint} {received}"
#: The same with the value only in ``received`` (the wording of the normalization and the
#: recipe-optimizer lookups, which tests and users match).
UNKNOWN_SHORT = "Unknown {family}. Valid names: {names}.{hint} {received}"


def check_name(name, argument: str = "name") -> str:
    """Return ``name`` if it follows :data:`NAME_RULE`, else raise a ValueError naming
    ``argument``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"Argument `{argument}` must be {NAME_RULE}. {received(argument, name)}")
    return name


def _is_name(value) -> bool:
    return isinstance(value, str)


class _ReadOnlyTable:
    """``keys`` / ``values`` / ``items`` for a table with ``__iter__`` and ``__getitem__``.

    Not a ``collections.abc.Mapping``: a table's ``get`` raises for an unknown name (the error
    lists the valid names) instead of returning a default."""

    def keys(self) -> list[str]:
        return list(self)

    def values(self) -> list:
        return [self[name] for name in self]

    def items(self) -> list[tuple]:
        return [(name, self[name]) for name in self]


class Registry(_ReadOnlyTable):
    """One table of named choices of a ``family`` (``"normalization"``, ``"constraint"`` ...).

    Args:
        family: what the table holds, in the singular (used in every message).
        entries: the built-in ``{name: value}`` (table order); they cannot be unregistered.
        aliases: other spellings of built-in names, ``{alias: name}``.
        reserved: names that are choices of the family but not entries of the table,
            ``{name: hint}`` (``"none"``; the weight-norm wrappers): they cannot be registered,
            and looking one up gives the unknown-name error with its hint (may be ``""``).
        noun: what a name is called in the "already a ..." error (``"name"``, ``"choice"``), or
            ``noun(value)`` for the entry that holds it.
        check: ``check(value)`` raises a ValueError for a value that cannot be registered (the
            built-in entries are not checked).
        message: the wording of an unknown name (:data:`UNKNOWN` or :data:`UNKNOWN_SHORT`).
        sort_names: list the valid names sorted in that message (False: table order).
    """

    def __init__(self, family: str, entries: Mapping | None = None, *,
                 aliases: Mapping[str, str] | None = None,
                 reserved: Mapping[str, str] | None = None,
                 noun: str | Callable = "name", check: Callable | None = None,
                 message: str = UNKNOWN, sort_names: bool = True):
        self.family = family
        self._entries: dict = {}
        self._aliases: dict[str, str] = {}
        self._reserved = {check_name(k, "reserved"): v for k, v in (reserved or {}).items()}
        self._noun = noun
        self._check = check
        self._message = message
        self._sort = sort_names
        for name, value in (entries or {}).items():
            self._add(name, value)
        for alias, name in (aliases or {}).items():
            self._refuse_taken(check_name(alias, "alias"))
            if name not in self._entries:
                raise ValueError(f"An alias must name an entry of the {family} table "
                                 f"({list(self._entries)}). {received('aliases', aliases)}")
            self._aliases[alias] = name
        self._builtin = frozenset(self._entries) | frozenset(self._aliases)

    # -- the read-only mapping ------------------------------------------------------------
    def __getitem__(self, name):
        if _is_name(name):
            name = self._aliases.get(name, name)
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name) -> bool:
        return _is_name(name) and (name in self._entries or name in self._aliases)

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, names={list(self._entries)})"

    # -- reading --------------------------------------------------------------------------
    def names(self) -> tuple[str, ...]:
        """The names, in table order (built-in ones first, then the registered ones); aliases
        and reserved names are not among them."""
        return tuple(self._entries)

    def canonical(self, name):
        """The name an alias stands for (a name stands for itself)."""
        return self._aliases.get(name, name) if _is_name(name) else name

    def get(self, name, argument: str = "name"):
        """The entry of ``name`` (or of the name an alias stands for).

        Raises:
            ValueError: ``name`` is not in the table; the message names ``argument``, the
                value and the valid names.
        """
        if name not in self:
            raise self.unknown(name, argument)
        return self[name]

    def unknown(self, value, argument: str, *, names: Iterable[str] | None = None,
                also: Iterable[str] = ()) -> ValueError:
        """The error for ``value``, not a name of the table: ``names`` (default: the table's)
        are listed after ``also`` (choices of the caller outside the table, e.g. ``"none"``)."""
        names = list(self.names() if names is None else names)
        shown = [*also, *(sorted(names) if self._sort else names)]
        hint = self._reserved.get(value, "") if _is_name(value) else ""
        return ValueError(self._message.format(
            family=self.family, value=value, names=shown, hint=f" {hint}" if hint else "",
            received=received(argument, value)))

    def view(self, select: Callable) -> _View:
        """A derived read-only table: ``select(entry)`` for the entries where it is not None,
        in table order (looking up another name lists the view's names)."""
        return _View(self, select)

    # -- changing -------------------------------------------------------------------------
    def register(self, name: str, value):
        """Add ``name`` (:data:`NAME_RULE`, not a name, alias or reserved name already) with
        ``value`` (checked by the table's ``check``); returns ``value``."""
        check_name(name)
        self._refuse_taken(name)
        if self._check is not None:
            self._check(value)
        self._entries[name] = value
        return value

    def unregister(self, name: str) -> None:
        """Remove a name added by :meth:`register` (built-in ones stay)."""
        family = self.family.capitalize()
        if _is_name(name) and name in self._builtin:
            raise ValueError(f"{family} {name!r} is built in and cannot be unregistered. "
                             f"{received('name', name)}")
        if not _is_name(name) or name not in self._entries:
            registered = sorted(set(self._entries) - self._builtin)
            raise ValueError(f"{family} {name!r} is not registered. Registered names: "
                             f"{registered}. {received('name', name)}")
        del self._entries[name]

    def _add(self, name, value):
        check_name(name)
        self._refuse_taken(name)
        self._entries[name] = value

    def _refuse_taken(self, name: str) -> None:
        if name in self._entries or name in self._aliases or name in self._reserved:
            entry = self._entries.get(self._aliases.get(name, name))
            noun = self._noun(entry) if callable(self._noun) else self._noun
            taken = [*self._entries, *self._aliases, *self._reserved]
            raise ValueError(f"{self.family.capitalize()} {name!r} is already a {noun} "
                             f"({taken}). {received('name', name)}")


class _View(_ReadOnlyTable):
    """Read-only ``{name: select(entry)}`` over the entries of a :class:`Registry` where
    ``select`` gives something (see :meth:`Registry.view`)."""

    def __init__(self, registry: Registry, select: Callable):
        self._registry = registry
        self._select = select

    def __getitem__(self, name):
        value = self._select(self._registry[name])
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return (n for n, e in self._registry.items() if self._select(e) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, name) -> bool:
        return name in self._registry and self._select(self._registry[name]) is not None

    def __repr__(self) -> str:
        return f"view of {self._registry!r}: {list(self)}"

    def names(self) -> tuple[str, ...]:
        """The names of the view, in table order."""
        return tuple(self)

    def get(self, name, argument: str = "name"):
        """``select`` of the entry of ``name``; ValueError listing the view's names when the
        view has no such name."""
        if name not in self:
            raise self._registry.unknown(name, argument, names=self.names())
        return self[name]


def get_from_table(table: Registry, identifier, base: type, keras_get):
    """Resolve ``identifier`` for a family with a string table (``constraints.get``, ...).

    * None -> None;
    * a name of ``table`` or a ``base`` subclass -> a default instance;
    * a serialized dict ``{"class_name": ..., "config": {...}}`` (``class_name`` may also be a
      table name) -> the deserialized object (``keras_get`` for Keras' own names);
    * an instance (any callable) -> itself.
    Anything else is a ValueError that lists the valid names and ends with "Received: ...".
    """
    family = table.family
    valid = sorted(table.names())
    if identifier is None:
        return None
    if isinstance(identifier, str):
        return table.get(identifier, "identifier")()
    if isinstance(identifier, type):
        if issubclass(identifier, base):
            return identifier()
        raise ValueError(f"A {family} class must subclass keras.{family}s.{base.__name__}. "
                         + received("identifier", identifier))
    if isinstance(identifier, dict):
        name = identifier.get("class_name")
        if name is None:
            raise ValueError(f"A {family} config dict needs a 'class_name' (and optionally "
                             f"'config'); valid names are {valid}. "
                             + received("identifier", identifier))
        if name in table:
            return table[name].from_config(dict(identifier.get("config") or {}))
        try:
            return keras_get(identifier)
        except (ValueError, TypeError) as err:
            raise ValueError(f"Could not deserialize {family} {name!r} ({err}); valid names are "
                             f"{valid}. " + received("identifier", identifier)) from None
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret a {family}: expected None, a name, a class, an "
                     f"instance or a config dict; valid names are {valid}. "
                     + received("identifier", identifier))
