"""zoo GPT (gpt_modular) vs the same GPT in plain Keras, and the nGPT twin vs the zoo pre-LN GPT.

Commands (one backend per process: Keras picks its backend at import; numbers, with the machine's
load, in docs/benchmarks.md, section Transformers)::

    KERAS_BACKEND=jax .venv/bin/python bench/bench_transformer.py         # ~2-4 min on 2 cores
    KERAS_BACKEND=tensorflow .venv/bin/python bench/bench_transformer.py  # auto and XLA: ~4-6 min
    KERAS_BACKEND=jax .venv/bin/python bench/bench_transformer.py --quick # smoke run, tiny shapes

Arms, each a full ``train_on_batch`` step (forward, backward, ``keras.optimizers.AdamW(1e-3)``,
sparse cross-entropy on logits) at batch 512 of random modular-arithmetic prompts ``[a, OP, b,
EQ]`` (``a, b`` in ``[0, 97)``, ``OP = 97``, ``EQ = 98``) with random labels in ``[0, 97)``:

* ``zoo GPT``: ``zoo.create("gpt_modular")`` at its preset size (pre-LN, decoder-only, causal,
  vocab 99, 97 classes, width 128, 1 block, 4 heads, MLP 512 GELU units, no biases but the
  LayerNorms' and the classifier's, logits of the last position);
* ``plain Keras GPT``: :func:`hand_gpt`, the same network written with nothing but
  ``keras.layers`` (``Embedding`` for tokens and for positions as in the keras.io examples,
  ``MultiHeadAttention(use_causal_mask=True, use_bias=False)``, ``LayerNormalization``,
  ``Dense`` MLP with GELU): the same widths and the same parameter count (checked: the script
  stops if they differ, and prints both);
* ``zoo nGPT``: ``zoo.create("gpt_modular", ngpt=True)``, the normalized transformer twin
  (UnitNorm constraints applied after every step, SwiGLU MLP, unit-norm hidden states).

Ratios: zoo GPT / plain Keras GPT (target <= 1.05) and zoo nGPT / zoo GPT (target <= 1.25), for
each XLA setting: ``auto`` is ``model.compile(jit_compile="auto")``, what a user gets
(TensorFlow on a CPU: XLA off; JAX: always XLA); on TensorFlow also ``xla``
(``jit_compile=True``); on JAX ``xla`` is the same program as ``auto`` and is not repeated.
Timing: bench/_timing.py (rotating arm order within every round, per-round ratios, median
[IQR] over rounds, wall and process-CPU time).

``--policy mixed_bfloat16`` builds every arm under that Keras dtype policy (float32 by default).
``--cost`` (JAX) prints XLA's cost analysis of every arm's compiled train step (flops, bytes
accessed, fusions): the load-independent side of the comparison on a shared machine.

``--experiments`` adds zoo-GPT arms built with a local replacement of the zoo's attention layer
(the zoo's files are not changed; see :data:`EXPERIMENTS`), each compared with the zoo GPT:
what a change in ``keras_normreg/zoo/_attention.py`` would buy; and the nGPT with its SwiGLU MLP
at ``mlp_ratio * 2/3`` (the parameters and flops of the pre-LN GELU MLP) vs the zoo GPT.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time

#: --quick: XLA without LLVM's expensive passes (less compile time; --quick measures nothing).
#: Set only when run as a script, before JAX / TensorFlow start (as bench_gpu.py does).
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

if __name__ == "__main__" and "--quick" in sys.argv[1:]:
    os.environ.setdefault("XLA_FLAGS", QUICK_XLA_FLAGS)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _timing  # noqa: E402

#: The gpt_modular preset (keras_normreg/zoo/transformer.py) and the prompt layout.
PRIME = 97
VOCAB = PRIME + 2  # a, b in [0, p), OP = p, EQ = p + 1
TOKENS = 4
PRESET = {"width": 128, "depth": 1, "heads": 4, "mlp_ratio": 4}
QUICK = {"width": 16, "depth": 1, "heads": 2, "mlp_ratio": 4}
EPSILON = 1e-6  # the zoo's LayerNormalization epsilon (transformer.EPSILON)
TARGET_ZOO = "<= 1.05"
TARGET_NGPT = "<= 1.25"
ZOO, PLAIN, NGPT = "zoo GPT", "plain Keras GPT", "zoo nGPT"
#: --experiments: nGPT with its SwiGLU at 2/3 of the hidden units (3 matrices of d x 2/3 h: the
#: parameters and flops of the GELU MLP's 2 matrices of d x h, as LLaMA sizes SwiGLU).
NGPT_MATCHED = "zoo nGPT, SwiGLU hidden x2/3"


# ---------------------------------------------------------------------- plain Keras GPT
def hand_gpt(vocab_size=VOCAB, tokens=TOKENS, num_classes=PRIME, width=128, depth=1, heads=4,
             mlp_ratio=4):
    """Pre-LN decoder-only GPT with nothing but ``keras.layers`` (written without the zoo).

    ``h = E[tokens] + P[0..T)``; per block ``h += MHA(LN(h))`` (causal, no biases) and
    ``h += W2 gelu(W1 LN(h))`` (no biases); ``LN`` at the end, the last position, a Dense
    classifier with bias. LayerNorm epsilon 1e-6, embeddings N(0, 0.02) as the zoo's.
    """
    import keras
    from keras import layers, ops

    init = keras.initializers.RandomNormal(stddev=0.02)

    class TokenAndPositionEmbedding(layers.Layer):
        """Token embedding plus learned positions (the keras.io text-transformer example)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.token_emb = layers.Embedding(vocab_size, width, embeddings_initializer=init)
            self.pos_emb = layers.Embedding(tokens, width, embeddings_initializer=init)

        def build(self, input_shape):
            self.token_emb.build(input_shape)
            self.pos_emb.build((tokens,))

        def call(self, x):
            return self.token_emb(x) + self.pos_emb(ops.arange(tokens))

        def compute_output_shape(self, input_shape):
            return (*input_shape, width)

    inputs = keras.Input((tokens,), dtype="int32")
    x = TokenAndPositionEmbedding()(inputs)
    for _ in range(depth):
        h = layers.LayerNormalization(epsilon=EPSILON)(x)
        h = layers.MultiHeadAttention(heads, key_dim=width // heads, use_bias=False)(
            h, h, use_causal_mask=True)
        x = layers.Add()([x, h])
        h = layers.LayerNormalization(epsilon=EPSILON)(x)
        h = layers.Dense(round(mlp_ratio * width), activation="gelu", use_bias=False)(h)
        h = layers.Dense(width, use_bias=False)(h)
        x = layers.Add()([x, h])
    x = layers.LayerNormalization(epsilon=EPSILON)(x)
    x = layers.Lambda(lambda t: t[:, -1], output_shape=(width,))(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="plain_gpt")


