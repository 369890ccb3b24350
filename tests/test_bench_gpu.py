"""bench/bench_gpu.py: the PyTorch ResNet-20 reference, the options, the timing additions, and the
whole script in --quick mode under KERAS_BACKEND=jax (as on the GPU machine, which has no
TensorFlow)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import load_bench

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")


_load = load_bench


def _finite_positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_section(section):
    """Rows with positive finite ratios/times and positive finite throughputs of every arm."""
    assert section["rows"]
    for r in section["rows"]:
        for key in ("ratio", "throughput_ratio", "ms_arm", "ms_baseline", "lo", "hi"):
            assert _finite_positive(r[key]), (key, r)
        assert r["lo"] <= r["ratio"] <= r["hi"]
        assert r["throughput_ratio"] == pytest.approx(1 / r["ratio"])
    tp = section["throughput"]
    flat = [v for group in tp.values() for v in group.values()] if all(
        "per_s" not in v for v in tp.values()) else list(tp.values())
    assert flat
    for v in flat:
        assert _finite_positive(v["per_s"]) and _finite_positive(v["ms_per_step"])
    # per_s = batch / t and ms_per_step = 1e3 t, so per_s * ms_per_step / 1e3 is the batch: a
    # whole number, the same for every arm of a group (float64, two roundings: rel 1e-12)
    groups = list(tp.values()) if all("per_s" not in v for v in tp.values()) else [tp]
    for group in groups:
        batches = [v["per_s"] * v["ms_per_step"] / 1e3 for v in group.values()]
        batch = round(batches[0])
        assert batch >= 1
        assert batches == pytest.approx([batch] * len(batches), rel=1e-12), batches


# ---------------------------------------------------------------------- the PyTorch reference
@needs_torch
def test_torch_resnet20_parameter_count_by_hand():
    module = _load("bench_gpu")
    model = module.torch_resnet(20, 16, 10)
    # ResNet-20 (3 stages x 3 basic blocks, 16/32/64 channels, option A shortcuts: no weights).
    # Convs are 3x3 without bias; each BN has gamma + beta (trainable) and mean + var (not).
    stem = 3 * 3 * 3 * 16                            # 432
    stage1 = 6 * (3 * 3 * 16 * 16)                   # 6 convs 16->16: 13_824
    stage2 = 3 * 3 * 16 * 32 + 5 * (3 * 3 * 32 * 32)  # 4_608 + 46_080 = 50_688
    stage3 = 3 * 3 * 32 * 64 + 5 * (3 * 3 * 64 * 64)  # 18_432 + 184_320 = 202_752
    head = 64 * 10 + 10                              # 650
    bn_channels = 16 + 6 * 16 + 6 * 32 + 6 * 64      # stem BN + 2 per block: 688
    trainable = stem + stage1 + stage2 + stage3 + head + 2 * bn_channels
    assert trainable == 432 + 13_824 + 50_688 + 202_752 + 650 + 1_376 == 269_722
    assert module.RESNET20_TRAINABLE == trainable
    assert module.torch_param_counts(model) == (trainable + 2 * bn_channels, trainable)
    assert sum(p.numel() for p in model.parameters()) == trainable


@needs_torch
def test_torch_resnet20_has_the_zoo_parameter_count():
    from keras_normreg import zoo

    module = _load("bench_gpu")
    for kw in ({}, {"depth": 8, "width": 4}):
        keras_model = zoo.create("resnet20", norm="batch", **kw)
        torch_model = module.torch_resnet(kw.get("depth", 20), kw.get("width", 16))
        assert module.torch_param_counts(torch_model) == module._count(keras_model)


@needs_torch
def test_torch_block_shortcut_is_option_a():
    """With zero convs the block is relu(shortcut(x)): stride-2 subsampling, then the new
    channels as zeros, (c_out - c_in) // 2 before and the rest after (zoo's ZeroPadChannels)."""
    import torch

    module = _load("bench_gpu")
    model = module.torch_resnet(8, 4)
    block = model.blocks[1]  # first block of stage 2: 4 -> 8 channels, stride 2
    for conv in (block.conv1, block.conv2):
        torch.nn.init.zeros_(conv.weight)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        out = block(x).numpy()
    expected = np.pad(x.numpy()[:, :, ::2, ::2], [(0, 0), (2, 2), (0, 0), (0, 0)])
    np.testing.assert_allclose(out, np.maximum(expected, 0), atol=1e-6)
    assert model(torch.randn(3, 3, 8, 8)).shape == (3, 10)


