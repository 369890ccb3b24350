"""Step time of the normalization layers vs plain Keras, measured side by side in one process.

Commands (numbers in docs/benchmarks.md)::

    .venv/bin/python bench/bench_layers.py                 # everything, ~2-3 min on 2 cores
    .venv/bin/python bench/bench_layers.py --only bn       # one group: bn, bn_micro, wn, wn_micro

Groups (each interleaved on its own; the baseline is plain Keras):

* ``bn``: a full train step (forward, backward, SGD momentum 0.9) of ``zoo.resnet20`` with
  ``norm="batch"`` (keras.layers.BatchNormalization, baseline) vs ``"l1_batch"``
  (L1BatchNormalization) vs ``"topk_batch"`` (TopKBatchNormalization, k=10); batch 128 of random
  32x32x3 images, 10 classes.
* ``bn_micro``: the layer alone: a model ``Input(32, 32, 16) -> norm`` trained on an MSE loss,
  batch 128 (the shape of ResNet-20's first stage), same three layers.
* ``wn``: ``zoo.resnet20`` with ``norm="none"`` (plain Conv2D/Dense with bias, baseline) vs
  ``norm="weight"`` (every conv wrapped in WeightNormalization; the head stays plain).
* ``wn_micro``: ``Dense(1024)`` on 1024 features (batch 256 and 1024) and ``Conv2D(32, 3)`` on 16x16x32
  maps (batch 128), each plain vs wrapped in WeightNormalization.

All models are compiled with ``model.compile(..., jit_compile=False)`` (what ``"auto"`` resolves
to for these models on the TensorFlow backend) and timed with ``train_on_batch``;
see bench/_timing.py for the interleaving and the ratio statistics.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _timing  # noqa: E402

GROUPS = ("bn", "bn_micro", "wn", "wn_micro")
TARGET = "<= 1.05"


def _sparse_ce():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _compile(model, loss, optimizer=None):
    import keras

    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.01, momentum=0.9), loss=loss,
                  jit_compile=False)
    return model


def _images(rng, batch, size, channels=3, classes=10):
    x = rng.standard_normal((batch, size, size, channels)).astype("float32")
    y = rng.integers(0, classes, batch).astype("int32")
    return x, y


def group_bn(args, rng):
    from keras_normreg import zoo

    quick = args.quick
    batch, size = (4, 8) if quick else (args.batch, 32)
    kw = {"depth": 8, "width": 4, "input_shape": (size, size, 3)} if quick else {}
    x, y = _images(rng, batch, size)
    arms = {}
    for label, norm in (("keras BN", "batch"), ("L1 BN", "l1_batch"), ("TopK BN", "topk_batch")):
        model = _compile(zoo.resnet20(norm=norm, **kw), _sparse_ce())
        arms[label] = _timing.train_step(model, x, y)
    return _timing.compare(
        f"ResNet-20 train step, batch {batch}", arms, "keras BN", rounds=args.rounds,
        steps=args.steps, warmup=args.warmup, targets={"L1 BN": TARGET, "TopK BN": TARGET})


def _single_layer_model(layer, shape):
    import keras

    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs))


def group_bn_micro(args, rng):
    import keras

    from keras_normreg import layers

    quick = args.quick
    batch, size, channels = (4, 4, 4) if quick else (args.batch, 32, 16)
    x = rng.standard_normal((batch, size, size, channels)).astype("float32")
    y = rng.standard_normal((batch, size, size, channels)).astype("float32")
    makers = {
        "keras BN": keras.layers.BatchNormalization,
        "L1 BN": layers.L1BatchNormalization,
        "TopK BN": layers.TopKBatchNormalization,
    }
    arms = {}
    for label, cls in makers.items():
        model = _compile(_single_layer_model(cls(), (size, size, channels)), "mse")
        arms[label] = _timing.train_step(model, x, y)
    return _timing.compare(
        f"norm layer alone, {batch}x{size}x{size}x{channels}", arms, "keras BN",
        rounds=args.rounds * 2, steps=args.steps * 5, warmup=args.warmup,
        targets={"L1 BN": TARGET, "TopK BN": TARGET})


def group_wn(args, rng):
    from keras_normreg import zoo

    quick = args.quick
    batch, size = (4, 8) if quick else (args.batch, 32)
    kw = {"depth": 8, "width": 4, "input_shape": (size, size, 3)} if quick else {}
    x, y = _images(rng, batch, size)
    arms = {
        "plain Conv": _timing.train_step(
            _compile(zoo.resnet20(norm="none", **kw), _sparse_ce()), x, y),
        "WeightNorm Conv": _timing.train_step(
            _compile(zoo.resnet20(norm="weight", **kw), _sparse_ce()), x, y),
    }
    return _timing.compare(
        f"ResNet-20 train step (no BN), batch {batch}", arms, "plain Conv", rounds=args.rounds,
        steps=args.steps, warmup=args.warmup, targets={"WeightNorm Conv": TARGET})


def group_wn_micro(args, rng):
    import keras

    from keras_normreg import layers

    quick = args.quick
    rows = []
    # The per-step cost of weight norm is O(kernel) and the matmul's O(batch x kernel): the
    # ratio falls with the batch, so Dense is measured at two batch sizes.
    d = 8 if quick else 1024
    for bd in (4,) if quick else (256, 1024):
        xd = rng.standard_normal((bd, d)).astype("float32")
        yd = rng.standard_normal((bd, d)).astype("float32")
        arms = {
            "plain Dense": _timing.train_step(
                _compile(_single_layer_model(keras.layers.Dense(d), (d,)), "mse"), xd, yd),
            "WeightNorm Dense": _timing.train_step(
                _compile(_single_layer_model(layers.WeightNormalization(keras.layers.Dense(d)),
                                             (d,)), "mse"), xd, yd),
        }
        rows += _timing.compare(
            f"Dense({d}) alone, batch {bd}", arms, "plain Dense", rounds=args.rounds * 2,
            steps=args.steps * 5, warmup=args.warmup, targets={"WeightNorm Dense": TARGET})
    c, s, bc = (4, 4, 4) if quick else (32, 16, args.batch)
    xc = rng.standard_normal((bc, s, s, c)).astype("float32")
    yc = rng.standard_normal((bc, s, s, c)).astype("float32")

    def conv():
        return keras.layers.Conv2D(c, 3, padding="same")

    arms = {
        "plain Conv2D": _timing.train_step(
            _compile(_single_layer_model(conv(), (s, s, c)), "mse"), xc, yc),
        "WeightNorm Conv2D": _timing.train_step(
            _compile(_single_layer_model(layers.WeightNormalization(conv()), (s, s, c)), "mse"),
            xc, yc),
    }
    rows += _timing.compare(
        f"Conv2D({c}, 3) alone, {bc}x{s}x{s}x{c}", arms, "plain Conv2D",
        rounds=args.rounds * 2, steps=args.steps * 5, warmup=args.warmup, targets={"WeightNorm Conv2D": TARGET})
    return rows


def main(argv=None):
    p = _timing.base_parser(__doc__.splitlines()[0])
    _timing.add_only(p, GROUPS, "groups")
    p.add_argument("--batch", type=int, default=128, help="batch size of the image groups")
    args, groups = _timing.parse_args(p, argv, rounds=15, only=(GROUPS, "groups"))

    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    fns = {"bn": group_bn, "bn_micro": group_bn_micro, "wn": group_wn,
           "wn_micro": group_wn_micro}
    rows = []
    for g in groups:
        rows += fns[g](args, rng)
        keras.backend.clear_session()
    _timing.print_report("Normalization layers vs Keras", rows, args, __file__)
    return rows


if __name__ == "__main__":
    main()