def expected_params(width=128, depth=1, mlp_ratio=4, vocab_size=VOCAB, tokens=TOKENS,
                    num_classes=PRIME) -> int:
    """Trainable parameters of the pre-LN GPT, by hand: embeddings, per block Q/K/V/O (4 d^2),
    MLP (2 d * hidden), 2 LayerNorms (2 x 2 d); final LayerNorm; classifier with bias."""
    d, hidden = width, round(mlp_ratio * width)
    block = 4 * d * d + 2 * d * hidden + 2 * 2 * d
    return vocab_size * d + tokens * d + depth * block + 2 * d + d * num_classes + num_classes


def zoo_gpt(ngpt=False, **kw):
    from keras_normreg import zoo

    return zoo.create("gpt_modular", ngpt=ngpt, **kw)


def prompts(rng, batch):
    """(x, y): ``batch`` random prompts ``[a, OP, b, EQ]`` (int32) and labels in ``[0, p)``."""
    import numpy as np

    a = rng.integers(0, PRIME, batch)
    b = rng.integers(0, PRIME, batch)
    x = np.stack([a, np.full(batch, PRIME), b, np.full(batch, PRIME + 1)], axis=1)
    return x.astype("int32"), rng.integers(0, PRIME, batch).astype("int32")


def count(model) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(math.prod(v.shape) for v in model.variables)
    trainable = sum(math.prod(v.shape) for v in model.trainable_variables)
    return total, trainable


# ---------------------------------------------------------------------- local experiments
def _attention_variant(kind):
    """A drop-in for the zoo's ScaledDotProductAttention (same maths), changed as ``kind``."""
    from keras import ops

    from keras_normreg.zoo import _attention

    base = _attention.ScaledDotProductAttention

    class Variant(base):
        def call(self, query, key, value):
            head_dim = query.shape[-1]
            scale = self.scale if self.scale is not None else 1.0 / math.sqrt(head_dim)
            if kind == "scale_q":  # scale the queries (T x dk) instead of the scores (T x T)
                query = query * ops.cast(scale, query.dtype)
            if kind == "no_cast":
                scores = ops.einsum("bihk,bjhk->bhij", query, key)
            else:
                scores = ops.einsum("bihk,bjhk->bhij", ops.cast(query, "float32"),
                                    ops.cast(key, "float32"))
            if kind != "scale_q":
                scores = scores * scale
            if self.causal:
                tq, tk = ops.shape(query)[1], ops.shape(key)[1]
                mask = ops.expand_dims(ops.arange(tk), 0) <= ops.expand_dims(ops.arange(tq), 1)
                if kind == "additive_mask":  # a constant bias instead of where + full_like
                    scores = scores + ops.cast(ops.where(mask, 0.0, -1e9), scores.dtype)
                else:
                    scores = ops.where(mask, scores, ops.full_like(scores, -1e9))
            weights = ops.softmax(scores, axis=-1)
            v = value if kind == "no_cast" else ops.cast(value, "float32")
            out = ops.einsum("bhij,bjhk->bihk", weights, v)
            return ops.cast(out, self.compute_dtype)

    Variant.__name__ = f"ScaledDotProductAttention_{kind}"
    return Variant


