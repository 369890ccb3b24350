"""GPU benchmark without TensorFlow: Keras' JAX backend, arms side by side in one run.

Commands (the device recipe, wheels included, is bench/run_gpu.sh)::

    KERAS_BACKEND=jax PYTHONPATH=/tmp/site:. python3 bench/bench_gpu.py --json $OUT/gpu.json
    KERAS_BACKEND=jax .venv/bin/python bench/bench_gpu.py --quick     # smoke run on a CPU, < 60 s

Imports only keras, numpy, jax (through Keras), torch (the reference arm) and keras_normreg's
layers/optimizers/zoo: the GPU machine has no TensorFlow. Run as a script, ``KERAS_BACKEND``
defaults to ``jax``. Sections (``--only``):

* ``norms``: ``zoo.create("resnet20", norm=...)`` (32x32x3, 10 classes) trained at batch 512 under
  ``keras.mixed_precision.set_global_policy("mixed_bfloat16")``, for norm ``none``, ``batch``,
  ``l1_batch``, ``topk_batch`` and ``weight``. The baseline is ``norm="batch"``, i.e. plain
  ``keras.layers.BatchNormalization``: every other norm is reported as a ratio to it.
* ``optimizers``: ``optimizers.SGDW`` (DecoupledWeightDecay around keras SGD) and ``SGDP`` vs
  ``keras.optimizers.SGD(weight_decay=)``; ``optimizers.AdamW`` (DecoupledWeightDecay around keras
  Adam) and ``AdamP`` vs ``keras.optimizers.AdamW``; on ResNet-20 (BN) and on a 4x1024 MLP (BN),
  batch 512. ``exclude=()`` so that ours decay the same variables as Keras' (all of them).
* ``weightnorm``: ``layers.WeightNormalization(Dense(1024))`` vs ``Dense(1024)`` alone on 1024
  features, MSE train step, batch 256 and 4096.
* ``transformer``: the GPT of ``zoo.create("gpt_modular")`` (pre-LN, causal, vocab 99, width 128,
  1 block, 4 heads, 97 classes, last-position logits) vs the same network written with plain
  ``keras.layers`` (``MultiHeadAttention(use_causal_mask=True)``, bench/bench_transformer.py's
  ``hand_gpt``: the same parameter count, checked), and the nGPT twin (``ngpt=True``) vs the zoo
  GPT; ``keras.optimizers.AdamW(1e-3)``, batch 512 of random prompts ``[a, OP, b, EQ]``.
* ``torch``: the same ResNet-20 (3 stages x 3 basic blocks, 16/32/64 channels, BN, option A
  shortcuts, the zoo's trainable parameter count: checked and printed) written in plain PyTorch
  (``torch_resnet`` of bench/_peers.py), trained with channels_last, bf16 autocast and
  ``torch.compile``, vs the zoo's ResNet-20 (BN) on Keras/JAX: the reference a user would
  otherwise pick.

Every arm is a full train step (forward, backward, optimizer update; SGD momentum 0.9 unless the
section is about optimizers) on synthetic data already on the device. Keras models are compiled
with ``jit_compile=True``; one ``train_on_batch`` builds and compiles them, then the timed steps
call ``model.train_function`` (the jitted step ``make_train_function`` made) with the training
state kept on the device, as ``model.fit`` does; every timed block ends with
``jax.block_until_ready`` on the state (torch: ``torch.cuda.synchronize()`` on CUDA). Warm-up
steps are not timed. The timing is bench/_timing.py's: arms alternate within each repeat, ratios
are per repeat and the median is reported. Throughput ratio = arm img/s / baseline img/s
(= 1 / the step-time ratio of the table; > 1: the arm is faster).

The zoo ResNet-20 (BN) arm of ``norms`` is reused by ``torch`` (one compile fewer). ``--quick``:
8x8 images, ResNet-8 of width 4, batch 8, a 2x16 MLP, Dense(16) at batch 4 and 16, a GPT of
width 16 with 2 heads, 1 repeat of 1 step; ``optimizers`` on the MLP only; XLA without LLVM's
expensive passes; on a CPU,
``torch.compile(backend="aot_eager")`` (inductor's C++ code generation takes minutes on 2 cores).

An arm that cannot be built or run is reported under ``errors`` (in the JSON too) and the run
goes on; the exit status is then 1.
"""

