# Two commands a fresh machine needs: `make demo` and `make test` (TensorFlow suite, then the
# blocks again on JAX and PyTorch).
# Both create .venv with python3 if missing and install the package with the extras they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# cpu by default; `make test EXTRAS=gpu,dev` on a CUDA machine.
EXTRAS ?= cpu,dev
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# The versions the suite passed with (constraints.txt): a fresh machine installs exactly these.
CONSTRAINTS ?= constraints.txt
# What `make test` prints first: the versions it runs with.
VERSIONS := keras keras-tuner tensorflow tensorflow-cpu tensorflow-datasets jax jaxlib torch numpy
PYTEST_ARGS ?=
# Each session runs on parallel workers (pytest-xdist): 2, the cores of the reference machine.
# `--dist loadfile` keeps the tests of one file on one worker, so a module-scoped fixture is
# made once and no two workers share a module's files. `make test PYTEST_WORKERS=` runs each
# session in one process (PYTEST_ARGS="-n 0" does for the TensorFlow session).
PYTEST_WORKERS ?= -n 2 --dist loadfile
# The blocks' tests run again on the JAX and PyTorch backends: the tests marked `backends`, which
# tests/conftest.py gives to every test of tests/layers, optimizers, zoo, diagnostics and data
# unless marked `tf_only` (a module elsewhere opts in with `pytestmark = pytest.mark.backends`;
# see tests/backend_marks.py). TensorFlow-only tests skip themselves there, and so do the tests
# that start every backend in subprocesses: those run once, from the TensorFlow session.

.PHONY: demo test test-slow lint bench clean install catalog versions constraints

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(BIN)/keras-normreg demo

# keras_normreg/catalog.json: what `keras-normreg list` prints without importing Keras, written
# from the live registries (tests/test_catalog.py says when it is stale)
catalog: $(STAMP)
	$(BIN)/python -m keras_normreg.cli --write-catalog

lint: $(STAMP)
	$(BIN)/ruff check .

# the installed versions of what the results depend on (Python first)
versions: $(STAMP)
	@$(BIN)/python -c "import sys, importlib.metadata as m; d = {x.metadata['Name'].lower().replace('_', '-'): x.version for x in m.distributions()}; print('python', sys.version.split()[0]); [print(n, d[n]) for n in sys.argv[1:] if n in d]" $(VERSIONS)

# constraints.txt from the current .venv (after the suite passed with an upgrade)
constraints: $(STAMP)
	@{ sed -n '/^#/p' $(CONSTRAINTS); $(BIN)/python -m pip freeze --disable-pip-version-check --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > $(CONSTRAINTS).new
	@mv $(CONSTRAINTS).new $(CONSTRAINTS)

test: $(STAMP) versions
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_WORKERS) $(PYTEST_ARGS)
	KERAS_BACKEND=jax $(BIN)/python -m pytest -m "not slow and backends" $(PYTEST_WORKERS)
	KERAS_BACKEND=torch $(BIN)/python -m pytest -m "not slow and backends" $(PYTEST_WORKERS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench_layers.py
	$(BIN)/python bench/bench_optimizers.py
	$(BIN)/python bench/bench_zoo.py
	$(BIN)/python bench/bench_monitor.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
