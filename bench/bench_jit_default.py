"""Training time of a zoo recipe with ``train.jit_compile`` false vs "auto" (the default).

Usage::

    KERAS_BACKEND=jax python bench/bench_jit_default.py   # zoo/mnist1d_cnn1d_batch, 3 epochs
    KERAS_BACKEND=jax python bench/bench_jit_default.py --epochs 5 --recipe zoo/OTHER.toml

Each setting trains in a fresh process (Keras picks its backend at import, and a process's
first compile warms caches the second would reuse); prints one JSON line per setting and the
ratio. ``train_seconds`` is fit's wall time, the compile included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = """
import json, sys, tempfile, time
from keras_normreg import config, train
recipe, epochs, jit = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg = config.load_recipe(recipe, [f"train.epochs={epochs}", "train.verbose=0",
                                  f"train.jit_compile={jit}"])
t = time.perf_counter()
with tempfile.TemporaryDirectory(prefix="bench-jit-") as run_dir:
    r = train.train(cfg, run_dir=run_dir, save=False)
print(json.dumps({"jit_compile": jit, "resolved": r.model.jit_compile,
                  "seconds_total": round(time.perf_counter() - t, 2),
                  "train_seconds": round(r.train_seconds, 2),
                  "test_accuracy": round(float(r.test_accuracy), 4)}))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=os.path.join(ROOT, "zoo", "mnist1d_cnn1d_batch.toml"))
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    rows = []
    for jit in ("false", '"auto"'):
        out = subprocess.run([sys.executable, "-c", CHILD, args.recipe, str(args.epochs), jit],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"train_seconds false / auto: {rows[0]['train_seconds'] / rows[1]['train_seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
