"""What the studies' report renderers share: their templates' ``@section`` format.

A report template is Markdown whose ``<!-- @section name -->`` lines start named sections (each
running to the next marker); each section is a :class:`string.Template` filled from a study's
results.
"""

from __future__ import annotations

import os
import re
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
