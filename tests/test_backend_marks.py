"""Which tests `make test` runs again on JAX and PyTorch: the rule of tests/backend_marks.py
(``runs_on_every_backend``), on file paths that need not exist (a test file added tomorrow)."""

import pytest

from tests.backend_marks import BLOCK_FOLDERS, TESTS, runs_on_every_backend

# The block folders, written out (tests/layers ... tests/data hold the backend-agnostic blocks'
# tests); BLOCK_FOLDERS must name exactly these and each must exist.
BLOCKS = {"layers", "optimizers", "zoo", "diagnostics", "data"}


def test_block_folders_are_the_blocks_and_exist():
    assert set(BLOCK_FOLDERS) == BLOCKS
    assert all((TESTS / name).is_dir() for name in BLOCKS)


@pytest.mark.parametrize("folder", sorted(BLOCKS))
def test_a_new_file_in_a_block_folder_runs_on_every_backend(folder):
    assert runs_on_every_backend(TESTS / folder / "test_added_tomorrow.py", [])
    assert runs_on_every_backend(TESTS / folder / "sub" / "test_added_tomorrow.py", ["slow"])


@pytest.mark.parametrize("folder", sorted(BLOCKS))
def test_tf_only_keeps_a_block_test_in_the_tensorflow_session(folder):
    assert not runs_on_every_backend(TESTS / folder / "test_x.py", ["tf_only"])
    assert not runs_on_every_backend(TESTS / folder / "test_x.py", ["slow", "tf_only"])


def test_outside_the_block_folders_only_an_opt_in_runs_on_every_backend():
    for path in (TESTS / "test_added_tomorrow.py", TESTS / "tuning" / "test_x.py",
                 TESTS / "faults" / "test_x.py"):
        assert not runs_on_every_backend(path, [])
        assert not runs_on_every_backend(path, ["slow"])
        assert runs_on_every_backend(path, ["backends"])
    # a folder merely named like a block, outside tests/
    assert not runs_on_every_backend(TESTS.parent / "layers" / "test_x.py", [])


def test_backends_and_tf_only_together_is_refused():
    with pytest.raises(ValueError, match=r"both `backends` and `tf_only`.*"
                                         r"Received: markers=\['backends', 'tf_only'\]$"):
        runs_on_every_backend(TESTS / "test_x.py", ["tf_only", "backends"])


def test_the_rule_reached_this_session(request):
    """tests/conftest.py applied the rule to the collected tests: this one (outside the block
    folders, no opt-in) is not marked; tests/layers/test_every_backend.py checks the other side."""
    assert request.node.get_closest_marker("backends") is None
