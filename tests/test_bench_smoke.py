"""The bench/ scripts in their tiny --quick mode (so they cannot rot), and the timing helper."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from tests.helpers import load_bench

_load = load_bench


def _check_rows(rows):
    assert rows
    for r in rows:
        assert r.ratio > 0 and math.isfinite(r.ratio)
        assert r.lo <= r.q25 <= r.ratio <= r.q75 <= r.hi
        assert r.ms_arm > 0 and r.ms_baseline > 0
        assert r.met in ("yes", "NO", "unclear", "-")


# ---------------------------------------------------------------------- timing helper
def test_quantile_matches_numpy_linear_percentile():
    timing = _load("_timing")
    values = sorted([0.9, 1.3, 1.0, 1.7, 1.1, 0.95, 1.2])
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert timing._quantile(values, q) == pytest.approx(np.percentile(values, 100 * q))
    assert timing._quantile([2.0], 0.25) == 2.0


def _fake_clock(monkeypatch, timing, events):
    """Replace ``timing``'s clock by one that only the arms advance: returns ``(clock,
    arm)``; ``arm(seconds, name)`` is a step that appends ``name`` to ``events`` and moves
    the wall and CPU clocks by ``seconds``; ``time.sleep`` appends ``("sleep", s)`` and moves
    only ``clock["slept"]``, which the timing never reads."""
    import types

    clock = {"now": 0.0, "slept": 0.0}

    def sleep(seconds):
        events.append(("sleep", seconds))
        clock["slept"] += seconds

    monkeypatch.setattr(timing, "time", types.SimpleNamespace(
        perf_counter=lambda: clock["now"], process_time=lambda: clock["now"], sleep=sleep))

    def arm(seconds, name):
        def step():
            events.append(name)
            clock["now"] += seconds
        return step

    return clock, arm


def test_compare_measures_a_known_ratio(monkeypatch):
    """On a fake clock that only the arms advance (4 ms and 12 ms of wall and CPU time per
    step), so the ratios are exact on any machine, at any load."""
    timing = _load("_timing")
    calls = []
    _, arm = _fake_clock(monkeypatch, timing, calls)

    times = {}
    rows = timing.compare("busy", {"fast": arm(0.004, "fast"), "slow": arm(0.012, "slow")},
                          "fast", rounds=3, steps=2, warmup=1, targets={"slow": "<= 1.05"},
                          times=times, verbose=False)
    (row,) = rows
    assert (row.name, row.baseline, row.rounds) == ("slow", "fast", 3)
    assert row.ratio == pytest.approx(3.0, rel=1e-9)  # 12 ms / 4 ms in every round
    assert row.cpu_ratio == pytest.approx(3.0, rel=1e-9)
    assert (row.lo, row.hi) == pytest.approx((3.0, 3.0), rel=1e-9)
    assert (row.ms_baseline, row.ms_arm) == pytest.approx((4.0, 12.0), rel=1e-9)
    assert row.met == "NO"
    assert times == pytest.approx({"fast": 0.004, "slow": 0.012}, rel=1e-9)
    # 1 warm-up + 3 rounds x 2 steps per arm; the order rotates: round 2 starts with "slow".
    assert calls.count("fast") == calls.count("slow") == 7
    assert calls[2:6] == ["fast", "fast", "slow", "slow"]
    assert calls[6:10] == ["slow", "slow", "fast", "fast"]


def test_compare_settles_before_every_block_outside_the_clock(monkeypatch):
    """``settle``: one sleep before every timed block (rounds x arms), none in the warm-up,
    and none counted: on the fake clock (the arms alone advance it; the sleep here advances
    a second clock that the timing must not read) the ratio stays exact."""
    timing = _load("_timing")
    events = []
    clock, arm = _fake_clock(monkeypatch, timing, events)

    (row,) = timing.compare("settle", {"a": arm(0.004, "a"), "b": arm(0.008, "b")}, "a",
                            rounds=2, steps=1, warmup=1, verbose=False, settle=0.25)
    assert row.ratio == pytest.approx(2.0, rel=1e-9) and row.ms_baseline == pytest.approx(4.0)
    assert events == ["a", "b",  # warm-up: no sleep
                      ("sleep", 0.25), "a", ("sleep", 0.25), "b",   # round 1
                      ("sleep", 0.25), "b", ("sleep", 0.25), "a"]   # round 2, rotated
    assert clock["slept"] == pytest.approx(1.0)


def test_row_met_and_table():
    timing = _load("_timing")
    row = timing.Row("g", "b", "a", 10.0, 10.3, 1.03, 1.0, 1.05, 0.9, 1.2, 5, 1.01, "<= 1.05")
    assert row.met == "yes"
    assert timing.Row("g", "b", "a", 1, 1, 1.06, 1, 1, 1, 1, 1, 1.07, "<= 1.05").met == "NO"
    assert timing.Row("g", "b", "a", 1, 1, 2.1, 1, 1, 1, 1, 1, 2.5, ">= 2").met == "yes"
    # wall and CPU-time verdicts disagree -> unclear; no CPU time -> the wall verdict alone
    assert timing.Row("g", "b", "a", 1, 1, 1.10, 1, 1, 1, 1, 1, 1.01, "<= 1.05").met == "unclear"
    assert timing.Row("g", "b", "a", 1, 1, 1.1, 1, 1, 1, 1, 1, float("nan"), "<= 1.05").met == "NO"
    assert timing.Row("g", "b", "a", 1, 1, 2.1, 1, 1, 1, 1, 1).met == "-"
    table = timing.format_table([row])
    assert "| g | b vs a | 10.0 | 10.3 | 1.030 | 1.000-1.050 | 0.900-1.200 | 1.010 |" in table


def test_timing_errors():
    timing = _load("_timing")
    with pytest.raises(ValueError, match="Unknown baseline arm.*Received: baseline='c'"):
        timing.compare("g", {"a": lambda: None}, "c", rounds=1, steps=1, warmup=1)
    with pytest.raises(ValueError, match="Unknown arm in `pairs`"):
        timing.compare("g", {"a": lambda: None}, pairs=[("a", "b")], rounds=1, steps=1,
                       warmup=1)
    args = timing.base_parser("x").parse_args(["--rounds", "0"])
    with pytest.raises(ValueError, match="Received: rounds=0"):
        timing.finish_args(args, rounds=5, steps=1)


# ---------------------------------------------------------------------- the scripts
def test_bench_layers_quick(capsys, tmp_path):
    module = _load("bench_layers")
    out = tmp_path / "layers.json"
    rows = module.main(["--quick", "--threads", "0", "--only", "bn_micro,wn_micro", "--json", str(out)])
    _check_rows(rows)
    assert {(r.name, r.baseline) for r in rows} == {
        ("L1 BN", "keras BN"), ("TopK BN", "keras BN"),
        ("WeightNorm Dense", "plain Dense"), ("WeightNorm Conv2D", "plain Conv2D")}
    assert all(r.target == "<= 1.05" for r in rows)
    printed = capsys.readouterr().out
    assert "command: .venv/bin/python bench/bench_layers.py --quick --threads 0 --only" in printed
    assert "| benchmark | arm vs baseline |" in printed
    saved = json.loads(out.read_text())
    assert len(saved["rows"]) == 4 and saved["command"].endswith("--json " + str(out))


def test_bench_layers_rejects_unknown_group():
    module = _load("bench_layers")
    with pytest.raises(SystemExit):
        module.main(["--quick", "--only", "nope"])


def test_bench_optimizers_quick():
    module = _load("bench_optimizers")
    rows = module.main(["--quick", "--threads", "0", "--only", "mlp"])
    _check_rows(rows)
    assert [r.name for r in rows] == ["DecoupledWeightDecay(SGD)", "SGDP", "our AdamW", "AdamP"]
    assert [r.baseline for r in rows] == ["keras SGD(wd)"] * 2 + ["keras AdamW"] * 2


def test_bench_zoo_quick_same_parameter_count(capsys):
    module = _load("bench_zoo")
    rows, counts, times = module.main(["--quick", "--threads", "0", "--no-xla"])
    _check_rows(rows)
    assert counts["zoo"] == counts["hand-written"]
    assert set(times) == {"zoo, XLA off", "hand-written, XLA off"}
    assert "-> same" in capsys.readouterr().out


def test_bench_pipeline_quick(capsys, tmp_path):
    module = _load("bench_pipeline")
    out = tmp_path / "pipeline.json"
    results = module.main(["--quick", "--threads", "0", "--json", str(out)])
    arms = {"autotune off (default)", "autotune on"}
    assert set(results["fit"]["arms"]) == arms
    for r in results["fit"]["arms"].values():
        assert len(r["fit_s"]) == len(r["stall_s"]) == 1
        assert 0 <= r["stall_s"][0] < r["fit_s"][0]
    assert set(results["throughput"]["examples_per_s"]) == arms
    assert all(len(v) == 1 and v[0] > 0 for v in results["throughput"]["examples_per_s"].values())
    printed = capsys.readouterr().out
    assert "| arm | fit s (median) |" in printed and "| arm | examples/s (median) |" in printed
    saved = json.loads(out.read_text())
    assert saved["fit"]["fits"] == 1
    assert saved["command"] == (".venv/bin/python bench/bench_pipeline.py --quick --threads 0 "
                                f"--json {out}")


def test_bench_pipeline_rejects_bad_counts(capsys):
    module = _load("bench_pipeline")
    with pytest.raises(SystemExit):
        module.main(["--quick", "--fits", "0"])
    assert "--fits must be >= 1. Received: fits=0" in capsys.readouterr().err


def test_hand_resnet20_matches_the_paper_parameter_count():
    module = _load("bench_zoo")
    model = module.hand_resnet20()
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters.
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert 0.265e6 < trainable < 0.275e6
    assert model.output_shape == (None, 10)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["bench_layers", "bench_optimizers", "bench_zoo"])
def test_bench_scripts_quick_everything(script):
    result = _load(script).main(["--quick", "--threads", "0"])
    rows = result[0] if isinstance(result, tuple) else result
    _check_rows(rows)


def test_bench_tuning_quick_trials_to_target(capsys, tmp_path):
    module = _load("bench_tuning")
    out = tmp_path / "tuning.json"
    results = module.main(["--quick", "--only", "trials", "--json", str(out)])
    assert set(results) == {"surrogate", "real"}
    for kind, budget, n_targets in (("surrogate", 40, 1), ("real", 2, 3)):
        res = results[kind]
        assert res["objective"] == kind and len(res["targets"]) == n_targets
        assert all(len(v) == budget for vs in res["scores"].values() for v in vs)
        for r in res["targets"]:
            assert r["budget"] == budget
            for name in ("independent", "product"):
                trials = r[name]["trials"]
                assert len(trials) == len(r["seeds"]) == len(res["scores"][name])
                # independent recount: first score >= target, 1-based
                expected = [next((i + 1 for i, v in enumerate(scores) if v >= r["target"]), None)
                            for scores in res["scores"][name]]
                assert trials == expected
                assert r[name]["reached"] == sum(c is not None for c in trials)
                assert 1 <= r[name]["median_censored"] <= budget + 1
            assert r["ratio"] == pytest.approx(r["independent"]["median_censored"]
                                               / r["product"]["median_censored"])
    # the synthetic ridge peaks at ηλ = 1e-3 with score 1 - tiny η term
    assert module.surrogate({"eta_lambda": 1e-3, "learning_rate": 0.1}) == pytest.approx(1.0)
    assert module.surrogate({"eta_lambda": 1e-4, "learning_rate": 0.1}) == pytest.approx(0.5)
    printed = capsys.readouterr().out
    assert "command: .venv/bin/python bench/bench_tuning.py --quick --only trials" in printed
    assert "SURROGATE (synthetic ridge, not training)" in printed
    saved = json.loads(out.read_text())
    assert set(saved) >= {"machine", "command", "surrogate", "real"}


def test_bench_tuning_rejects_unknown_part():
    module = _load("bench_tuning")
    with pytest.raises(SystemExit):
        module.main(["--quick", "--only", "nope"])


def test_bench_tuning_rejects_unknown_speedup_options(capsys):
    module = _load("bench_tuning")
    for flag in ("--speedup-pin", "--speedup-study"):
        with pytest.raises(SystemExit):
            module.main(["--quick", "--only", "speedup", flag, "nope"])
        assert f"argument {flag}: invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        module.main(["--quick", "--only", "speedup", "--speedup-repeats", "0"])
    assert "--speedup-repeats must be >= 1. Received: speedup_repeats=0" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_tuning_quick_speedup():
    module = _load("bench_tuning")
    results = module.main(["--quick", "--only", "speedup"])
    s = results["speedup"]
    assert s["study"] == "tiny_digits"
    assert [r["mode"] for r in s["runs"]] == ["shared", "machines"]
    for run in s["runs"]:
        assert run["completed"] == {1: [2], 2: [2]}
        assert run["speedup"][1] == 1.0 and run["speedup"][2] > 0
        lo, hi = run["speedup_range"][2]
        assert lo == hi == pytest.approx(run["speedup"][2])  # one repeat
    cores = sorted(os.sched_getaffinity(0))
    first = cores[:round(len(cores) / 2)] if len(cores) >= 2 else cores
    assert s["runs"][1]["cpus"][1] == [set(first)]  # 1 worker: the first of two machines


def test_bench_jit_default_one_epoch(capsys, monkeypatch):
    """Both settings train in their own process on this session's backend; "auto" resolves as
    Keras does (XLA on JAX only, among CPU backends)."""
    import keras

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    module = _load("bench_jit_default")
    assert module.main(["--epochs", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [json.loads(line) for line in lines[:2]]
    assert [r["jit_compile"] for r in rows] == ["false", '"auto"']
    assert rows[0]["resolved"] is False
    assert rows[1]["resolved"] is (keras.backend.backend() == "jax")
    assert all(r["train_seconds"] > 0 and 0 <= r["test_accuracy"] <= 1 for r in rows)
    assert lines[2].startswith("train_seconds false / auto: ")