#: --experiments: zoo GPT arms with the attention layer replaced (keras_normreg is unchanged).
EXPERIMENTS = {
    "zoo GPT, attention without float32 casts": "no_cast",
    "zoo GPT, attention scaling q not scores": "scale_q",
    "zoo GPT, attention with an additive mask": "additive_mask",
}


@contextlib.contextmanager
def _patched_attention(kind):
    from keras_normreg.zoo import transformer

    original = transformer.ScaledDotProductAttention
    transformer.ScaledDotProductAttention = _attention_variant(kind)
    try:
        yield
    finally:
        transformer.ScaledDotProductAttention = original


# ---------------------------------------------------------------------- arms

def builders(size, experiments=False):
    """arm name -> model builder."""
    out = {PLAIN: lambda: hand_gpt(**size), ZOO: lambda: zoo_gpt(**size),
           NGPT: lambda: zoo_gpt(ngpt=True, **size)}
    if experiments:
        for name, kind in EXPERIMENTS.items():
            def build(kind=kind):
                with _patched_attention(kind):
                    return zoo_gpt(**size)
            out[name] = build
        matched = {**size, "mlp_ratio": size["mlp_ratio"] * 2 / 3}
        out[NGPT_MATCHED] = lambda: zoo_gpt(ngpt=True, **matched)
    return out


def compile_gpt(model, jit):
    import keras

    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    return model


