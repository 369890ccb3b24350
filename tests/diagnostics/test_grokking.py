"""The grokking study (experiments/grokking): the delay statistic and the early-stop rule on
hand-made curves, the search statistic and the claims on hand tables, the report rendered from
a small stored results.json, one run in process, the command, and (slow) the --quick miniature
end to end."""

import dataclasses
import json
import math
import os
import re

import numpy as np
import pytest

from experiments import grokking
from experiments.grokking import analysis as an
from experiments.grokking import report, runs, study

# A study of experiments/ (its statistics, report and command): runs on TensorFlow only.
pytestmark = pytest.mark.tf_only

STEPS = [100, 200, 300, 400, 500, 600]


# ------------------------------------------------------------------ the delay of one run
def test_delay_generalized():
    s = an.delay_stats(STEPS, [0.5, 0.995, 1, 1, 1, 1], [0.01, 0.02, 0.5, 0.96, 0.995, 1.0])
    assert (s["t_train"], s["t_val_low"], s["t_val_high"]) == (200, 400, 500)
    assert s["delay"] == 300 and s["generalized"] and s["status"] == "generalized"
    assert s["first_val_high"] == 500 and not s["lost"]


def test_delay_never_generalized_is_not_zero():
    s = an.delay_stats(STEPS, [0.5, 1, 1, 1, 1, 1], [0.01, 0.1, 0.3, 0.5, 0.5, 0.5])
    assert s["t_train"] == 200 and s["t_val_high"] is None and s["t_val_low"] is None
    assert s["delay"] is None and not s["generalized"] and s["status"] == "memorized"


def test_delay_generalized_then_lost():
    # crossed 99% at 300, held it at 400, fell back to 0.9 at the end: not generalized
    s = an.delay_stats(STEPS, [1] * 6, [0.5, 0.9, 0.995, 0.999, 0.97, 0.9])
    assert s["first_val_high"] == 300 and s["t_val_high"] is None and s["lost"]
    assert s["delay"] is None and not s["generalized"] and s["status"] == "lost"
    # it still holds 95% from 300 ... no: 0.9 at the end, so 95% is not held either
    assert s["t_val_low"] is None
    # lost, then regained: the final stretch counts (from 600)
    s = an.delay_stats(STEPS, [1] * 6, [0.5, 0.995, 0.5, 0.96, 0.97, 0.995])
    assert s["t_val_high"] == 600 and s["t_val_low"] == 400 and s["first_val_high"] == 200
    assert s["delay"] == 500 and s["status"] == "generalized" and not s["lost"]


def test_delay_train_never_fitted():
    s = an.delay_stats(STEPS, [0.5, 0.9, 0.98, 0.98, 0.985, 0.98], [0.1, 0.5, 0.9, 1, 1, 1])
    assert s["t_train"] is None and s["t_val_high"] == 400
    assert s["delay"] is None and not s["generalized"] and s["status"] == "not_fit"
    # training accuracy that dips below 99% counts from its final stretch
    s = an.delay_stats(STEPS, [1, 0.5, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1])
    assert s["t_train"] == 300 and s["delay"] == 200


