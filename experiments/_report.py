"""What the studies share: their templates' ``@section`` format, reading a stored
``results.json`` back (:func:`load_results`) and the ``--set NAME=VALUE`` options of their
command lines (:func:`parse_sets`).

A report template is Markdown whose ``<!-- @section name -->`` lines start named sections (each
running to the next marker); each section is a :class:`string.Template` filled from a study's
results.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import string

from keras_normreg._utils import received

SECTION = re.compile(r"^<!-- @section (\w+) -->$", re.MULTILINE)


def load_sections(path, required, kind) -> dict[str, string.Template]:
    """``{name: string.Template}``, one per ``<!-- @section name -->`` block of ``path``
    (leading and trailing blank lines dropped); every name in ``required`` must be there,
    else a ValueError naming the ``kind`` of template (e.g. ``"l2-vs-bn"``) and what is
    missing."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    pieces = SECTION.split(text)  # [preamble, name, body, name, body, ...]
    sections = {name: string.Template(body.strip("\n"))
                for name, body in zip(pieces[1::2], pieces[2::2], strict=True)}
    missing = [name for name in required if name not in sections]
    if missing:
        raise ValueError(f"Argument `path` must be an {kind} report template with the sections "
                         f"{list(required)} (`<!-- @section name -->` lines); missing: "
                         f"{missing}. {received('path', os.fspath(path))}")
    return sections


def load_results(out_dir) -> dict:
    """``results.json`` of ``out_dir`` (NaN-safe: Python's json reads the NaN it wrote)."""
    path = os.path.join(os.fspath(out_dir), "results.json")
    if not os.path.isfile(path):
        raise ValueError(f"Argument `out_dir` must hold a results.json written by the study. "
                         f"{received('out_dir', os.fspath(out_dir))}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def parse_sets(parser, items) -> dict:
    """``{name: value}`` of ``--set NAME=VALUE`` options: the value as a Python literal when it
    is one (``3``, ``(1e-3, 3e-3)``, ``False``), else the string; a malformed item is
    ``parser.error`` (one line, exit 2)."""
    extra = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            parser.error(f"--set needs NAME=VALUE. Received: {item!r}")
        try:
            extra[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            extra[name.strip()] = value.strip()
    return extra


def study_command(module, args, default_out, options=()) -> str:
    """The command line that reproduces a study run, for its results.json and report:
    ``python -m <module>`` with ``--quick``, each option of ``options`` (argument names, e.g.
    ``("epochs", "workers")``) that was given, ``--out`` when not ``default_out``, and the
    ``--set`` items, shell-quoted."""
    parts = [f"python -m {module}"]
    if args.quick:
        parts.append("--quick")
    for name in options:
        value = getattr(args, name)
        if value is not None:
            parts.append(f"--{name.replace('_', '-')} {value}")
    if args.out != default_out:
        parts.append(f"--out {args.out}")
    parts += [f"--set {shlex.quote(item)}" for item in args.set]
    return " ".join(parts)