def xla_cost(model, x, y) -> dict:
    """JAX: XLA's cost analysis of the compiled train step (flops, bytes accessed, HLO fusions):
    what the compiler makes of a model, independent of the machine's load."""
    import jax

    model.train_on_batch(x, y)  # builds the optimizer and the metrics
    state = tuple([v.value for v in vs] for vs in (
        model.trainable_variables, model.non_trainable_variables, model.optimizer.variables,
        model.metrics_variables))
    compiled = jax.jit(model.train_step).lower(state, (x, y, None)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {"flops": float(cost.get("flops", float("nan"))),
            "bytes": float(cost.get("bytes accessed", float("nan"))),
            "fusions": compiled.as_text().count(" fusion(")}


def device_info(backend) -> dict:
    """Backend, versions and the device of the Keras arms (_timing.device_info without the
    torch import, which costs seconds and is not needed here)."""
    import platform

    import keras

    info = {"backend": backend, "keras": keras.__version__,
            "machine": f"{platform.machine()} {os.cpu_count()} cores", "device": "cpu"}
    if backend == "jax":
        import jax

        info["jax"] = jax.__version__
        dev = jax.devices()[0]
        if dev.platform != "cpu":
            info["device"] = f"{dev.platform} ({getattr(dev, 'device_kind', '?')})"
    elif backend == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            info["device"] = f"gpu ({len(gpus)}x)"
    return info


def check_same_params(counts):
    if counts[ZOO] != counts[PLAIN]:
        raise RuntimeError(f"The plain Keras GPT must have the zoo GPT's parameter count: zoo "
                           f"{counts[ZOO]}, plain {counts[PLAIN]} (total, trainable)")


def _run_modes(args, modes, makers, x, y, batch, backend, rows, counts, resolved, throughput,
               costs):
    """Build, check and time the arms for every XLA mode; fill the result containers."""
    import keras

    for mode, jit in modes:
        arms = {}
        for name, build in makers.items():
            model = compile_gpt(build(), jit)
            counts[name] = count(model)
            arms[name] = _timing.train_step(model, x, y)
            if args.cost:
                costs[name] = xla_cost(model, x, y)
            resolved[mode] = model.jit_compile
        check_same_params(counts)  # before minutes of timing
        pairs = [(ZOO, PLAIN), (NGPT, ZOO)] + [(name, ZOO) for name in (*EXPERIMENTS,
                                                                        NGPT_MATCHED)
                                               if name in arms]
        times = {}
        rows += _timing.compare(
            f"GPT train step, batch {batch}, jit {mode}", arms, pairs=pairs,
            rounds=args.rounds, steps=args.steps, warmup=args.warmup, times=times,
            targets={f"{ZOO} vs {PLAIN}": TARGET_ZOO, f"{NGPT} vs {ZOO}": TARGET_NGPT},
            verbose=not args.quick)
        throughput[mode] = {name: batch / t for name, t in times.items()}
        keras.backend.clear_session()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = _timing.base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=512, help="prompts per step (default 512)")
    p.add_argument("--no-xla", action="store_true",
                   help="TensorFlow: skip the jit_compile=True arms")
    p.add_argument("--experiments", action="store_true",
                   help="also time zoo GPTs with a locally changed attention layer")
    p.add_argument("--policy", default=None,
                   help="Keras dtype policy of every arm, e.g. mixed_bfloat16 (default: the "
                        "current one, float32)")
    p.add_argument("--cost", action="store_true",
                   help="JAX: also print XLA's cost analysis (flops, bytes) of every arm")
    args = p.parse_args(argv)
    args._argv = argv
    _timing.finish_args(args, rounds=15, steps=5)
    if args.batch < 1:
        p.error(f"--batch must be >= 1. Received: batch={args.batch}")

    import keras
    import numpy as np

    backend = keras.backend.backend()
    if args.cost and backend != "jax":
        p.error(f"--cost needs KERAS_BACKEND=jax. Received: backend={backend!r}")
    if backend == "tensorflow":
        _timing.setup(args.threads)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    size = QUICK if args.quick else PRESET
    batch = 8 if args.quick else args.batch
    x, y = prompts(rng, batch)
    modes = _timing.xla_modes(backend)
    if args.no_xla:
        modes = modes[:1]
    makers = builders(size, args.experiments)
    rows, counts, resolved, throughput, costs = [], {}, {}, {}, {}
    t0 = time.perf_counter()
    previous = keras.config.dtype_policy()
    if args.policy is not None:
        keras.config.set_dtype_policy(args.policy)
    try:
        policy = keras.config.dtype_policy().name
        _run_modes(args, modes, makers, x, y, batch, backend, rows, counts, resolved,
                   throughput, costs)
    finally:
        keras.config.set_dtype_policy(previous)
    elapsed = time.perf_counter() - t0

    info = device_info(backend)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    cmd = f"KERAS_BACKEND={backend} " + _timing.command([__file__, *argv])
    title = f"{backend}: zoo GPT vs plain Keras GPT, nGPT vs pre-LN ({info['device']})"
    print(f"\n## {title}\n")
    print(f"machine: {info['machine']}, Keras {info['keras']}"
          + (f", jax {info['jax']}" if "jax" in info else "")
          + (f", TF {info['tensorflow']}" if "tensorflow" in info else "")
          + f", load avg {load}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"command: {cmd}")
    print(f"rounds={args.rounds} x steps={args.steps} per arm (warm-up {args.warmup}); ratio = "
          "arm / baseline wall time within a round, median over rounds; jit auto resolved to "
          + ", ".join(f"{m}: {resolved[m]}" for m, _ in modes)
          + ("; JAX: always XLA, auto == xla" if backend == "jax" else "")
          + f"; dtype policy {policy}\n")
    print(_timing.format_table(rows))
    same = counts[ZOO] == counts[PLAIN]
    print(f"\nparameters (total, trainable): {ZOO} {counts[ZOO]}, {PLAIN} {counts[PLAIN]} -> "
          f"{'same' if same else 'DIFFERENT'}; {NGPT} {counts[NGPT]}")
    for mode, tp in throughput.items():
        print(f"throughput, jit {mode}: "
              + ", ".join(f"{name} {v:.0f} prompts/s" for name, v in tp.items()))
    for name, c in costs.items():
        base = costs[ZOO if name != ZOO else PLAIN]
        print(f"XLA cost of the train step, {name}: {c['flops'] / 1e6:.1f} MFLOP, "
              f"{c['bytes'] / 1e6:.1f} MB accessed, {c['fusions']} fusions (flops x"
              f"{c['flops'] / base['flops']:.3f}, bytes x{c['bytes'] / base['bytes']:.3f} vs "
              f"{ZOO if name != ZOO else PLAIN})")
    print(f"total {elapsed:.0f} s")
    if args.json:
        import dataclasses

        with open(args.json, "w") as f:
            json.dump({"title": title, "command": cmd, "info": info, "load": load,
                       "params": counts, "jit_resolved": resolved, "throughput": throughput,
                       "xla_cost": costs, "policy": policy,
                       "rows": [{**dataclasses.asdict(r), "met": r.met} for r in rows]},
                      f, indent=2, default=str)
    return rows, counts, throughput


if __name__ == "__main__":
    main()