from __future__ import annotations

import json
import os
import sys
import time

#: --quick: XLA without LLVM's expensive passes (40% less compile time on a CPU; the steps run
#: slower, which --quick does not measure). Set only when run as a script, before JAX starts.
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

if __name__ == "__main__":  # the GPU machine has no TensorFlow: Keras' default backend would fail
    os.environ.setdefault("KERAS_BACKEND", "jax")
    if "--quick" in sys.argv[1:]:
        os.environ.setdefault("XLA_FLAGS", QUICK_XLA_FLAGS)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _timing  # noqa: E402
from _peers import RESNET20_TRAINABLE, torch_param_counts, torch_resnet  # noqa: E402, F401

SECTIONS = ("norms", "optimizers", "weightnorm", "transformer", "torch")
NORMS = ("batch", "none", "l1_batch", "topk_batch", "weight")
BASELINE_NORM = "batch"
#: What the zoo builds for BASELINE_NORM (the table's "batch"), as reported in the JSON.
BASELINE_LAYER = ("keras_normreg.layers.FusedBatchNormalization "
                  "(keras.layers.BatchNormalization on JAX)")
TITLE = "GPU benchmark: keras_normreg on Keras/{backend} vs plain Keras, PyTorch reference"


# ---------------------------------------------------------------------- the PyTorch reference
def _torch_nn():
    import torch
    from torch import nn

    return torch, nn