def test_delay_errors():
    with pytest.raises(ValueError, match=r"equally long.*Received: steps=2 values"):
        an.delay_stats([1, 2], [1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"`steps` must be increasing.*Received: steps="):
        an.delay_stats([2, 1], [1.0, 1.0], [1.0, 1.0])


def test_early_stop_rule():
    assert an.should_stop([0.5, 0.99, 0.995, 1.0], patience=3)
    assert not an.should_stop([0.99, 0.98, 0.995, 1.0], patience=3)
    assert not an.should_stop([1.0, 1.0], patience=3)  # too few evaluations yet
    assert an.should_stop([0.2, 0.96], threshold=0.95, patience=1)
    with pytest.raises(ValueError, match=r"`patience`.*Received: patience=0"):
        an.should_stop([1.0], patience=0)


# ------------------------------------------------------------------ hand tables
def _run(arm, point, seed, eta, lam, t_train, t_val, norm_gen=None, norm_fit=None):
    gen = t_val is not None and t_train is not None
    return {"arm": arm, "point": point, "seed": seed, "eta": eta, "lambda": lam,
            "stats": {"t_train": t_train, "t_val_high": t_val, "generalized": gen,
                      "delay": t_val - t_train if gen else None,
                      "status": "generalized" if gen else ("memorized" if t_train else
                                                           "not_fit")},
            "norm_at_gen": norm_gen if gen else None, "norm_at_fit": norm_fit}


def _table():
    """(a): λ 0 never generalizes, 0.1 once in 3, 0.3 delays 3000-4000, 1 delays 900-1200,
    3 never fits. (c): one η at 200-240 steps (delays 100, 120, 140), one never."""
    r = []
    lam_rows = {0.0: [(300, None)] * 3, 0.1: [(300, None), (300, 5300), (300, None)],
                0.3: [(300, 3300), (300, 3800), (300, 4300)],
                1.0: [(300, 1300), (300, 1500), (300, 1200)], 3.0: [(None, None)] * 3}
    for i, (lam, rows) in enumerate(lam_rows.items()):
        for seed, (tt, tv) in enumerate(rows, 1):
            r.append(_run("adamw", i, seed, 1e-3, lam, tt, tv, 10.0 + 0.5 * (seed - 2),
                          20.0 + 5 * (seed - 2)))
    for seed, tv in enumerate((200, 220, 240), 1):
        r.append(_run("sphere", 0, seed, 1e-2, None, 100, tv))
        r.append(_run("sphere", 1, seed, 1e-1, None, 100, None))
    return r


def test_summarize_medians_count_misses_as_longest():
    summ = an.summarize(_table(), runs.ARMS)
    a = summ["adamw"]
    assert [p["lambda"] for p in a] == [0.0, 0.1, 0.3, 1.0, 3.0]
    assert a[0]["median_t"] is None and a[1]["median_t"] is None  # 2 of 3 missed
    assert a[1]["generalized"] == 1 and a[2]["median_delay"] == 3500
    assert a[3]["median_t"] == 1300 and a[3]["median_delay"] == 1000
    # seed std of (1300, 1500, 1200), ddof=1: mean 1333.3, squares 1111+27778+17778 = 46667
    # /2 -> sqrt(23333) = 152.75
    assert a[3]["spread_t"] == pytest.approx(152.753, rel=1e-5)
    assert summ["l2"] == [] and summ["sphere"][0]["median_delay"] == 120
    assert math.isnan(a[0]["spread_t"])  # no seed generalized


def test_analyse_search_on_a_hand_table():
    summ = an.summarize(_table(), runs.ARMS)
    res = an.analyse(summ, runs.ARMS, budget_steps=8000, searches=20000, seed=1,
                     sphere_arms=("sphere",), reference="none")
    # best of all: sphere η = 0.01, median 220 steps, seed std of (200, 220, 240) = 20
    assert res["overall_arm"] == "sphere" and res["target"] == pytest.approx(240.0)
    sph = res["arms"]["sphere"]
    # its 6 single-seed results: 3 at <= 240 -> p = 1/2 per draw: P(N <= k) = 1 − 2^−k:
    # median 1 is on the edge (0.5): use the 90th percentile, 1 − 2^−4 = 0.9375 -> 4 (k=3:
    # 0.875); misses after 6 trials: 2^−6 = 0.0156
    assert sph["search"]["p_hit"] == pytest.approx(0.5) and sph["search"]["p90"] == 4
    assert sph["search"]["missed"] == pytest.approx(1 / 64, abs=0.004)  # 3σ of 20000 draws
    assert sph["reaches_target"] and sph["share_generalized"] == pytest.approx(0.5)
    ada = res["arms"]["adamw"]
    assert ada["search"]["p_hit"] == 0.0 and ada["search"]["median"] is None
    assert not ada["reaches_target"] and ada["generalized"] == 7 and ada["runs"] == 15


def test_search_helper_is_eta_only_s():
    from experiments import eta_only

    assert an.search_trials is eta_only.search_trials
    # 3 points × 2 seeds (steps as −steps; −1e18: never), 2 of the 6 reach −100 (i.e. <= 100
    # steps): p = 1/3 per draw, P(N <= k) = 1 − (2/3)^k: 0.333, 0.556 -> median 2; 0.868 (k=5),
    # 0.912 (k=6) -> 90th percentile 6; the margins (0.056, 0.012) are >= 5 standard errors
    # of 20000 searches (sqrt(0.9·0.1/20000) = 0.0021)
    r = an.search_trials([[-50, -500], [-1e18, -300], [-90, -1e18]], -100, budget=20,
                         searches=20000, seed=2)
    assert r["p_hit"] == pytest.approx(1 / 3) and r["median"] == 2 and r["p90"] == 6


def test_claim_delay_falls():
    summ = an.summarize(_table(), runs.ARMS)
    c = an.claim_delay_falls(summ["adamw"])
    # λ = 3 never fits: left out; medians inf, inf, 3500, 1000: never rising, last < first
    assert c["unfit"] == [3.0] and [r["lambda"] for r in c["rows"]] == [0.0, 0.1, 0.3, 1.0]
    assert c["verdict"] == "holds"
    # Kendall tau-a over 4 points: 6 pairs, the (inf, inf) pair ties, 5 discordant: −5/6
    assert c["tau"] == pytest.approx(-5 / 6)
    # λ = 1 slower than λ = 0.3: no longer monotone, tau still < 0 -> partly
    t = [r for r in _table() if not (r["arm"] == "adamw" and r["lambda"] == 1.0)]
    t += [_run("adamw", 3, s, 1e-3, 1.0, 300, 4800) for s in (1, 2, 3)]
    c = an.claim_delay_falls(an.summarize(t, runs.ARMS)["adamw"])
    assert c["verdict"] == "partly" and c["tau"] == pytest.approx((-4 + 1) / 6)
    assert an.claim_delay_falls([])["verdict"] == "untested"


def test_claim_sphere_speedup():
    summ = an.summarize(_table(), runs.ARMS)
    c = an.claim_sphere_speedup(summ, "sphere", "adamw", 8000)
    # the best AdamW median delay is λ = 1's 1000 steps; the sphere's 120: 8.33× < 10
    assert c["ratio"] == pytest.approx(1000 / 120) and c["verdict"] == "fails"
    fast = [r for r in _table() if r["arm"] != "sphere"]
    fast += [_run("sphere", 0, s, 1e-2, None, 100, 100 + d) for s, d in ((1, 80), (2, 90),
                                                                        (3, 100))]
    c = an.claim_sphere_speedup(an.summarize(fast, runs.ARMS), "sphere", "adamw", 8000)
    assert c["ratio"] == pytest.approx(1000 / 90) and c["verdict"] == "holds"
    # no AdamW point generalized: its delay exceeds 8000 − 300 (the earliest fit), a bound
    none = [r for r in fast if r["arm"] == "sphere" or r["lambda"] in (0.0, 3.0)]
    c = an.claim_sphere_speedup(an.summarize(none, runs.ARMS), "sphere", "adamw", 8000)
    assert c["bound"] and c["ratio"] == pytest.approx(7700 / 90) and c["verdict"] == "holds"
    # the sphere never generalized: fails (untested when AdamW did not either)
    c = an.claim_sphere_speedup(summ, "ngpt", "adamw", 8000)
    assert c["verdict"] == "fails" and c["ratio"] is None


def test_claim_norm_concentrates():
    c = an.claim_norm_concentrates(_table(), "adamw")
    # 7 generalized runs; norms at generalization 9.5/10/10.5 by seed: seeds 1,2,3 at
    # λ = 0.3 and 1, seed 2 at 0.1 -> [9.5, 10, 10.5, 9.5, 10, 10.5, 10]: mean 10,
    # std (ddof=1) = sqrt(4·0.25/6) = 0.40825 -> CV 0.0408; at fitting 15/20/25 likewise:
    # CV sqrt(4·25/6)/20 = 0.2041
    assert c["n"] == 7 and c["median"] == 10.0
    assert c["cv"] == pytest.approx(0.040825, rel=1e-4)
    assert c["cv_fit"] == pytest.approx(0.204124, rel=1e-4)
    assert c["verdict"] == "holds"
    assert an.claim_norm_concentrates(_table(), "l2")["verdict"] == "untested"


# ------------------------------------------------------------------ one run, in process
def test_angle_and_batches():
    # 2·atan2(|u−v|, |u+v|) for u=(1,0), v=(1,1)/√2: the angle π/4
    assert runs._angle(np.array([1.0, 0.0]), np.array([3.0, 3.0])) == pytest.approx(math.pi / 4)
    idx = runs._batches(np.random.default_rng(0), 10, 4, 5)
    assert idx.shape == (20,)
    # every example once per epoch: the first 10 and the next 10 are permutations
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:]) == list(range(10))


