import atexit
import contextlib
import io
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# tfds' default data directory (~/tensorflow_datasets) is shared by every process of the machine,
# and two processes preparing the same dataset there at once collide (tfds renames its finished
# folder into place). A test run uses a folder of its own instead, made here (before
# tensorflow_datasets is imported: tfds reads the variable then) and removed at exit; the
# pytest-xdist workers and the subprocesses the tests start inherit it, and the embedded sets
# read from the default folder are prepared in it before any test starts (pytest_sessionstart).
# A TFDS_DATA_DIR set by the caller is kept as it is.
_TFDS_DIR = None
if "TFDS_DATA_DIR" not in os.environ:
    _TFDS_DIR = tempfile.mkdtemp(prefix="keras_normreg-tests-tfds-")
    os.environ["TFDS_DATA_DIR"] = _TFDS_DIR
    atexit.register(shutil.rmtree, _TFDS_DIR, ignore_errors=True)
#: The embedded sets prepared in that folder before the TensorFlow session's tests start.
PREPARED = ("digits", "mnist1d", "modular_add")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from tests.backend_marks import runs_on_every_backend  # noqa: E402

tfds.disable_progress_bar()


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same seeds so results do not depend on test order."""
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield


def pytest_sessionstart(session):
    """Prepare ``PREPARED`` in this run's tfds folder, once, before the tests (and before the
    pytest-xdist workers start: their hook runs last), so that no two workers or subprocesses
    prepare the same set at the same time. The JAX and PyTorch sessions read no tfds data from
    the default folder: nothing to prepare there."""
    if _TFDS_DIR is None or keras.backend.backend() != "tensorflow":
        return
    from keras_normreg import data

    data.register_tfds_builders()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for name in PREPARED:  # quietly: tfds reports each step
            tfds.builder(name, data_dir=_TFDS_DIR).download_and_prepare()


@pytest.hookimpl(tryfirst=True)  # before `-m` reads the markers
def pytest_collection_modifyitems(config, items):
    """Mark ``backends`` the tests that `make test` runs again on JAX and PyTorch (the rule is
    tests/backend_marks.runs_on_every_backend). Under pytest-xdist `make test` sends a file's
    tests to one worker (``--dist loadfile``), so an expensive module fixture (models trained in
    subprocesses on every backend, a prepared dataset) is made once, not once per worker."""
    for item in items:
        try:
            every_backend = runs_on_every_backend(item.path, [m.name for m in item.iter_markers()])
        except ValueError as error:
            raise pytest.UsageError(f"{item.nodeid}: {error}") from None
        if every_backend:
            item.add_marker(pytest.mark.backends)