@needs_torch
def test_torch_step_trains():
    module = _load("bench_gpu")
    step, sync, model, device = module.torch_step(4, 8, 8, 4, "none")
    losses = [float(step().detach()) for _ in range(5)]
    sync(None)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]  # one fixed batch: SGD fits it


def test_torch_resnet_rejects_bad_depth():
    if not HAS_TORCH:
        pytest.skip("torch is not installed")
    module = _load("bench_gpu")
    with pytest.raises(ValueError, match=r"`depth` must be of the form 6n \+ 2.*Received: depth=9"):
        module.torch_resnet(9)


# ---------------------------------------------------------------------- options
def test_options_defaults_and_quick():
    module = _load("bench_gpu")
    args, picked = module.parse([])
    assert (args.steps, args.repeats, args.warmup, args.batch) == (20, 7, 3, 512)
    assert picked == list(module.SECTIONS) and args.policy == "mixed_bfloat16"
    args, picked = module.parse(["--quick", "--no-torch"])
    assert (args.steps, args.repeats, args.warmup) == (1, 1, 1)
    assert picked == ["norms", "optimizers", "weightnorm", "transformer"]
    args, picked = module.parse(["--only", "torch,norms", "--steps", "5", "--repeats", "3"])
    assert picked == ["torch", "norms"] and (args.steps, args.repeats) == (5, 3)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be >= 1. Received: steps=0"),
    (["--repeats", "-1"], "--repeats must be >= 1. Received: repeats=-1"),
    (["--only", "nope"], "unknown or no sections in --only: ['nope']"),
    (["--only", "torch", "--no-torch"], "--no-torch leaves no section to run. Received: "
                                        "only='torch'"),
])
def test_options_errors(capsys, argv, message):
    module = _load("bench_gpu")
    with pytest.raises(SystemExit):
        module.parse(argv)
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------- _timing additions
class _Clock:
    """A virtual clock for _timing (wall and CPU time): steps and syncs advance it exactly."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    process_time = perf_counter


def test_compare_syncs_end_every_block_with_the_last_output(monkeypatch):
    timing = _load("_timing")
    clock = _Clock()
    monkeypatch.setattr(timing, "time", clock)
    counter = {"plain": 0, "synced": 0}
    synced_with = []

    def arm(name):
        def step():
            counter[name] += 1
            clock.now += 0.002
            return counter[name]
        return step

    def sync(out):
        synced_with.append(out)
        clock.now += 0.006  # the device finishing the queued work

    times = {}
    rows = timing.compare("sync", {"plain": arm("plain"), "synced": arm("synced")}, "plain",
                          rounds=3, steps=2, warmup=1, syncs={"synced": sync}, times=times,
                          verbose=False)
    # after the warm-up (1 step) and after each timed block (2 steps): the last step's value
    assert synced_with == [1, 3, 5, 7]
    (row,) = rows
    # per step: plain 2 ms; synced (2 x 2 ms + 6 ms) / 2 = 5 ms, the sync inside the clock
    assert row.ratio == pytest.approx(2.5) and row.cpu_ratio == pytest.approx(2.5)
    assert times == pytest.approx({"plain": 0.002, "synced": 0.005})
    assert timing.time_block(arm("plain"), 4, sync=sync) == pytest.approx((0.0035, 0.0035))
    assert synced_with[-1] == counter["plain"]
    # without syncs, compare times exactly as before (and calls no sync)
    n_syncs = len(synced_with)
    (row,) = timing.compare("plain", {"a": arm("plain"), "b": arm("synced")}, "a", rounds=2,
                            steps=3, warmup=1, verbose=False)
    assert row.ratio == pytest.approx(1.0) and len(synced_with) == n_syncs


def test_device_info_without_a_gpu():
    import keras

    timing = _load("_timing")
    info = timing.device_info()
    assert info["backend"] == keras.backend.backend() and info["keras"] == keras.__version__
    assert info["device"] == "cpu" or info["device"].startswith("gpu")
    if HAS_TORCH:
        assert "torch" in info


# ---------------------------------------------------------------------- the script
def test_weightnorm_section_in_process(capsys, tmp_path):
    """The report and JSON path on the test backend (TensorFlow here): one cheap section."""
    module = _load("bench_gpu")
    out = tmp_path / "gpu.json"
    bench = module.main(["--quick", "--only", "weightnorm", "--json", str(out)])
    assert bench.errors == {}
    saved = json.loads(out.read_text())
    assert list(saved["sections"]) == ["weightnorm"] and saved["errors"] == {}
    section = saved["sections"]["weightnorm"]
    _check_section(section)
    assert [(r["name"], r["baseline"]) for r in section["rows"]] == [
        ("WeightNormalization(Dense)", "Dense")] * 2
    assert saved["command"].endswith(f"bench/bench_gpu.py --quick --only weightnorm --json {out}")
    printed = capsys.readouterr().out
    assert f"device: {saved['device']}" in printed and "| benchmark | arm vs baseline |" in printed


def _check_transformer(section):
    """zoo GPT vs plain Keras GPT (same parameters) and zoo nGPT vs zoo GPT, with targets."""
    _check_section(section)
    assert [(r["name"], r["baseline"], r["target"]) for r in section["rows"]] == [
        ("zoo GPT", "plain Keras GPT", "<= 1.05"), ("zoo nGPT", "zoo GPT", "<= 1.25")]
    assert section["baseline"] == "plain Keras GPT"
    params = section["params"]
    assert params["same"] is True and params["zoo"] == params["plain"]
    # --quick: width 16, 2 heads, MLP 64 (bench_transformer.QUICK), counted by hand: token and
    # position embeddings, Q/K/V/O, MLP, 3 LayerNorms (gamma + beta), classifier + bias
    d = 16
    assert params["zoo"][1] == 99 * d + 4 * d + 4 * d * d + 2 * d * 64 + 3 * 2 * d + d * 97 + 97
    assert set(section["throughput"]) == {"plain Keras GPT", "zoo GPT", "zoo nGPT"}
    assert all(v["unit"] == "prompts/s" for v in section["throughput"].values())


def test_bench_compare_pairs_and_targets():
    """Bench.compare with pairs (the transformer section's two baselines): one row per pair
    whose arms built, in order, with its target; an arm that fails drops its pairs only."""
    module = _load("bench_gpu")
    args, _ = module.parse(["--quick"])
    bench = module.Bench(args)

    def ok():
        return (lambda: None), None

    def broken():
        raise RuntimeError("no such arm")

    rows, tp = bench.compare("s", "g", {"a": ok, "b": ok, "c": ok}, "a", 8,
                             pairs=[("b", "a"), ("c", "b")], targets={"b vs a": "<= 1.05"})
    assert [(r.name, r.baseline, r.target) for r in rows] == [("b", "a", "<= 1.05"),
                                                              ("c", "b", "")]
    assert set(tp) == {"a", "b", "c"} and bench.errors == {}
    rows, _ = bench.compare("s", "g2", {"a": ok, "b": ok, "c": broken}, "a", 8,
                            pairs=[("b", "a"), ("c", "b")])
    assert [(r.name, r.baseline) for r in rows] == [("b", "a")]
    assert list(bench.errors) == ["s/g2/c"] and "no such arm" in bench.errors["s/g2/c"]
    rows, tp = bench.compare("s", "g3", {"a": ok, "c": broken}, "a", 8, pairs=[("c", "a")])
    assert (rows, tp) == ([], {}) and "skipped" in bench.errors["s/g3"]


# Measured: 20-45 s wall (three XLA compiles on TensorFlow) on the loaded 2-core
# machine; the fast checks of the section's plumbing are the test above and bench_transformer's
# own tests.
@pytest.mark.slow
def test_transformer_section_in_process(capsys, tmp_path):
    """The GPT rows on the test backend (TensorFlow here, jit_compile=True), --quick sizes."""
    module = _load("bench_gpu")
    out = tmp_path / "gpu.json"
    bench = module.main(["--quick", "--only", "transformer", "--json", str(out)])
    assert bench.errors == {}
    saved = json.loads(out.read_text())
    assert list(saved["sections"]) == ["transformer"]
    _check_transformer(saved["sections"]["transformer"])
    printed = capsys.readouterr().out
    assert "| zoo GPT vs plain Keras GPT |" in printed and "| zoo nGPT vs zoo GPT |" in printed
    assert "transformer parameters (total, trainable): zoo GPT" in printed and "-> same" in printed


def _jax_import_error():
    """None when keras_normreg's layers/optimizers/zoo import under KERAS_BACKEND=jax, else why."""
    env = {**os.environ, "KERAS_BACKEND": "jax",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", "import keras_normreg.layers, keras_normreg.optimizers, "
                               "keras_normreg.zoo"],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    if result.returncode == 0:
        return None
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def _check_saved(saved, backend):
    """Every section (torch only when installed) with positive finite ratios and throughputs."""
    module = _load("bench_gpu")
    assert saved["errors"] == {}
    assert saved["info"]["backend"] == backend
    assert saved["device"] == "cpu" or saved["device"].startswith("gpu")
    expected = list(module.SECTIONS) if HAS_TORCH else ["norms", "optimizers", "weightnorm",
                                                        "transformer"]
    assert list(saved["sections"]) == expected
    for section in saved["sections"].values():
        _check_section(section)
    norms = saved["sections"]["norms"]
    assert norms["baseline"] == "batch"
    assert norms["baseline_layer"] == ("keras_normreg.layers.FusedBatchNormalization "
                                      "(keras.layers.BatchNormalization on JAX)")
    assert {r["name"] for r in norms["rows"]} == {"none", "l1_batch", "topk_batch", "weight"}
    assert {r["baseline"] for r in norms["rows"]} == {"batch"}
    optim = saved["sections"]["optimizers"]
    assert [r["name"] for r in optim["rows"]] == ["SGDW", "SGDP", "AdamW", "AdamP"]
    assert [r["baseline"] for r in optim["rows"]] == ["keras SGD(weight_decay)"] * 2 + [
        "keras AdamW"] * 2
    assert len(saved["sections"]["weightnorm"]["rows"]) == 2
    _check_transformer(saved["sections"]["transformer"])
    if HAS_TORCH:
        torch_section = saved["sections"]["torch"]
        assert torch_section["params"]["same_trainable"] is True
        assert torch_section["params"]["torch"] == torch_section["params"]["zoo"]
        assert _finite_positive(torch_section["throughput_ratio_zoo_over_torch"])
        (row,) = torch_section["rows"]
        assert row["baseline"] == "PyTorch ResNet-20" and row["name"].startswith("zoo ResNet-20")
        assert row["throughput_ratio"] == pytest.approx(
            torch_section["throughput_ratio_zoo_over_torch"], rel=1e-6)


# Measured on the 2-core CPU (loaded by other jobs): 72 s of CPU time, 127 s wall, for the
# import check plus the --quick run: over the ~60 s of the fast suite, hence slow.
@pytest.mark.slow
@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
def test_quick_run_under_jax(tmp_path):
    """The whole script as on the GPU machine (KERAS_BACKEND=jax), in --quick mode on this CPU."""
    why = _jax_import_error()
    if why is not None:
        pytest.skip("keras_normreg does not import under KERAS_BACKEND=jax yet (the backend "
                    f"work is not merged): {why}")
    out = tmp_path / "gpu.json"
    argv = ["--quick", "--json", str(out)] + ([] if HAS_TORCH else ["--no-torch"])
    env = {**os.environ, "KERAS_BACKEND": "jax",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), *argv], env=env,
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = json.loads(out.read_text())
    _check_saved(saved, "jax")
    assert "jax_devices" in saved["info"]
    assert f"device: {saved['device']}" in result.stdout
    assert saved["command"].startswith("KERAS_BACKEND=jax ") and "--quick" in saved["command"]


@pytest.mark.slow
def test_quick_run_in_process_every_section(tmp_path):
    """Every section on the test suite's backend (TensorFlow today: runs before the JAX work is
    merged; the Keras arms go through train_on_batch there)."""
    import keras

    module = _load("bench_gpu")
    out = tmp_path / "gpu.json"
    bench = module.main(["--quick", "--json", str(out)] + ([] if HAS_TORCH else ["--no-torch"]))
    assert bench.errors == {}
    _check_saved(json.loads(out.read_text()), keras.backend.backend())
    assert keras.mixed_precision.dtype_policy().name == "float32"  # restored