def test_build_treatments():
    s = runs.make_settings(quick=True)
    mats = {"token_embedding/embeddings", "position_embedding/embeddings",
            "block1_query/kernel", "block1_key/kernel", "block1_value/kernel",
            "block1_attn_out/kernel", "block1_mlp_up/kernel", "block1_mlp_down/kernel",
            "classifier/kernel"}
    t = runs._treatment(runs.build(s, "adamw", {"eta": 0.01, "lambda": 1.0}))
    assert set(t["decay"]) == mats and not t["sphere"] and not t["penalty"]
    t = runs._treatment(runs.build(s, "adamw", {"eta": 0.01, "lambda": 0.0}))
    assert t == {"decay": [], "sphere": [], "penalty": [], "unit_norm": []}
    t = runs._treatment(runs.build(s, "l2", {"eta": 0.01, "lambda": 1.0}))
    assert set(t["penalty"]) == mats and not t["decay"]
    t = runs._treatment(runs.build(s, "sphere", {"eta": 0.01, "lambda": None}))
    assert t["sphere"] == ["block1_query/kernel", "block1_key/kernel"] and not t["decay"]
    t = runs._treatment(runs.build(s, "ngpt", {"eta": 0.01, "lambda": None}))
    assert "block1_mlp_down/kernel" in t["unit_norm"] and not t["decay"]


