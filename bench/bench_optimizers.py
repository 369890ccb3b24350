"""Step time of our optimizers vs Keras' own, measured side by side in one process.

Commands (numbers in docs/benchmarks.md)::

    .venv/bin/python bench/bench_optimizers.py                 # both models, ~2-3 min on 2 cores
    .venv/bin/python bench/bench_optimizers.py --only mlp      # one model: resnet20, mlp

Arms, each a full train step (forward, backward, optimizer update) of the same architecture:

* SGD family, baseline ``keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4)`` (Keras 3
  decays every variable, decoupled and multiplied by lr) vs
  ``optimizers.DecoupledWeightDecay(keras.optimizers.SGD(0.1, momentum=0.9), 5e-4, exclude=())``
  (same maths) and ``optimizers.SGDP(0.1, momentum=0.9, weight_decay=5e-4, exclude=())`` (adds
  the radial projection of every rank >= 2 weight).
* Adam family, baseline ``keras.optimizers.AdamW(1e-3, weight_decay=4e-3)`` vs
  ``optimizers.AdamW(1e-3, weight_decay=4e-3, exclude=())`` (DecoupledWeightDecay around
  keras Adam) and ``optimizers.AdamP(1e-3, weight_decay=4e-3, exclude=())``.

``exclude=()`` makes our optimizers decay exactly the variables Keras decays (all of them), so
both sides do the same work apart from what is being measured.

Models: ``zoo.resnet20(norm="batch")`` at batch 128 on random 32x32x3 images (0.27M parameters:
the optimizer is a small part of the step) and ``zoo.mlp(input_shape=(1024,), units=(1024,)*4)``
with BatchNorm at batch 128 (4.2M parameters, cheap matmuls: the optimizer's share is large).
Compiled with ``jit_compile=False`` and timed with ``train_on_batch``; see bench/_timing.py (the
MLP, whose steps are short, counts as a micro benchmark: 2x the rounds of 5x the steps).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _timing  # noqa: E402

MODELS = ("resnet20", "mlp")
TARGET = "<= 1.05"


def sgd_family():
    import keras

    from keras_normreg import optimizers

    return "keras SGD(wd)", {
        "keras SGD(wd)": lambda: keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4),
        "DecoupledWeightDecay(SGD)": lambda: optimizers.DecoupledWeightDecay(
            keras.optimizers.SGD(0.1, momentum=0.9), 5e-4, exclude=()),
        "SGDP": lambda: optimizers.SGDP(0.1, momentum=0.9, weight_decay=5e-4, exclude=()),
    }


def adam_family():
    import keras

    from keras_normreg import optimizers

    return "keras AdamW", {
        "keras AdamW": lambda: keras.optimizers.AdamW(1e-3, weight_decay=4e-3),
        "our AdamW": lambda: optimizers.AdamW(1e-3, weight_decay=4e-3, exclude=()),
        "AdamP": lambda: optimizers.AdamP(1e-3, weight_decay=4e-3, exclude=()),
    }


def _data(name, args, rng):
    """(model builder, x, y, label) of a benchmark model."""
    from keras_normreg import zoo

    if name == "resnet20":
        batch, size = (4, 8) if args.quick else (args.batch, 32)
        kw = {"depth": 8, "width": 4, "input_shape": (size, size, 3)} if args.quick else {}
        x = rng.standard_normal((batch, size, size, 3)).astype("float32")
        label = f"ResNet-20 train step, batch {batch}"

        def build():
            return zoo.resnet20(norm="batch", **kw)
    else:
        batch, width, depth = (4, 8, 2) if args.quick else (args.batch, 1024, 4)
        x = rng.standard_normal((batch, width)).astype("float32")
        label = f"MLP {depth}x{width} + BN train step, batch {batch}"

        def build():
            return zoo.mlp(norm="batch", input_shape=(width,), units=(width,) * depth)
    y = rng.integers(0, 10, batch).astype("int32")
    return build, x, y, label


def run_model(name, args, rng):
    import keras

    build, x, y, label = _data(name, args, rng)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rows = []
    for family in (sgd_family, adam_family):
        baseline, makers = family()
        arms = {}
        for arm, make in makers.items():
            model = build()
            model.compile(optimizer=make(), loss=loss, jit_compile=False)
            arms[arm] = _timing.train_step(model, x, y)
        micro = 1 if name == "resnet20" else 2  # short MLP steps: more rounds of more steps
        rows += _timing.compare(
            label, arms, baseline, rounds=args.rounds * micro,
            steps=args.steps * (5 if micro == 2 else 1), warmup=args.warmup,
            targets={a: TARGET for a in makers if a != baseline})
        keras.backend.clear_session()
    return rows


def main(argv=None):
    p = _timing.base_parser(__doc__.splitlines()[0])
    _timing.add_only(p, MODELS, "models")
    p.add_argument("--batch", type=int, default=128, help="batch size")
    args, models = _timing.parse_args(p, argv, rounds=11, only=(MODELS, "models"))

    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    rows = []
    for name in models:
        rows += run_model(name, args, rng)
    _timing.print_report("Optimizers vs Keras", rows, args, __file__)
    return rows


if __name__ == "__main__":
    main()
