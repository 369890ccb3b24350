"""keras_normreg.invariance: the public face of the scale-invariance analysis.

The analysis itself is tested in tests/test_invariance.py (through the implementation module);
here: the public names import from ``keras_normreg.invariance``, are the implementation's
objects (so the old import path ``keras_normreg._invariance`` keeps working), give the record a
hand-derived model calls for, and no docstring or guide sends a reader to the private module
for them.
"""

import ast
import dataclasses
import re
from pathlib import Path

import keras

from keras_normreg import _invariance

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = ("ScaleInvariance", "explain_scale_invariance", "find_scale_invariant")
L = keras.layers


def test_public_names_import_and_are_the_implementation():
    from keras_normreg import invariance
    from keras_normreg.invariance import ScaleInvariance, find_scale_invariant

    assert sorted(invariance.__all__) == sorted(PUBLIC)
    assert ScaleInvariance is _invariance.ScaleInvariance
    assert find_scale_invariant is _invariance.find_scale_invariant
    assert invariance.explain_scale_invariance is _invariance.explain_scale_invariance
    assert [f.name for f in dataclasses.fields(ScaleInvariance)] == [
        "path", "invariant", "reason", "normalizers", "via", "granularity"]


def test_public_find_scale_invariant_record():
    """conv (no bias) -> ReLU -> BN -> pooling -> dense head. By the rules in the module
    docstring: the conv kernel reaches BN through ReLU (degree 1), and BN normalizes each of
    its channels, so it is invariant per output unit; BN's gamma and the head's kernel scale
    the logits (not invariant)."""
    from keras_normreg.invariance import (
        ScaleInvariance,
        explain_scale_invariance,
        find_scale_invariant,
    )

    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(3, 3, use_bias=False, name="conv")(inp)
    x = L.ReLU(name="act")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inp, L.Dense(2, name="head")(x))

    assert find_scale_invariant(model) == {"conv/kernel": ScaleInvariance(
        "conv/kernel", True, "conv/kernel -> bn (via act)", ("bn",), (("act",),), "unit")}
    explained = explain_scale_invariance(model)
    assert sorted(explained) == ["bn/gamma", "conv/kernel", "head/kernel"]
    for path in ("bn/gamma", "head/kernel"):
        assert not explained[path].invariant and explained[path].normalizers == ()
        assert explained[path].granularity is None


# the contract's names reached through the private module, in text meant for readers
_PRIVATE_NAME = re.compile(r"_invariance\.(?:" + "|".join(PUBLIC) + r")\b")
# the private module given as the place to read about the analysis (private modules may name
# it as their user: that is the implementation talking about itself)
_PRIVATE_MODULE = re.compile(r":mod:`keras_normreg\._invariance`")


def _docstrings(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield getattr(node, "name", "<module>"), doc


def _is_public(path: Path) -> bool:
    parts = path.relative_to(ROOT).parts
    return not any(p.startswith("_") for p in parts if p != "__init__.py")


def test_docstrings_cite_the_public_module():
    found = [f"{path.relative_to(ROOT)}:{name}"
             for path in sorted((ROOT / "keras_normreg").rglob("*.py"))
             for name, doc in _docstrings(path)
             if _PRIVATE_NAME.search(doc) or (_is_public(path) and _PRIVATE_MODULE.search(doc))]
    assert found == []


def test_docs_cite_the_public_module():
    pages = [ROOT / "README.md", ROOT / "docs" / "architecture.md",
             *sorted((ROOT / "docs" / "guide").glob("*.md"))]
    found = [str(p.relative_to(ROOT)) for p in pages
             if _PRIVATE_NAME.search(p.read_text(encoding="utf-8"))]
    assert found == []
