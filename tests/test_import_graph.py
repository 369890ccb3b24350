"""The package's imports go one way down: every module has its level (docs/architecture.md's
table, :data:`LEVELS` here) and imports only modules of its level or below; no cycle between
keras_normreg modules.

The graph is read from the source with ``ast`` (nothing is imported). Every import of a
keras_normreg module counts, at module level and inside functions alike: an import moved into a
function to dodge a cycle still closes the cycle here. Imports under ``if TYPE_CHECKING:`` are
ignored (they never run).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

PACKAGE = "keras_normreg"
ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules(root: Path, package: str) -> dict[str, Path]:
    return {_module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(tree: ast.AST):
    """Every import node, skipping ``if TYPE_CHECKING:`` bodies; yields (node, in_function)."""
    stack = [(tree, False)]
    while stack:
        node, in_function = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend((c, in_function) for c in child.orelse)
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                      ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            stack.append((child, inner))


def import_edges(root: Path, package: str) -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` for imports of ``package`` modules."""
    modules = _modules(root, package)
    edges: dict[str, dict[str, int]] = {name: {} for name in modules}

    def resolve(name: str) -> str | None:
        # the longest prefix that is one of our modules
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            candidate = ".".join(parts[:i])
            if candidate in modules:
                return candidate
        return None

    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, _ in _walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import sub` imports the submodule when there is one
                targets = [f"{base}.{alias.name}" for alias in node.names] or [base]
            for target in targets:
                if not (target == package or target.startswith(package + ".")):
                    continue
                resolved = resolve(target)
                if resolved is not None and resolved != name:
                    edges[name].setdefault(resolved, node.lineno)
    return edges


def find_cycle(edges: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(edges):
        if state.get(start):
            continue
        path = [start]
        iters = [iter(sorted(edges[start]))]
        state[start] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(edges.get(nxt, {}))))
    return None


def _describe(cycle, edges):
    return " -> ".join(
        f"{a} (line {edges[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)
    ) + f" -> {cycle[-1]}"


def test_no_import_cycle_in_the_package():
    edges = import_edges(ROOT, PACKAGE)
    assert len(edges) > 40, sorted(edges)  # the walk found the package
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + _describe(cycle, edges)


def test_blocks_do_not_import_the_layers_above_them():
    """The blocks (layers, constraints, regularizers, optimizers, zoo, diagnostics) never import
    training, saving, tuning, the CLI or the data pipelines."""
    edges = import_edges(ROOT, PACKAGE)
    blocks = ("layers", "constraints", "regularizers", "optimizers", "zoo", "diagnostics")
    above = ("train", "saving", "evaluate", "tuning", "cli", "data", "distribute", "config")
    offenders = []
    for module, targets in edges.items():
        if module.split(".")[1:2] and module.split(".")[1] in blocks:
            for target in targets:
                if target.split(".")[1:2] and target.split(".")[1] in above:
                    offenders.append(f"{module} -> {target} (line {targets[target]})")
    # zoo.pretrained loads saved entries: it may use the saving module, nothing else above
    offenders = [o for o in offenders if not o.startswith(f"{PACKAGE}.zoo.pretrained -> "
                                                          f"{PACKAGE}.saving ")]
    assert not offenders, offenders


#: docs/architecture.md's levels, by module prefix (the longest matching prefix wins). A module
#: no prefix covers fails :func:`test_every_module_has_a_level`, so a new module is placed on
#: purpose. Level 7 (the console script) lives outside the package.
LEVELS = {
    "keras_normreg.cli": 6,
    "keras_normreg.tuning": 5,
    "keras_normreg.train": 4, "keras_normreg.evaluate": 4, "keras_normreg.runstate": 4,
    "keras_normreg.saving": 3, "keras_normreg.config": 3, "keras_normreg.data": 3,
    "keras_normreg.distribute": 3,
    "keras_normreg": 3,  # the package root imports the blocks and data for their registrations
    "keras_normreg.layers": 2, "keras_normreg.constraints": 2, "keras_normreg.regularizers": 2,
    "keras_normreg.optimizers": 2, "keras_normreg.zoo": 2, "keras_normreg.diagnostics": 2,
    "keras_normreg.selectors": 2, "keras_normreg.invariance": 2,
    "keras_normreg._invariance": 1, "keras_normreg._targeting": 1, "keras_normreg._kernels": 1,
    "keras_normreg._replica": 1, "keras_normreg.optimizers._apply": 1,
    "keras_normreg._utils": 0, "keras_normreg._compat": 0, "keras_normreg._backend": 0,
    "keras_normreg._version": 0, "keras_normreg._locks": 0, "keras_normreg._atomic": 0,
    "keras_normreg._registry": 0,
}
#: The upward imports the architecture names (importer -> imported).
UPWARD_ALLOWED = {("keras_normreg.zoo.pretrained", "keras_normreg.saving")}


def level_of(module: str, levels: dict[str, int]) -> int | None:
    """The level of the longest prefix of ``module`` in ``levels`` (None: no level)."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        level = levels.get(".".join(parts[:i]))
        if level is not None:
            return level
    return None


def upward_imports(edges, levels, allowed=frozenset()) -> list[str]:
    """Every import of a module of a higher level than the importer's, as readable lines."""
    out = []
    for module, targets in sorted(edges.items()):
        mine = level_of(module, levels)
        for target, line in sorted(targets.items()):
            theirs = level_of(target, levels)
            if (mine is not None and theirs is not None and theirs > mine
                    and (module, target) not in allowed):
                out.append(f"{module} (level {mine}) imports {target} (level {theirs}) "
                           f"at line {line}")
    return out


def test_every_module_has_a_level():
    missing = [m for m in import_edges(ROOT, PACKAGE) if level_of(m, LEVELS) is None]
    assert not missing, f"modules without a level in LEVELS (and docs/architecture.md): {missing}"


def test_no_module_imports_a_level_above_its_own():
    edges = import_edges(ROOT, PACKAGE)
    offenders = upward_imports(edges, LEVELS, UPWARD_ALLOWED)
    assert not offenders, "upward imports:\n" + "\n".join(offenders)
    # the allowed exception is real (else it should be dropped from the list)
    for module, target in UPWARD_ALLOWED:
        assert target in edges[module], (module, target)


def test_levels_match_the_architecture_page():
    """Every module named in docs/architecture.md's level table sits at the level given here."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d)\. [^|]+\| ([^|]+) \|", text, flags=re.M)
    assert len(rows) >= 7, rows
    checked = 0
    for level, cell in rows:
        for name in re.findall(r"`([A-Za-z_./]+?)(?:\.py|/)?`", cell):
            module = "keras_normreg." + name.replace("/", ".").removesuffix(".py")
            if int(level) == 7 or module.count(".") > 2:
                continue
            if level_of(module, LEVELS) is not None and module in LEVELS:
                assert LEVELS[module] == int(level), (module, level)
                checked += 1
    assert checked >= 25, checked


# -- the checker itself can fail -------------------------------------------------------------
def test_checker_finds_an_injected_upward_import(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/_utils.py": "import os\n",
        "pkg/blocks.py": "from pkg import _utils\n",
        "pkg/train.py": "from pkg import blocks\n",
    })
    levels = {"pkg": 1, "pkg._utils": 0, "pkg.blocks": 1, "pkg.train": 2}
    edges = import_edges(tmp_path, "pkg")
    assert upward_imports(edges, levels) == []
    # inject one: the floor reaches up to training, inside a function (still counted)
    _write(tmp_path, {"pkg/_utils.py": "def f():\n    from pkg.train import g\n    return g\n"})
    edges = import_edges(tmp_path, "pkg")
    assert upward_imports(edges, levels) == [
        "pkg._utils (level 0) imports pkg.train (level 2) at line 2"]
    # an allowed exception is not reported; a module without a level has none
    assert upward_imports(edges, levels, {("pkg._utils", "pkg.train")}) == []
    assert level_of("pkg.other", {"pkg.train": 2}) is None
    assert level_of("pkg.train.deep", levels) == 2
def _write(root: Path, files: dict[str, str]):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def f():\n    from pkg.c import g\n    return g\n",
        "pkg/c.py": "import os\nfrom . import a\n",
    })
    edges = import_edges(tmp_path, "pkg")
    assert edges["pkg.b"] == {"pkg.c": 2}
    assert edges["pkg.c"] == {"pkg.a": 2}  # relative import resolved
    assert find_cycle(edges) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]


def test_checker_ignores_type_checking_and_accepts_a_tree(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg import a\n",
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n",
        "pkg/b.py": "from pkg import a\n",
    })
    edges = import_edges(tmp_path, "pkg")
    assert edges["pkg.a"] == {}
    assert find_cycle(edges) is None


@pytest.mark.parametrize("importer", ["from pkg import __version__\n", "import pkg\n"])
def test_checker_sees_imports_of_the_package_root(tmp_path, importer):
    _write(tmp_path, {"pkg/__init__.py": "from pkg import train\n", "pkg/train.py": importer})
    assert find_cycle(import_edges(tmp_path, "pkg")) == ["pkg", "pkg.train", "pkg"]
