"""zoo.resnet20 vs a hand-written Keras ResNet-20, with XLA off and on, side by side in one process.

Commands (numbers in docs/benchmarks.md)::

    .venv/bin/python bench/bench_zoo.py                        # ~2-3 min on 2 cores
    .venv/bin/python bench/bench_zoo.py --mixed-precision      # on a GPU: img/s in mixed_float16

Four arms, each a full train step (forward, backward, SGD momentum 0.9) at batch 128 on random
32x32x3 images: ``zoo.resnet20(norm="batch")`` and :func:`hand_resnet20` below (plain
``keras.layers``, written independently of the zoo: option A shortcuts by slicing + zero channel
padding in a Lambda, the same layer sequence and the same parameter count, both printed), each
compiled with ``jit_compile=False`` and ``jit_compile=True`` (XLA). Ratios: zoo / hand-written at
each XLA setting (target <= 1.05), and XLA on / off for each model (informational: < 1 means XLA
is faster). Throughput (img/s) of every arm is printed below the table.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _timing  # noqa: E402

TARGET = "<= 1.05"


def hand_resnet20(input_shape=(32, 32, 3), num_classes=10, depth=20, width=16):
    """CIFAR ResNet (He et al. 2016 sec. 4.2, option A) with nothing but ``keras.layers``."""
    import keras
    from keras import layers, ops

    def conv_bn(x, filters, strides=1):
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                          kernel_initializer="he_normal")(x)
        return layers.BatchNormalization()(x)

    def shortcut_a(x, filters):
        pad = filters - x.shape[-1]
        before = pad // 2

        def subsample_and_pad(t):
            return ops.pad(t[:, ::2, ::2, :], [[0, 0], [0, 0], [0, 0], [before, pad - before]])

        return layers.Lambda(subsample_and_pad)(x)

    n = (depth - 2) // 6
    inputs = keras.Input(input_shape)
    x = layers.ReLU()(conv_bn(inputs, width))
    for stage in range(3):
        filters = width * 2**stage
        for block in range(n):
            strides = 2 if stage > 0 and block == 0 else 1
            y = layers.ReLU()(conv_bn(x, filters, strides))
            y = conv_bn(y, filters)
            s = shortcut_a(x, filters) if strides == 2 else x
            x = layers.ReLU()(layers.Add()([y, s]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x))


def main(argv=None):
    p = _timing.base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128, help="batch size")
    p.add_argument("--mixed-precision", action="store_true",
                   help="build the models under keras.mixed_precision 'mixed_float16'")
    p.add_argument("--no-xla", action="store_true", help="skip the jit_compile=True arms")
    args, _ = _timing.parse_args(p, argv, rounds=15)

    import keras
    import numpy as np

    from keras_normreg import zoo

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if args.quick:
        batch, size, kw = 4, 8, {"depth": 8, "width": 4}
    else:
        batch, size, kw = args.batch, 32, {}
    shape = (size, size, 3)
    x = rng.standard_normal((batch, *shape)).astype("float32")
    y = rng.integers(0, 10, batch).astype("int32")
    policy = keras.mixed_precision.dtype_policy()
    if args.mixed_precision:
        keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        builders = {
            "zoo": lambda: zoo.resnet20(norm="batch", input_shape=shape, **kw),
            "hand-written": lambda: hand_resnet20(shape, **kw),
        }
        arms, counts = {}, {}
        for xla in (False,) if args.no_xla else (False, True):
            for label, build in builders.items():
                model = build()
                counts[label] = _timing.count_params(model)
                model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                              jit_compile=xla)
                arms[f"{label}, XLA {'on' if xla else 'off'}"] = _timing.train_step(model, x, y)
        pairs = [("zoo, XLA off", "hand-written, XLA off")]
        if not args.no_xla:
            pairs += [("zoo, XLA on", "hand-written, XLA on"),
                      ("zoo, XLA on", "zoo, XLA off"),
                      ("hand-written, XLA on", "hand-written, XLA off")]
        times = {}
        rows = _timing.compare(
            f"ResNet-20 train step, batch {batch}", arms, pairs=pairs, rounds=args.rounds,
            steps=args.steps, warmup=args.warmup, times=times,
            targets={"zoo, XLA off vs hand-written, XLA off": TARGET,
                     "zoo, XLA on vs hand-written, XLA on": TARGET})
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    same = counts["zoo"] == counts["hand-written"]
    lines = [
        "",
        f"parameters (total, trainable): zoo {counts['zoo']}, hand-written "
        f"{counts['hand-written']} -> {'same' if same else 'DIFFERENT'}",
        f"dtype policy: {'mixed_float16' if args.mixed_precision else policy.name}",
        "throughput: " + ", ".join(f"{name} {batch / t:.0f} img/s" for name, t in times.items()),
    ]
    _timing.print_report("Zoo ResNet-20 vs hand-written Keras, XLA off/on", rows, args,
                         __file__, extra="\n".join(lines))
    return rows, counts, times


if __name__ == "__main__":
    main()