def torch_step(batch, size, depth, width, compile_backend, seed=0):
    """(step, sync, model, device) of the PyTorch ResNet: channels_last, bf16 autocast,
    ``torch.compile``, SGD momentum 0.9, cross-entropy; data already on the device."""
    torch, _ = _torch_nn()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(seed)
    if cuda:
        torch.backends.cudnn.benchmark = True
    model = torch_resnet(depth, width).to(device, memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    run = model if compile_backend == "none" else torch.compile(model, backend=compile_backend)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(run(x), y)
        loss.backward()
        opt.step()
        return loss

    def sync(_):
        if cuda:
            torch.cuda.synchronize()

    return step, sync, model, device


# ---------------------------------------------------------------------- Keras arms
def keras_step(model, x, y):
    """(step, sync) of a compiled Keras model on fixed data.

    One ``train_on_batch`` builds the model and the optimizer and compiles the train step. On
    JAX the step then calls ``model.train_function`` directly with the state (trainable,
    non-trainable, optimizer and metric variables) threaded from step to step on the device,
    as ``model.fit`` does, and ``sync`` is ``jax.block_until_ready`` on that state. On the other
    backends ``train_on_batch`` itself (synchronizing: it returns NumPy logs); sync is None.
    """
    import keras

    model.train_on_batch(x, y)
    if keras.backend.backend() != "jax":
        return (lambda: model.train_on_batch(x, y)), None
    import jax

    fn = model.train_function
    data = (x, y, None)
    box = [(
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )]

    def step():
        logs, box[0] = fn(box[0], iter([data]))  # the state is donated: keep only the new one
        return logs, box[0]

    return step, jax.block_until_ready


def _on_device(*arrays):
    import keras

    return tuple(keras.ops.convert_to_tensor(a) for a in arrays)


def _sparse_ce():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _sgd():
    import keras

    return keras.optimizers.SGD(0.01, momentum=0.9)


def _count(model) -> tuple[int, int]:
    import numpy as np

    total = sum(int(np.prod(v.shape)) for v in model.variables)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    return total, trainable


class Bench:
    """The arms of one run: shapes from the options, errors collected instead of raised."""

    def __init__(self, args):
        import numpy as np

        self.args = args
        self.rng = np.random.default_rng(0)
        q = args.quick
        self.batch = 8 if q else args.batch
        self.size = 8 if q else 32
        self.resnet_kw = {"depth": 8, "width": 4} if q else {"depth": 20, "width": 16}
        self.mlp_width, self.mlp_depth = (16, 2) if q else (1024, 4)
        self.wn_units = 16 if q else 1024
        self.wn_batches = (4, 16) if q else (256, 4096)
        self.errors: dict[str, str] = {}
        self.shared: dict[str, tuple] = {}
        self.sections: dict[str, dict] = {}

    # -- helpers
    def fail(self, key, exc):
        msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        self.errors[key] = msg
        print(f"[error] {key}: {msg}", file=sys.stderr, flush=True)

    def images(self):
        x = self.rng.standard_normal((self.batch, self.size, self.size, 3)).astype("float32")
        y = self.rng.integers(0, 10, self.batch).astype("int32")
        return _on_device(x, y)

    def resnet(self, norm="batch"):
        from keras_normreg import zoo

        return zoo.create("resnet20", norm=norm, input_shape=(self.size, self.size, 3),
                          num_classes=10, **self.resnet_kw)

    def mlp(self):
        from keras_normreg import zoo

        return zoo.mlp(norm="batch", input_shape=(self.mlp_width,),
                       units=(self.mlp_width,) * self.mlp_depth)

    def build_arms(self, section, group, makers):
        """name -> (step, sync) for every maker ``() -> (step, sync)`` that succeeds."""
        arms, syncs = {}, {}
        for name, make in makers.items():
            t0 = time.perf_counter()
            try:
                step, sync = make()
            except Exception as exc:  # noqa: BLE001 - reported, the other arms still run
                self.fail(f"{section}/{group}/{name}", exc)
                continue
            arms[name] = step
            if sync is not None:
                syncs[name] = sync
            print(f"[{section}] built + compiled {name!r} in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr, flush=True)
        return arms, syncs

    def compare(self, section, group, makers, baseline, batch, unit="img/s", pairs=None,
                targets=None):
        """Time the arms that built; rows + throughput (samples/s) of every arm.

        ``pairs`` (arm, baseline), when given, replaces "every arm vs ``baseline``"; the pairs
        whose arms did not build are left out. ``targets``: as in ``_timing.compare``."""
        arms, syncs = self.build_arms(section, group, makers)
        if pairs is not None:
            pairs = [pair for pair in pairs if pair[0] in arms and pair[1] in arms]
            nothing_to_compare = not pairs
        else:
            nothing_to_compare = baseline not in arms or len(arms) < 2
        if nothing_to_compare:
            self.errors.setdefault(f"{section}/{group}",
                                   "skipped: the baseline or every other arm failed")
            return [], {}
        times = {}
        try:
            rows = _timing.compare(group, arms, baseline, rounds=self.args.repeats,
                                   steps=self.args.steps, warmup=self.args.warmup, times=times,
                                   syncs=syncs, pairs=pairs, targets=targets)
        except Exception as exc:  # noqa: BLE001
            self.fail(f"{section}/{group}", exc)
            return [], {}
        throughput = {name: {"per_s": batch / t, "unit": unit, "ms_per_step": 1e3 * t}
                      for name, t in times.items()}
        return rows, throughput

    # -- sections
    def section_norms(self):
        x, y = self.images()

        def maker(norm):
            def make():
                model = self.resnet(norm)
                model.compile(optimizer=_sgd(), loss=_sparse_ce(), jit_compile=True)
                arm = keras_step(model, x, y)
                if norm == BASELINE_NORM:  # the zoo arm of the torch section too
                    self.shared["zoo"] = (arm, _count(model))
                return arm
            return make

        group = f"ResNet-20 train step by norm, batch {self.batch}"
        rows, tp = self.compare("norms", group, {n: maker(n) for n in NORMS}, BASELINE_NORM,
                                self.batch)
        return {"group": group, "baseline": BASELINE_NORM,
                "baseline_layer": BASELINE_LAYER, "batch": self.batch,
                "rows": rows, "throughput": tp}

    def section_optimizers(self):
        import keras

        from keras_normreg import optimizers

        families = {
            "keras SGD(weight_decay)": {
                "keras SGD(weight_decay)": lambda: keras.optimizers.SGD(
                    0.1, momentum=0.9, weight_decay=5e-4),
                "SGDW": lambda: optimizers.SGDW(0.1, momentum=0.9, weight_decay=5e-4,
                                                exclude=()),
                "SGDP": lambda: optimizers.SGDP(0.1, momentum=0.9, weight_decay=5e-4,
                                                exclude=()),
            },
            "keras AdamW": {
                "keras AdamW": lambda: keras.optimizers.AdamW(1e-3, weight_decay=4e-3),
                "AdamW": lambda: optimizers.AdamW(1e-3, weight_decay=4e-3, exclude=()),
                "AdamP": lambda: optimizers.AdamP(1e-3, weight_decay=4e-3, exclude=()),
            },
        }
        w = self.mlp_width
        xm = self.rng.standard_normal((self.batch, w)).astype("float32")
        ym = self.rng.integers(0, 10, self.batch).astype("int32")
        models = {f"MLP {self.mlp_depth}x{w} (BN), batch {self.batch}": (self.mlp,
                                                                        _on_device(xm, ym))}
        if not self.args.quick:  # --quick: 6 ResNet compiles fewer (the code path is the same)
            models = {f"ResNet-20 (BN), batch {self.batch}": (self.resnet, self.images()),
                      **models}
        rows, tp, groups = [], {}, []
        for label, (build, (x, y)) in models.items():
            for baseline, makers in families.items():
                def maker(make_opt, build=build, x=x, y=y):
                    def make():
                        model = build()
                        model.compile(optimizer=make_opt(), loss=_sparse_ce(), jit_compile=True)
                        return keras_step(model, x, y)
                    return make

                group = f"{label}: {baseline} family"
                r, t = self.compare("optimizers", group,
                                    {n: maker(m) for n, m in makers.items()}, baseline,
                                    self.batch)
                rows += r
                tp[group] = t
                groups.append(group)
        return {"groups": groups, "batch": self.batch, "rows": rows, "throughput": tp}

    def section_weightnorm(self):
        import keras

        from keras_normreg import layers

        d = self.wn_units
        rows, tp, groups = [], {}, []
        for batch in self.wn_batches:
            x = self.rng.standard_normal((batch, d)).astype("float32")
            t = self.rng.standard_normal((batch, d)).astype("float32")
            x, t = _on_device(x, t)

            def maker(wrap, x=x, t=t):
                def make():
                    dense = keras.layers.Dense(d)
                    model = keras.Sequential([keras.Input((d,)),
                                              layers.WeightNormalization(dense) if wrap
                                              else dense])
                    model.compile(optimizer=_sgd(), loss="mse", jit_compile=True)
                    return keras_step(model, x, t)
                return make

            group = f"Dense({d}) alone, batch {batch}"
            r, th = self.compare("weightnorm", group,
                                 {"Dense": maker(False), "WeightNormalization(Dense)": maker(True)},
                                 "Dense", batch, unit="samples/s")
            rows += r
            tp[group] = th
            groups.append(group)
        return {"groups": groups, "units": d, "rows": rows, "throughput": tp}

    def section_transformer(self):
        import bench_transformer as bt
        import keras

        size = bt.QUICK if self.args.quick else bt.PRESET
        x, y = _on_device(*bt.prompts(self.rng, self.batch))
        counts = {}

        def maker(name, build):
            def make():
                model = build()
                counts[name] = _count(model)
                model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=_sparse_ce(),
                              jit_compile=True)
                return keras_step(model, x, y)
            return make

        makers = {bt.PLAIN: maker(bt.PLAIN, lambda: bt.hand_gpt(**size)),
                  bt.ZOO: maker(bt.ZOO, lambda: bt.zoo_gpt(**size)),
                  bt.NGPT: maker(bt.NGPT, lambda: bt.zoo_gpt(ngpt=True, **size))}
        group = f"GPT (gpt_modular) train step, batch {self.batch}"
        rows, tp = self.compare(
            "transformer", group, makers, bt.PLAIN, self.batch, unit="prompts/s",
            pairs=[(bt.ZOO, bt.PLAIN), (bt.NGPT, bt.ZOO)],
            targets={f"{bt.ZOO} vs {bt.PLAIN}": bt.TARGET_ZOO,
                     f"{bt.NGPT} vs {bt.ZOO}": bt.TARGET_NGPT})
        both = bt.ZOO in counts and bt.PLAIN in counts
        same = both and counts[bt.ZOO] == counts[bt.PLAIN]
        if both and not same:
            self.errors["transformer/parameters"] = (
                f"parameters differ: zoo {counts[bt.ZOO]}, plain Keras {counts[bt.PLAIN]}")
        return {"group": group, "baseline": bt.PLAIN, "batch": self.batch, "size": size,
                "params": {"zoo": counts.get(bt.ZOO), "plain": counts.get(bt.PLAIN),
                           "ngpt": counts.get(bt.NGPT), "same": same},
                "rows": rows, "throughput": tp}

    def section_torch(self):
        x, y = self.images()
        compile_backend = self.args.torch_compile
        if compile_backend is None:
            compile_backend = "inductor"
            if self.args.quick:
                import torch

                if not torch.cuda.is_available():
                    # inductor's C++ codegen takes minutes on 2 CPU cores: the smoke run still
                    # goes through dynamo + AOTAutograd, without the code generation.
                    compile_backend = "aot_eager"
        depth, width = self.resnet_kw["depth"], self.resnet_kw["width"]
        counts = {}

        def make_zoo():
            if "zoo" in self.shared:  # built (and compiled) by the norms section
                arm, counts["zoo"] = self.shared["zoo"]
                return arm
            model = self.resnet(BASELINE_NORM)
            counts["zoo"] = _count(model)
            model.compile(optimizer=_sgd(), loss=_sparse_ce(), jit_compile=True)
            return keras_step(model, x, y)

        def make_torch():
            step, sync, model, device = torch_step(self.batch, self.size, depth, width,
                                                   compile_backend)
            counts["torch"] = torch_param_counts(model)
            counts["torch_device"] = str(device)
            sync(step())  # torch.compile compiles on the first call: here, like the Keras arms
            return step, sync

        zoo_arm, torch_arm = "zoo ResNet-20 (Keras/JAX)", "PyTorch ResNet-20"
        if _timing_backend() != "jax":
            zoo_arm = f"zoo ResNet-20 (Keras/{_timing_backend()})"
        group = f"ResNet-20 train step vs PyTorch, batch {self.batch}"
        rows, tp = self.compare("torch", group, {torch_arm: make_torch, zoo_arm: make_zoo},
                                torch_arm, self.batch)
        same = ("zoo" in counts and "torch" in counts
                and counts["zoo"][1] == counts["torch"][1])
        if "zoo" in counts and "torch" in counts and not same:
            self.errors["torch/parameters"] = (f"trainable parameters differ: zoo "
                                               f"{counts['zoo'][1]}, torch {counts['torch'][1]}")
        ratio = (tp[zoo_arm]["per_s"] / tp[torch_arm]["per_s"]
                 if zoo_arm in tp and torch_arm in tp else float("nan"))
        return {"group": group, "baseline": torch_arm, "zoo_arm": zoo_arm, "batch": self.batch,
                "compile_backend": compile_backend, "autocast": "bfloat16",
                "memory_format": "channels_last", "torch_device": counts.get("torch_device"),
                "params": {"zoo": counts.get("zoo"), "torch": counts.get("torch"),
                           "same_trainable": same},
                "throughput_ratio_zoo_over_torch": ratio, "rows": rows, "throughput": tp}


def _timing_backend():
    import keras

    return keras.backend.backend()


# ---------------------------------------------------------------------- report
def _row_dict(row):
    import dataclasses

    d = dataclasses.asdict(row)
    d["met"] = row.met
    d["throughput_ratio"] = 1.0 / row.ratio if row.ratio > 0 else float("nan")
    return d


def _throughput_lines(name, section):
    tp = section["throughput"]
    flat = {}
    if tp and all(isinstance(v, dict) and "per_s" not in v for v in tp.values()):
        for group, arms in tp.items():
            flat.update({f"{group} / {arm}": v for arm, v in arms.items()})
    else:
        flat = tp
    lines = [f"throughput ({name}):"]
    for arm, v in flat.items():
        lines.append(f"  {arm}: {v['per_s']:.0f} {v['unit']} ({v['ms_per_step']:.2f} ms/step)")
    return lines


def parser():
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: tiny shapes, 1 repeat of 1 step (every section, < 60 s on "
                        "a 2-core CPU; for tests, not for numbers)")
    p.add_argument("--steps", type=int, default=None, help="train steps per arm per repeat (20)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats (rounds) per comparison (7)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per arm first (3)")
    p.add_argument("--batch", type=int, default=512,
                   help="batch of the ResNet-20 and MLP arms (weightnorm: 256 and 4096)")
    p.add_argument("--policy", default="mixed_bfloat16",
                   help="Keras dtype policy of every Keras arm (default mixed_bfloat16)")
    p.add_argument("--torch-compile", default=None,
                   help="torch.compile backend of the PyTorch arm: inductor (default; "
                        "aot_eager in --quick on a CPU), aot_eager, eager, or none")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch section")
    _timing.add_only(p, SECTIONS, "sections")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def parse(argv):
    p = parser()
    args = p.parse_args(argv)
    args._argv = argv
    if args.quick:
        defaults = {"steps": 1, "repeats": 1, "warmup": 1}
    else:
        defaults = {"steps": 20, "repeats": 7, "warmup": 3}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("steps", "repeats", "warmup", "batch"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1. Received: {key}={getattr(args, key)}")
    picked = _timing.parse_only(p, args.only, SECTIONS, "sections")
    if args.no_torch and "torch" in picked:
        picked.remove("torch")
        if not picked:
            p.error(f"--no-torch leaves no section to run. Received: only={args.only!r}")
    return args, picked


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, picked = parse(argv)
    import keras

    info = _timing.device_info()
    cmd = f"KERAS_BACKEND={info['backend']} " + _timing.command([__file__, *argv])
    print(f"device: {info['device']}", flush=True)
    print(f"backend: {info['backend']}, keras {info['keras']}"
          + (f", jax {info['jax']} {info['jax_devices']}" if "jax" in info else "")
          + (f", torch {info['torch']}" if "torch" in info else "")
          + (f" ({info['torch_cuda_device']})" if "torch_cuda_device" in info else ""),
          flush=True)
    keras.utils.set_random_seed(0)
    bench = Bench(args)
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_global_policy(args.policy)
    t0 = time.perf_counter()
    try:
        for name in picked:
            try:
                bench.sections[name] = getattr(bench, f"section_{name}")()
            except ImportError as exc:
                bench.fail(name, exc)
            keras.backend.clear_session()
    finally:
        keras.mixed_precision.set_global_policy(previous)
    elapsed = time.perf_counter() - t0

    all_rows = [r for s in bench.sections.values() for r in s["rows"]]
    title = TITLE.format(backend=info["backend"])
    print(f"\n## {title}\n")
    print(f"device: {info['device']}; machine: {info['machine']}")
    print(f"command: {cmd}")
    print(f"policy {args.policy}; repeats={args.repeats} x steps={args.steps} per arm (warm-up "
          f"{args.warmup}); ratio = arm step time / baseline step time within a repeat, median "
          "over repeats; throughput ratio = 1 / ratio\n")
    if all_rows:
        print(_timing.format_table(all_rows))
    if "norms" in bench.sections:
        print(f"\nnorms baseline: norm={BASELINE_NORM!r} = keras.layers.BatchNormalization")
    for name, section in bench.sections.items():
        print("\n".join(_throughput_lines(name, section)))
    if "transformer" in bench.sections:
        p = bench.sections["transformer"]["params"]
        print(f"transformer parameters (total, trainable): zoo GPT {p['zoo']}, plain Keras GPT "
              f"{p['plain']} -> {'same' if p['same'] else 'DIFFERENT'}; zoo nGPT {p['ngpt']}")
    if "torch" in bench.sections:
        s = bench.sections["torch"]
        print(f"parameters (total, trainable): zoo {s['params']['zoo']}, torch "
              f"{s['params']['torch']} -> "
              f"{'same' if s['params']['same_trainable'] else 'DIFFERENT'} trainable")
        print(f"zoo-{info['backend']} / PyTorch throughput: {s['throughput_ratio_zoo_over_torch']:.3f} "
              f"(torch.compile backend {s['compile_backend']}, bf16 autocast, channels_last)")
    for key, msg in bench.errors.items():
        print(f"ERROR {key}: {msg}")
    print(f"total {elapsed:.0f} s")
    if args.json:
        payload = {
            "title": title, "command": cmd, "device": info["device"], "info": info,
            "policy": args.policy, "repeats": args.repeats, "steps": args.steps,
            "warmup": args.warmup, "quick": args.quick, "seconds": elapsed,
            "sections": {name: {**{k: v for k, v in s.items() if k != "rows"},
                                "rows": [_row_dict(r) for r in s["rows"]]}
                         for name, s in bench.sections.items()},
            "errors": bench.errors,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2, default=_json_default)
    return bench


def _json_default(value):
    return str(value)


if __name__ == "__main__":
    sys.exit(1 if main().errors else 0)
