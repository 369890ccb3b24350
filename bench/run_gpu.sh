#!/usr/bin/env bash
# Device recipe of bench/bench_gpu.py: Keras on JAX on a GPU machine that has jax (CUDA), torch
# and numpy but no TensorFlow, no keras and no network. keras and the dependencies such a
# machine may lack travel as wheels for CPython 3.12 (the device's Python), downloaded here first.
#
#   bash bench/run_gpu.sh download      # here, with network: the wheels into .whl/ (untracked;
#                                       # delete it afterwards, never commit it)
#   bash bench/run_gpu.sh run           # on the device, from the repository root: installs the
#                                       # wheels into /tmp/site, runs the benchmark, JSON in $OUT
#   bash bench/run_gpu.sh run --quick --only torch    # extra arguments go to bench_gpu.py
#   bash bench/run_gpu.sh backends --rounds 9 --steps 3   # bench_backends.py on jax, then torch
#
# With the project's device tool: run(command="bash bench/run_gpu.sh run", timeout_s=600);
# .whl/ travels with the working tree as an untracked file (or name it in `carry`).
#
# What `download` runs (one pip call for all packages; pure-python ones are py3-none-any):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl NAME==VERSION ...
# What `run` runs (only the wheels whose module the device cannot import already, so that
# jax's and torch's own numpy/ml_dtypes/packaging/typing_extensions are not shadowed):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/<missing>.whl ...
#   KERAS_BACKEND=jax PYTHONPATH=/tmp/site:. python3 bench/bench_gpu.py --json $OUT/gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
PY=${PYTHON:-python3}
PY_VERSION=${PY_VERSION:-3.12}  # the device's Python (the wheels are built for it)

# keras (pyproject pins keras<3.16) and its requirements (keras: absl-py h5py ml-dtypes namex
# numpy optree packaging rich; rich: markdown-it-py pygments; markdown-it-py: mdurl; optree:
# typing-extensions). numpy and ml-dtypes come with jax and are not downloaded.
PACKAGES=(
  keras==3.15.1 namex==0.1.0 optree==0.20.0
  absl-py==2.5.1 h5py==3.14.0 packaging==26.4 typing-extensions==4.16.0
  rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0
)

# wheel distribution name (as in the file name) -> the module it provides
module_of() {
  case "$1" in
    absl_py) echo absl ;;
    markdown_it_py) echo markdown_it ;;
    *) echo "$1" | tr '[:upper:]' '[:lower:]' ;;
  esac
}

download() {
  mkdir -p "$WHEELS"
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$WHEELS" "${PACKAGES[@]}"
  ls -l "$WHEELS"
}

install() {
  local have
  have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$have" != "$PY_VERSION" ]; then
    echo "run_gpu.sh: the wheels are for Python $PY_VERSION; $PY is $have (download again" \
         "with PY_VERSION=$have)" >&2
    exit 2
  fi
  shopt -s nullglob
  local wheels=("$WHEELS"/*.whl) missing=() whl name module
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "run_gpu.sh: no wheels in $WHEELS; run 'bash bench/run_gpu.sh download' first" >&2
    exit 2
  fi
  for whl in "${wheels[@]}"; do
    name=$(basename "$whl" | cut -d- -f1)
    module=$(module_of "$name")
    if "$PY" -c "import $module" 2>/dev/null; then
      echo "device has $module: not installing $(basename "$whl")"
    else
      missing+=("$whl")
    fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "${missing[@]}"
  fi
  # JAX preallocates 75% of the GPU by default; leave room for the PyTorch arm.
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  fi
}

run() {
  install
  KERAS_BACKEND=jax PYTHONPATH="$SITE:." "$PY" bench/bench_gpu.py \
    --json "${OUT:-/tmp}/gpu.json" "$@"
}

# bench/bench_backends.py (the CPU tables' driver: every block vs its plain Keras twin, the
# plain-PyTorch peers, --memory) on the device's JAX and PyTorch, one process each; runs
# without TensorFlow (checked on a CPU with tensorflow hidden).
backends() {
  install
  local backend
  for backend in jax torch; do
    KERAS_BACKEND=$backend PYTHONPATH="$SITE:." "$PY" bench/bench_backends.py \
      --backend "$backend" --memory --json "${OUT:-/tmp}/backends_$backend.json" "$@"
  done
}

case "${1:-}" in
  download) download ;;
  run) shift; run "$@" ;;
  backends) shift; backends "$@" ;;
  *) echo "usage: bash bench/run_gpu.sh download | run [bench_gpu.py options]" \
          "| backends [bench_backends.py options]" >&2; exit 2 ;;
esac
