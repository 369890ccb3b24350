"""tensorflow-datasets split strings, resolved in plain Python (no TensorFlow).

The grammar and the arithmetic are tfds' own (``tensorflow_datasets.core.splits``, 4.9):

- ``"a+b"`` joins parts (spaces around ``+`` allowed); ``"all"`` is every split in turn;
- a part is ``name`` or ``name[from:to]``, each bound an int (``train[10:-5]``) or a percent
  (``train[:90%]``; one ``%`` makes both bounds percents; bounds in [-100, 100]);
- a percent bound ``p`` becomes ``int(round(p * n / 100.0))`` examples of a split of ``n``
  (tfds' default ``"closest"`` rounding: Python's ``round``, halves to even), so ``train[:90%]``
  and ``train[90%:]`` of 1437 examples cut at 1293;
- an absolute bound must satisfy ``|bound| <= n``; negative bounds count from the end; the
  resulting ``[from:to]`` is then a Python slice, which must not be empty (tfds raises
  "corresponds to no data" for ``train[10:10]`` and fails to read ``train[50:10]``).

Shard slices (``train[2shard]``) and sliced ``all`` are not supported (they mean nothing for
in-memory arrays; tfds rejects the latter too).
"""

from __future__ import annotations

import re

from keras_normreg._utils import received

# tfds' own patterns (tensorflow_datasets/core/splits.py)
_SUB_SPEC_RE = re.compile(
    r"""^
    (?P<split_name>[\w-]+)
    (\[
      (?P<split_selector>[\d\w%:.-]+)
    \])?
    $""",
    re.X,
)
_SLICE_RE = re.compile(
    r"""^
    (
        (?P<val>-?[\d_.]+)
        (?P<unit>(?:%|shard))?
    )?
    $""",
    re.X,
)
_ADDITION_SEP_RE = re.compile(r"\s*\+\s*")


def split_bases(split, spec) -> list[str]:
    """Validate ``split`` ("train", "train[:90%]", "train+extra", ...) and return its bases.

    ``spec``: anything with a ``splits`` mapping (a registry spec). Only the split names are
    checked here; tfds checks the slices when it reads.
    """
    valid = sorted(spec.splits) + ["all"]
    if not isinstance(split, str) or not split.strip():
        raise ValueError(
            f"Argument `split` must be a string naming one of {valid}, optionally sliced "
            f"like 'train[:90%]' or joined like 'train+test'. {received('split', split)}"
        )
    bases = [part.split("[", 1)[0].strip() for part in split.split("+")]
    for base in bases:
        if base not in valid:
            raise ValueError(
                f"Unknown split {base!r}. Argument `split` must use one of {valid}, optionally "
                f"sliced like 'train[:90%]' or joined like 'train+test'. "
                f"{received('split', split)}"
            )
    return bases


def _bad(split, why: str) -> ValueError:
    return ValueError(
        f"Argument `split` is not a valid split string: {why}. Use a split name, a slice like "
        f"'train[:90%]', 'train[90%:]' or 'train[10:-10]', or a join like 'train+test'. "
        f"{received('split', split)}"
    )


def percent_to_index(percent: float, num_examples: int) -> int:
    """tfds' "closest" rounding of a percent boundary: ``int(round(p * n / 100.0))``."""
    return int(round(percent * num_examples / 100.0))


def _bounds(split, part: str, selector: str | None, num_examples: int) -> tuple[int, int]:
    if selector is None:
        return 0, num_examples
    slices = [_SLICE_RE.match(s) for s in selector.split(":")]
    if not all(slices) or not any(m.group(0) for m in slices):
        raise _bad(split, f"unrecognized slice in {part!r}")
    if len(slices) != 2:
        raise _bad(split, f"{part!r} is not a [from:to] slice (shard selection is not supported)")
    from_match, to_match = slices
    unit = from_match["unit"] or to_match["unit"] or "abs"
    if unit == "shard":
        raise _bad(split, f"shard slices such as {part!r} are not supported")
    convert = float if unit == "%" else int
    try:
        bounds = [None if m["val"] is None else convert(m["val"]) for m in slices]
    except ValueError:
        raise _bad(split, f"bad number in {part!r}") from None
    if unit == "%":
        if any(b is not None and abs(b) > 100 for b in bounds):
            raise _bad(split, f"percent bounds must lie in [-100, 100] in {part!r}")
        bounds = [None if b is None else percent_to_index(b, num_examples) for b in bounds]
    start = 0 if bounds[0] is None else bounds[0]
    stop = num_examples if bounds[1] is None else bounds[1]
    if abs(start) > num_examples or abs(stop) > num_examples:
        raise _bad(split, f"slice {part!r} does not fit a split of {num_examples} examples")
    start = num_examples + start if start < 0 else start
    stop = num_examples + stop if stop < 0 else stop
    if start >= stop:  # tfds fails on these when it reads
        raise _bad(split, f"slice {part!r} selects no examples of a split of {num_examples} "
                          f"(it resolves to [{start}:{stop}])")
    return start, stop


def resolve(split, sizes: dict[str, int]) -> list[tuple[str, int, int]]:
    """``split`` -> ``[(split name, start, stop), ...]``: read ``[start:stop]`` of each, in turn.

    ``sizes``: ``{split name: number of examples}`` in the dataset's split order (the order
    ``"all"`` follows). Raises ValueError naming ``split`` for anything tfds would reject.
    """
    if not isinstance(split, str) or not split.strip():
        raise _bad(split, "expected a non-empty string")
    parts: list[tuple[str, int, int]] = []
    for part in _ADDITION_SEP_RE.split(split):
        match = _SUB_SPEC_RE.match(part)
        if match is None:
            raise _bad(split, f"unrecognized part {part!r}")
        name, selector = match["split_name"], match["split_selector"]
        if name == "all":
            if selector is not None:
                raise _bad(split, "'all' cannot be sliced")
            parts.extend((s, 0, n) for s, n in sizes.items())
            continue
        if name not in sizes:
            raise ValueError(
                f"Unknown split {name!r}. Argument `split` must use one of "
                f"{sorted(sizes) + ['all']}, optionally sliced like 'train[:90%]' or joined "
                f"like 'train+test'. {received('split', split)}"
            )
        parts.append((name, *_bounds(split, part, selector, sizes[name])))
    return parts