def test_train_one_in_process():
    """One quick sphere run in this process (the test's backend): the curves, and Q/K on
    their sphere, radius √units = √head_dim = √8 (whole-tensor group, granularity 'tensor')."""
    s = runs.make_settings(quick=True, max_steps=30)
    rec = runs.train_one({"settings": dataclasses.asdict(s), "arm": "sphere", "point": 0,
                          "grid_point": {"eta": 0.03, "lambda": None}, "seed": 1})
    c = rec["curves"]
    assert c["step"] == [10, 20, 30][:len(c["step"])] and rec["steps"] == c["step"][-1]
    for key in ("train_acc", "val_acc", "norm"):
        assert len(c[key]) == len(c["step"])
    assert all(0 <= v <= 1 for v in c["train_acc"] + c["val_acc"])
    # float32 norm of 16·2·8 = 256 elements: relative rounding <= 256·2^−24 ≈ 1.5e-5, plus the
    # 5-decimal rounding of the record (5e-6 / 2.83): 3e-5
    for path in ("block1_query/kernel", "block1_key/kernel"):
        np.testing.assert_allclose(c["norms"][path], math.sqrt(8), rtol=3e-5)
        assert all(a > 0 for a in c["angle"][path])  # they turn
    # the total norm is the root sum of squares of the per-matrix norms
    tot = math.sqrt(sum(c["norms"][p][-1] ** 2 for p in c["norms"]))
    assert c["norm"][-1] == pytest.approx(tot, rel=1e-4)
    assert rec["stats"] == an.delay_stats(c["step"], c["train_acc"], c["val_acc"])


# ------------------------------------------------------------------ the report
def _curves(n, train, val):
    steps = [100 * (i + 1) for i in range(n)]
    return {"step": steps, "train_acc": train, "val_acc": val, "train_loss": [0.1] * n,
            "val_loss": [1.0] * n, "norm": [20.0 - i for i in range(n)],
            "norms": {"classifier/kernel": [5.0] * n}, "angle": {"classifier/kernel": [1e-3] * n}}


