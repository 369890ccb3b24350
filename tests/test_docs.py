"""The README and the guide pages (docs/guide/*.md) run as written.

Every ```python block of a page runs, in page order, in one fresh Python process per page
(TensorFlow backend, an empty temporary folder as the working directory, the repository on
PYTHONPATH, nothing else set up): a block that needs data gets it itself (``data.arrays``).
A block fenced ```python no-run is not run; those are counted and kept rare. Other blocks
(bash, toml) are not run. The quickstart's training is checked too: the README prints its
losses per epoch and they must fall. Every model a page compiles and fits is then trained a few
steps more (``tests/docs_training.py``, run after the page's blocks): its compiled loss must be
the cross-entropy of its outputs (logits compiled with ``from_logits=True``, probabilities
without) and that cross-entropy must fall; no page may trigger a ``LossMismatchWarning``.
Relative links of the pages must name files that exist.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import docs_training

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]
GUIDE_PAGES = ("data", "layers_constraints_regularizers", "optimizers", "zoo_and_recipes",
               "training_and_saved_models", "tuning", "diagnostics_and_experiments", "backends")
NO_RUN = "no-run"
MAX_NO_RUN = 2  # blocks that cannot run here (real CIFAR on disk, a GPU): keep them rare
MARK = "@@docs-block"
REPORT_MARK = "@@docs-train-report"
#: Run before a page's blocks and after them (tests/docs_training.py)
PROLOGUE = "from tests import docs_training as _docs_training\n_docs_training.install()\n"
EPILOGUE = f"print({REPORT_MARK!r}, flush=True)\n_docs_training.report()\n"


def code_blocks(text: str) -> list[tuple[str, int, str]]:
    """``(info string, first code line number, code)`` for every fenced block of ``text``."""
    blocks, info, start, lines = [], None, 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        if info is None:
            match = re.match(r"^```(.*)$", line)
            if match:
                info, start, lines = match.group(1).strip(), number + 1, []
        elif line.strip() == "```":
            blocks.append((info, start, "\n".join(lines) + "\n"))
            info = None
        else:
            lines.append(line)
    if info is not None:
        raise ValueError(f"unclosed ``` block starting at line {start - 1}")
    return blocks


def python_blocks(text: str) -> tuple[list[tuple[int, str]], list[int]]:
    """``([(line, code) to run], [lines of the no-run blocks])``."""
    run, skipped = [], []
    for info, line, code in code_blocks(text):
        words = info.split()
        if not words or words[0] != "python":
            continue
        if NO_RUN in words[1:]:
            skipped.append(line)
        else:
            run.append((line, code))
    return run, skipped


def page_script(blocks: list[tuple[int, str]]) -> str:
    """One script running the blocks in order, printing a marker before each."""
    parts = []
    for line, code in blocks:
        parts.append(f"print({MARK!r}, {line}, flush=True)\n{code}")
    return "\n".join(parts)


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


RUNNABLE = [p for p in PAGES if python_blocks(p.read_text(encoding="utf-8"))[0]]


def run_page(path: Path, folder: Path) -> subprocess.CompletedProcess:
    blocks, _ = python_blocks(path.read_text(encoding="utf-8"))
    script = folder / "page.py"
    script.write_text(PROLOGUE + page_script(blocks) + "\n" + EPILOGUE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if k not in ("KERAS_BACKEND", "KERAS_NORMREG_SAVED_MODELS", "PYTHONPATH")}
    env.update(KERAS_BACKEND="tensorflow", PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    work = folder / "work"
    work.mkdir()
    return subprocess.run([sys.executable, str(script)], cwd=work, env=env, text=True,
                          capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory):
    """Every runnable page's process, two at a time (most of a page's time is importing
    TensorFlow in a fresh process)."""
    folders = {p: tmp_path_factory.mktemp(p.stem) for p in RUNNABLE}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {p: pool.submit(run_page, p, folders[p]) for p in RUNNABLE}
        return {p: f.result() for p, f in futures.items()}


@pytest.mark.parametrize("path", RUNNABLE, ids=_id)
def test_python_blocks_run_as_written(path, page_runs):
    proc = page_runs[path]
    out = proc.stdout
    if proc.returncode != 0:
        started = re.findall(rf"^{MARK} (\d+)$", out, flags=re.M)
        where = f"the block at line {started[-1]}" if started else "before the first block"
        if re.search(rf"^{REPORT_MARK}$", out, flags=re.M):
            where = "the training of its compiled models after the blocks (docs_training)"
        pytest.fail(f"{_id(path)}: {where} failed (exit {proc.returncode}).\n"
                    f"--- stdout (end)\n{out[-3000:]}\n--- stderr (end)\n{proc.stderr[-4000:]}")
    blocks, _ = python_blocks(path.read_text(encoding="utf-8"))
    # every block started (a marker per block): nothing was cut short by an early exit
    assert len(re.findall(rf"^{MARK} \d+$", out, flags=re.M)) == len(blocks), out[-2000:]
    if path.name == "README.md":
        losses = [ast.literal_eval(m) for m in re.findall(r"^losses: (\[.*\])$", out, re.M)]
        assert len(losses) == 1, "the quickstart prints its losses once: " + out[-2000:]
        (history,) = losses
        assert len(history) >= 3, history
        # it trains: the loss falls over the epochs (4 epochs of SGD on 512 examples take the
        # cross-entropy from ~2.3 to ~1.1; a wrong loss (logits read as probabilities) or a
        # frozen model stays flat or rises)
        assert history[-1] < 0.9 * history[0], history


def _compile_calls(path: Path) -> int:
    blocks, _ = python_blocks(path.read_text(encoding="utf-8"))
    return sum(len(re.findall(r"\.compile\(", code)) for _, code in blocks)


def test_pages_compile_models():
    # the check below is not vacuous: the README and three guide pages compile a model
    assert sum(_compile_calls(p) for p in RUNNABLE) >= 4


@pytest.mark.parametrize("path", RUNNABLE, ids=_id)
def test_compiled_examples_train(path, page_runs):
    proc = page_runs[path]
    if proc.returncode != 0:
        pytest.fail(f"{_id(path)} did not run: see test_python_blocks_run_as_written")
    assert "LossMismatchWarning" not in proc.stderr, proc.stderr[-3000:]
    prefix = docs_training.PREFIX
    records = [json.loads(line[len(prefix):]) for line in proc.stdout.splitlines()
               if line.startswith(prefix)]
    # every compile( of the page is a model that the page then fits and that was trained here
    assert len(records) == _compile_calls(path), (records, proc.stdout[-2000:])
    found = [p for r in records for p in docs_training.problems(r)]
    assert not found, found


def test_the_training_check_catches_logits_read_as_probabilities():
    """docs_training.problems on a model compiled the wrong way, and on the same one right."""
    import keras

    from keras_normreg import data, zoo

    x, y = data.arrays("mnist1d", "train[:64]")
    found = {}
    for loss in ("sparse_categorical_crossentropy",
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True)):
        keras.utils.set_random_seed(1)
        model = zoo.create("cnn1d", widths=(8, 8))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", zoo.LossMismatchWarning)  # the wrong one warns
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
        found[isinstance(loss, str)] = docs_training.problems(docs_training.measure(model, x, y))
    assert found[False] == [], found[False]
    assert any("read as probabilities" in p for p in found[True]), found[True]


def test_no_run_blocks_are_rare():
    skipped = {_id(p): python_blocks(p.read_text(encoding="utf-8"))[1] for p in PAGES}
    total = sum(len(v) for v in skipped.values())
    assert total <= MAX_NO_RUN, f"{total} python blocks are not run: {skipped}"
    # the README's quickstart always runs
    assert not skipped["README.md"], skipped["README.md"]


def test_every_guide_page_exists_and_has_a_link_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in GUIDE_PAGES:
        assert (ROOT / "docs" / "guide" / f"{name}.md").is_file(), name
        assert f"(docs/guide/{name}.md" in readme, name
    assert python_blocks(readme)[0], "the README has a quickstart to run"


@pytest.mark.parametrize("path", [*PAGES, ROOT / "docs" / "architecture.md"], ids=_id)
def test_relative_links_name_files_that_exist(path):
    text = path.read_text(encoding="utf-8")
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        file = target.split("#", 1)[0]
        if not (path.parent / file).exists():
            missing.append(target)
    assert not missing, f"{_id(path)}: links to nothing: {missing}"


def test_block_extraction():
    """The extractor itself: languages, no-run, order and line numbers."""
    text = ("intro\n```python\na = 1\n```\n```bash\nmake test\n```\n"
            "```python no-run\nimport gpu_only\n```\n```python\nb = a + 1\n\nprint(b)\n```\n")
    run, skipped = python_blocks(text)
    assert run == [(3, "a = 1\n"), (12, "b = a + 1\n\nprint(b)\n")]
    assert skipped == [9]
    with pytest.raises(ValueError, match="unclosed"):
        code_blocks("```python\nx = 1\n")
    script = page_script(run)
    namespace = {}
    exec(compile(script, "page", "exec"), namespace)  # the blocks share one namespace, in order
    assert namespace["b"] == 2
