"""Modular arithmetic datasets (Power et al., 2022, "Grokking"), generated with NumPy only.

Four datasets, one per operation, with a prime modulus ``p`` (97 by default):

================ =============== ========================= ===================
dataset          equation        operands                  equations
================ =============== ========================= ===================
``modular_add``  ``a + b = c``   a, b in 0..p-1            p * p (9409)
``modular_sub``  ``a - b = c``   a, b in 0..p-1            p * p (9409)
``modular_mul``  ``a * b = c``   a, b in 0..p-1            p * p (9409)
``modular_div``  ``a / b = c``   a in 0..p-1, b in 1..p-1  p * (p - 1) (9312)
================ =============== ========================= ===================

with ``c = (a op b) mod p``; division multiplies by the modular inverse,
``a / b = a * b**(p - 2) mod p`` (Fermat), so that ``c * b = a (mod p)``.

Examples (what :func:`keras_normreg.data.arrays` returns and the tfds builders of
:mod:`keras_normreg.data.modular_builders` store):

- features ``x``: ``int32`` of shape ``(4,)``, the tokens ``[a, OP, b, EQ]`` of the equation
  ``a op b =``, with the numbers as their own ids and ``OP = op_token(p) = p``,
  ``EQ = eq_token(p) = p + 1``; so ``vocab_size(p) = p + 2`` (99 for p = 97). The one OP token
  is the same id in the four datasets (each dataset holds one operation).
- label: ``int64`` ``c`` in ``0..p-1`` (``num_classes(p) = p``).

No preprocessing (no scaling, no normalization: the tokens are ids for an embedding) and no
augmentation.

Order and splits. Every equation appears exactly once, in one fixed order: the equations listed
``a``-major (``a = 0, b = 0, 1, ...``), then permuted by
``numpy.random.default_rng(SEED).permutation(n)`` with ``SEED = 0`` (the same permutation of
the ``p * p`` pairs for add, sub and mul). The whole permuted list is the dataset's only split,
``"train"``, so a training fraction is a percent slice of it, and two slices cut at the same
percent never share an equation (tfds rounds a percent bound the same way in both):

- 30% training, the rest for validation (the grokking setting) -- recipe keys
  ``data.train_split = "train[:30%]"``, ``data.validation_split = "train[30%:]"`` and
  ``data.test_split = "train[30%:]"`` (there is no ``"test"`` split: the recipes' default
  ``test_split = "test"`` must be replaced); p = 97: 2823 / 6586 equations;
- 50% training: ``"train[:50%]"`` and ``"train[50%:]"`` (p = 97: 4704 / 4705; 4704.5 rounds
  to even, as in tfds);
- any fraction ``f``: ``"train[:f%]"`` and ``"train[f%:]"``; ``"all"`` is ``"train"``.

The order is a function of ``(operation, p, SEED)`` and of NumPy's ``default_rng`` (PCG64)
permutation algorithm, so it is the same on every machine with the same NumPy version (NumPy
keeps ``Generator`` streams stable in practice but does not promise it across versions).

Other moduli: the name variant ``"modular_add/p_113"`` (any prime ``3 <= p <= MAX_P``;
``"modular_add/default"`` is p = 97), as ``"mnist1d/num_samples_<N>"`` selects a larger
MNIST-1D.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np

from keras_normreg._utils import check_number, received

#: The datasets and their operation.
OPERATIONS = {"modular_add": "+", "modular_sub": "-", "modular_mul": "*", "modular_div": "/"}
DATASETS = tuple(sorted(OPERATIONS))
DEFAULT_P = 97
#: Largest modulus accepted: p * p equations must stay a small in-memory set (16.8 M at most).
MAX_P = 4093
#: Seed of the fixed order: ``numpy.random.default_rng(SEED).permutation(num_equations)``.
SEED = 0
#: Tokens per example: ``[a, OP, b, EQ]``.
SEQUENCE_LENGTH = 4
#: The one stored split (every equation, in the fixed order).
SPLIT = "train"
_CONFIG_NAME = re.compile(r"^p_(\d+)$")


def op_token(p: int) -> int:
    """Token id of the operation symbol: ``p`` (the numbers use ids ``0..p-1``)."""
    return int(p)


def eq_token(p: int) -> int:
    """Token id of ``=``: ``p + 1``."""
    return int(p) + 1


def vocab_size(p: int) -> int:
    """Number of token ids: ``p + 2`` (the numbers ``0..p-1``, OP and EQ)."""
    return int(p) + 2


def num_classes(p: int) -> int:
    """Number of labels: ``p`` (the residues ``0..p-1``)."""
    return int(p)


def _smallest_factor(n: int) -> int | None:
    """The smallest factor ``1 < f < n`` of ``n`` (trial division), or None when ``n`` is prime."""
    for f in range(2, math.isqrt(n) + 1):
        if n % f == 0:
            return f
    return None


def prime_problem(p) -> str | None:
    """Why ``p`` is not an accepted modulus (``"p=91 is not prime (91 = 7 x 13)"``), or None
    when it is one (a prime with ``3 <= p <= MAX_P``)."""
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
        return f"p={p!r} is not an integer"
    if not 3 <= p <= MAX_P:
        return f"p={int(p)} is outside [3, {MAX_P}]"
    factor = _smallest_factor(int(p))
    if factor is not None:
        return f"p={int(p)} is not prime ({int(p)} = {factor} x {int(p) // factor})"
    return None


def check_p(p) -> int:
    """Validate a modulus: a prime with ``3 <= p <= MAX_P``; return it as an int."""
    check_number("p", p, integer=True)
    problem = prime_problem(p)
    if problem is not None:
        raise ValueError(f"Argument `p` must be a prime in [3, {MAX_P}]; {problem}. "
                         f"{received('p', p)}")
    return int(p)


def check_name(name) -> str:
    """Validate a modular dataset name (one of :data:`DATASETS`); return it."""
    if name not in DATASETS:
        raise ValueError(f"Argument `name` must be one of {list(DATASETS)}. "
                         f"{received('name', name)}")
    return name


def num_equations(name: str, p: int = DEFAULT_P) -> int:
    """``p * p``, or ``p * (p - 1)`` for ``modular_div`` (no division by 0)."""
    check_name(name)
    p = check_p(p)
    return p * (p - 1) if name == "modular_div" else p * p


def split_sizes(name: str, p: int = DEFAULT_P) -> dict[str, int]:
    """``{"train": num_equations(name, p)}`` (the one stored split)."""
    return {SPLIT: num_equations(name, p)}


def config_name(p: int) -> str:
    """The tfds config name of modulus ``p``: ``"default"`` (97) or ``"p_<p>"``."""
    return "default" if p == DEFAULT_P else f"p_{p}"


def p_from_config_name(config: str) -> int | None:
    """``"default"`` -> 97, ``"p_<N>"`` -> N (not validated); None when the name does not parse."""
    if config == "default":
        return DEFAULT_P
    match = _CONFIG_NAME.match(config)
    return None if match is None else int(match.group(1))


def equations(name: str, p: int = DEFAULT_P) -> tuple[np.ndarray, np.ndarray]:
    """The operands ``(a, b)`` (int64) of every equation, ``a``-major, before the permutation."""
    check_name(name)
    p = check_p(p)
    first_b = 1 if name == "modular_div" else 0
    a, b = np.meshgrid(np.arange(p, dtype=np.int64), np.arange(first_b, p, dtype=np.int64),
                       indexing="ij")
    return a.reshape(-1), b.reshape(-1)


def results(name: str, a, b, p: int = DEFAULT_P) -> np.ndarray:
    """``(a op b) mod p`` for operand arrays ``a``, ``b`` (int64; ``b != 0`` for division)."""
    check_name(name)
    p = check_p(p)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if name == "modular_add":
        return (a + b) % p
    if name == "modular_sub":
        return (a - b) % p  # NumPy's % takes the sign of the divisor: in 0..p-1
    if name == "modular_mul":
        return (a * b) % p  # < p * p <= MAX_P**2, far inside int64
    zero = b.reshape(-1)[b.reshape(-1) % p == 0]
    if zero.size:
        raise ValueError(f"Argument `b` must hold no multiple of p={p} for modular_div (no "
                         f"division by 0). {received('b', int(zero[0]))}")
    inverse = np.array([0] + [pow(v, p - 2, p) for v in range(1, p)], dtype=np.int64)
    return (a * inverse[b % p]) % p


def generate(name: str, p: int = DEFAULT_P) -> tuple[np.ndarray, np.ndarray]:
    """Every equation of dataset ``name`` in the fixed order: ``(x, y)``, ``x`` int32 of shape
    ``(n, 4)`` (``[a, OP, b, EQ]``), ``y`` int64 of shape ``(n,)``. Fresh arrays."""
    a, b = equations(name, p)
    y = results(name, a, b, p)
    order = np.random.default_rng(SEED).permutation(len(a))
    a, b, y = a[order], b[order], y[order]
    x = np.stack([a, np.full_like(a, op_token(p)), b, np.full_like(a, eq_token(p))], axis=1)
    return x.astype(np.int32), y.astype(np.int64)


def stored_splits(name: str, p: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (x, y)}`` as the tfds builders store it (:func:`generate`), cached and
    read-only. ``p``: the modulus (None: 97)."""
    return _stored(check_name(name), check_p(DEFAULT_P if p is None else p))


@functools.lru_cache(maxsize=8)
def _stored(name: str, p: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    x, y = generate(name, p)
    x.flags.writeable = False
    y.flags.writeable = False
    return {SPLIT: (x, y)}