def _fixture():
    s = runs.make_settings(quick=True, seeds=(1, 2, 3))
    out = []
    for r in _table():
        if r["stats"]["generalized"]:
            n = r["stats"]["t_val_high"] // 100
            train = [0.5 if 100 * (i + 1) < r["stats"]["t_train"] else 1.0 for i in range(n)]
            val = [0.0] * (n - 1) + [1.0]
        else:
            n = 80
            train = [1.0 if r["stats"]["t_train"] else 0.5] * n
            val = [0.1] * n
        out.append(dict(r, curves=_curves(n, train, val), steps=100 * n, seconds=1.0))
    return {"command": "python -m experiments.grokking --quick", "date": "2026-12-06 01:00 UTC",
            "total_seconds": 60.0, "estimate": {"worst_s": 120.0, "runs": 6, "per_run_s": 40},
            "settings": dataclasses.asdict(s), "grids": runs.grids(s),
            "sizes": {"train": 60, "validation": 61}, "runs": out,
            "versions": {"python": "3.11", "keras": "3.15.1", "jax": "0.10", "numpy": "2",
                         "backend": "jax"}, "searches": 200}


def test_render_from_a_stored_results_json(tmp_path):
    out = tmp_path / "docs" / "study_grokking"
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps(_fixture()))
    path = report.render(str(out))
    assert path == str(out) + ".md"
    text = open(path).read()
    assert "python -m experiments.grokking --quick" in text and "**Quick mode**" in text
    assert "$" not in text.replace("$ ", "")  # every placeholder filled
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert os.path.getsize(tmp_path / "docs" / link) > 1000, link
    # the verdicts follow the hand table: (1) holds, (2) 8.3× < 10 fails, (4) holds
    claims = text[text.index("### The claims"):]
    one = claims[claims.index("**(1)"):claims.index("**(2)")]
    assert "**Holds.**" in one and "λ left out" in one and "| 1 | 1,000 | 3/3 |" in one
    two = claims[claims.index("**(2)"):claims.index("**(3)")]
    assert "**Does not hold.**" in two and "ratio 8.3 (needed: ≥ 10)" in two
    four = claims[claims.index("**(4)"):]
    assert "**Holds.**" in four.split("Arm (b)")[0] and "coefficient of variation 0.041" in four
    assert "| (c) | η = 0.01 | 3 | generalized, generalized, generalized |" in text
    # re-rendering gives the same page
    assert open(report.render(str(out))).read() == text


def test_template_errors(tmp_path):
    bad = tmp_path / "t.md"
    bad.write_text("<!-- @section report -->\nx\n")
    with pytest.raises(ValueError, match=r"`path`.*missing: \['quick_note'.*Received: path="):
        report.load_template(str(bad))
    with pytest.raises(ValueError, match=r"`out_dir` must hold a results.json.*Received"):
        report.render(str(tmp_path / "nothing"))
    assert set(report.SECTIONS) <= set(report.load_template())


# ------------------------------------------------------------------ settings and command
def test_settings_errors():
    with pytest.raises(ValueError, match=r"`p` must be a prime.*Received: p=91"):
        runs.make_settings(p=91)
    with pytest.raises(ValueError, match=r"`lambdas`.*Received: lambdas=\(0.1, -1\)"):
        runs.make_settings(lambdas=(0.1, -1))
    with pytest.raises(ValueError, match=r"`etas_sphere`.*Received: etas_sphere=\(0.0,\)"):
        runs.make_settings(etas_sphere=(0.0,))
    with pytest.raises(ValueError, match=r"`seeds`.*Received: seeds=\(1, 1\)"):
        runs.make_settings(seeds=(1, 1))
    with pytest.raises(ValueError, match=r"Unknown study setting\(s\) \['speed'\]"):
        runs.make_settings(speed=3)


