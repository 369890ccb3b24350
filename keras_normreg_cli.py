"""Entry point of the ``keras-normreg`` console script: a fast, quiet start.

It lives outside the ``keras_normreg`` package on purpose: ``import keras_normreg`` imports
Keras (and, on the TensorFlow backend, TensorFlow: seconds, and a few lines of oneDNN/absl log).

* ``keras-normreg list [models|datasets|all]`` is answered from the static catalog
  ``keras_normreg/catalog.json`` (found with ``importlib.util.find_spec``, which does not run the
  package's ``__init__``): neither keras_normreg, Keras nor TensorFlow is imported. The catalog
  is written from the live registries by ``make catalog``; tests/test_catalog.py fails when it
  is stale.
* Every other command: the environment is set before anything heavy is imported -
  ``TF_CPP_MIN_LOG_LEVEL=3`` (unless ``--verbose``) and ``KERAS_BACKEND`` from ``--backend``
  (so no second interpreter is needed) - then :func:`keras_normreg.cli.main` runs. TensorFlow
  2.21 prints its oneDNN notice and absl's "All log messages before absl::InitializeLog()" line
  whatever TF_CPP_MIN_LOG_LEVEL says (only ``TF_ENABLE_ONEDNN_OPTS=0`` silences them, and that
  changes the numerics); so without ``--verbose`` those known lines are filtered out of what
  the import writes to stderr, and every other line is passed through.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import tempfile

PROG = "keras-normreg"
LIST_CHOICES = ("models", "datasets", "all")
BACKENDS = ("tensorflow", "jax", "torch")

#: Lines TensorFlow writes while it is imported whatever TF_CPP_MIN_LOG_LEVEL says (TF 2.21).
_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    r"STDERR|.*oneDNN custom operations are on\..*)$")


def catalog_path() -> str | None:
    """``catalog.json`` of the importable keras_normreg package, found without importing it."""
    spec = importlib.util.find_spec("keras_normreg")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "catalog.json")
        if os.path.isfile(path):
            return path
    return None


def list_lines(cat: dict, what: str = "all") -> list[str]:
    """The lines of ``keras-normreg list WHAT``: the catalog holds them as
    ``keras_normreg.cli.list_lines`` formats them (``"lines"``, per part)."""
    return [line for part in ("models", "datasets") if what in (part, "all")
            for line in cat["lines"][part]]


def _fast_list(argv: list[str]) -> int | None:
    """Answer ``list [WHAT]`` from the catalog; None when argv is anything else (or the
    catalog is missing), which the full command line then handles."""
    args = [a for a in argv if a != "--verbose"]
    if not args or args[0] != "list" or len(args) > 2:
        return None
    what = args[1] if len(args) == 2 else "all"
    if what not in LIST_CHOICES:
        return None
    path = catalog_path()
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        cat = json.load(f)
    print("\n".join(list_lines(cat, what)))
    return 0


def _option(argv: list[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` / ``--flag=VALUE`` in argv (the last one), else None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1:]
    return value


def prepare_environment(argv: list[str], environ=None) -> dict:
    """Set the variables the heavy imports read (see the module docstring); returns environ."""
    environ = os.environ if environ is None else environ
    if "--verbose" not in argv:
        environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    backend = _option(argv, "--backend")
    if backend in BACKENDS:  # a bad value is left to argparse's error message
        environ["KERAS_BACKEND"] = backend
    return environ


def _import_quietly(name: str):
    """Import ``name`` with TensorFlow's known start-up lines filtered out of stderr (the
    file descriptor: they come from C++); other lines are written back. On an import error
    everything is written back."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded): import as is
        return importlib.import_module(name)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        failed = True
        try:
            module = importlib.import_module(name)
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if failed or not _STARTUP_NOISE.match(line.rstrip("\n"))]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
    return module


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    code = _fast_list(argv)
    if code is not None:
        return code
    prepare_environment(argv)
    if "--verbose" in argv:
        cli = importlib.import_module("keras_normreg.cli")
    else:
        cli = _import_quietly("keras_normreg.cli")
    return cli.main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