def test_tasks_share_the_lambda_zero_runs():
    s = runs.make_settings()
    t = runs.tasks(s)
    # (a) 5 λ × 3 seeds, (b) 4 λ (not 0) × 2, (c), (d) 3 η × 3, (e) 1 η × 2 = 43
    count = {a: sum(x["arm"] == a for x in t) for a in runs.ARMS}
    assert count == {"adamw": 15, "l2": 8, "sphere": 9, "ngpt": 9, "none": 2}
    fake = [{"arm": "adamw", "point": 0, "seed": k, "x": k} for k in (1, 2, 3)]
    shared = runs.shared_runs(s, fake)
    assert [(r["arm"], r["point"], r["seed"], r["shared"]) for r in shared] == [
        ("l2", 0, 1, True), ("l2", 0, 2, True)]  # (b) has seeds 1, 2


def test_estimate_and_dry_run(capsys):
    s = runs.make_settings()
    e = runs.estimate_seconds(s, {"s_per_step": 0.02, "s_per_eval": 0.5, "overhead_s": 10})
    # 8000·0.02 + 80·0.5 + 10 = 210 s per run; 43 runs over 2 workers = 4515 s
    assert e["runs"] == 43 and e["per_run_s"] == pytest.approx(210)
    assert e["worst_s"] == pytest.approx(4515)
    assert study.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(a) adamw: 5 points × 3 seeds; η [0.001], λ [0, 0.1, 0.3, 1, 3]" in out
    assert "43 runs" in out and "min" in out
    assert study.main(["--dry-run", "--set", "max_steps=2000", "--set",
                       "etas_2d=(0.001, 0.003)"]) == 0
    out = capsys.readouterr().out
    assert "(a) adamw: 10 points × 3 seeds; η [0.001, 0.003]" in out and "66 runs" in out
    assert study.main(["--dry-run", "--set", "speed=3"]) == 2
    assert "Unknown study setting(s) ['speed']" in capsys.readouterr().err
    assert study.cli(epochs=3, dry_run=True) == 2
    assert "Received: epochs=3" in capsys.readouterr().err


def test_main_command_line(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(study, "run_study", lambda s, out, **kw: calls.append((s, out, kw)))
    out = str(tmp_path / "s")
    assert study.main(["--quick", "--out", out, "--set", "max_steps=20"]) == 0
    (s, got, kw), = calls
    assert s.quick and s.max_steps == 20 and got == out
    assert kw == {"command": f"python -m experiments.grokking --quick --out {out} --set "
                             "max_steps=20"}
    assert study.cli() == 0 and calls[1][1] == study.DEFAULT_OUT
    assert calls[1][2] == {"command": "keras-normreg experiment grokking"}
    assert grokking.main is study.main


# ------------------------------------------------------------------ the miniature, end to end
@pytest.mark.slow
def test_quick_end_to_end(tmp_path):
    """`--quick` on 2 spawned JAX workers: 6 runs of at most 60 steps (p = 11, width 16):
    ~1 min on the idle 2-core machine (the workers' start-up and compiles are most of it; 4
    min at load 9)."""
    out = tmp_path / "docs" / "study_grokking"
    assert study.main(["--quick", "--out", str(out)]) == 0
    saved = json.load(open(out / "results.json"))
    assert saved["command"] == f"python -m experiments.grokking --quick --out {out}"
    assert {"keras", "jax", "python", "backend"} <= set(saved["versions"])
    assert saved["date"].endswith("UTC") and saved["sizes"] == {"train": 60, "validation": 61}
    assert len({r["worker"] for r in saved["runs"]}) == 2  # two worker processes
    count = {a: sum(r["arm"] == a for r in saved["runs"]) for a in runs.ARMS}
    assert count == {"adamw": 2, "l2": 2, "sphere": 1, "ngpt": 1, "none": 1}
    assert sum(bool(r.get("shared")) for r in saved["runs"]) == 1
    for r in saved["runs"]:
        c = r["curves"]
        assert c["step"][-1] == r["steps"] <= 60 and len(c["val_acc"]) == len(c["step"])
        assert r["stats"] == an.delay_stats(c["step"], c["train_acc"], c["val_acc"])
    text = open(out.with_suffix(".md")).read()
    assert "**Quick mode**" in text and "### The claims" in text
    for name in report.FIGURES:
        assert os.path.getsize(out / f"{name}.png") > 1000, name
    assert not (out / "partial_runs.jsonl").exists()
    assert open(report.render(str(out))).read() == text
