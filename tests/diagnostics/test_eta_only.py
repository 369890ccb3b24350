"""The eta-only study (experiments/eta_only/): its pure parts against hand-derived values
(the equilibrium angle and the sphere arm's η range, the random-search-against-a-table
statistic), the report template, the `keras-normreg experiment eta-only` command, and (slow) the
--quick miniature end to end."""

import concurrent.futures
import copy
import csv
import dataclasses
import json
import math
import multiprocessing
import os
import re

import numpy as np
import pytest

from experiments import eta_only as study
from keras_normreg import cli
from keras_normreg._utils import environ

# A study of experiments/ (its statistics, report and command): runs on TensorFlow only.
pytestmark = pytest.mark.tf_only

ALPHA = 0.9


# ------------------------------------------------------------------ the angular-update theory
def test_equilibrium_theta_hand_values():
    # decoupled (sgdw, decay outside the momentum): sqrt(2·η·λ·(1−α)/(1+α))
    # η = 0.1, λ = 0.12: 2·0.1·0.12 = 0.024; ·0.1 = 0.0024; /1.9 = 0.00126316 -> 0.0355409
    assert study.equilibrium_theta("decoupled", 0.1, 0.12, ALPHA) == pytest.approx(0.0355409,
                                                                                   rel=1e-5)
    assert study.equilibrium_theta("eta_lambda", 0.1, 0.12, ALPHA) == pytest.approx(0.0355409,
                                                                                    rel=1e-5)
    # coupled L2(λ/2), through the momentum: sqrt(2·η·λ/(1+α)); λ = 0.012 = 0.12·(1−α) gives
    # the same angle: 2·0.1·0.012/1.9 = 0.00126316
    assert study.equilibrium_theta("coupled", 0.1, 0.012, ALPHA) == pytest.approx(0.0355409,
                                                                                  rel=1e-5)
    assert math.isnan(study.equilibrium_theta("sphere", 0.1, None, ALPHA))
    assert math.isnan(study.equilibrium_theta("decoupled", 0.1, 0.0, ALPHA))


def test_eta_lambda_floor_and_log_grid():
    # 3 relaxation times 1/(2ηλ) in 2000 steps: ηλ = 3/4000
    assert study.eta_lambda_floor(2000, 3) == pytest.approx(7.5e-4)
    assert study.eta_lambda_floor(100, 1) == pytest.approx(5e-3)
    np.testing.assert_allclose(study.log_grid(1e-3, 1e-1, 3), [1e-3, 1e-2, 1e-1])
    assert study.log_grid(0.5, 0.5, 1) == [0.5]


def test_arm_grids_full_settings_hand_values():
    s = study.make_settings()
    # MNIST-1D train[:3000], batch 30 -> 100 steps/epoch; 20 epochs -> 2000 steps
    assert s.steps_per_epoch() == 100 and s.total_steps() == 2000
    g = study.arm_grids(s)
    f = g["_facts"]
    assert f["eta_lambda_min"] == pytest.approx(7.5e-4)
    # (a)'s λ grid starts at ηλ_min / η_min = 7.5e-4 / 0.025 = 0.03, doubling
    np.testing.assert_allclose(f["lambda_grid"], [0.03, 0.06, 0.12, 0.24, 0.48])
    assert len(g["decoupled"]) == len(g["coupled"]) == 25
    # Δθ range: sqrt(2·7.5e-4·0.1/1.9) = sqrt(7.8947e-5) = 0.00888523, and ηλ_max = 0.4·0.48
    # = 0.192 = 256·ηλ_min, so θ_max = 16·θ_min = 0.142164
    assert f["theta_min"] == pytest.approx(0.00888523, rel=1e-5)
    assert f["theta_max"] == pytest.approx(0.142164, rel=1e-5)
    # (b): λ × (1 − α), the same predicted angle point by point
    for a, b in zip(g["decoupled"], g["coupled"], strict=True):
        assert b["eta"] == a["eta"] and b["lambda"] == pytest.approx(a["lambda"] * 0.1)
        assert b["theta_pred"] == pytest.approx(a["theta_pred"], rel=1e-9)
    # (d): η = 0.1, 7 ηλ log-spaced over (a)'s range [7.5e-4, 0.192]
    d = g["eta_lambda"]
    assert [p["eta"] for p in d] == [0.1] * 7
    assert d[0]["eta_lambda"] == pytest.approx(7.5e-4) and d[-1]["eta_lambda"] == pytest.approx(
        0.192)
    assert d[-1]["lambda"] == pytest.approx(1.92)
    assert "sphere" not in g  # needs the pilot's rate
    # (e) the no-decay reference: (a)'s η grid, no λ
    assert [p["eta"] for p in g["none"]] == [0.025, 0.05, 0.1, 0.2, 0.4]
    assert all(p["lambda"] is None and math.isnan(p["theta_pred"]) for p in g["none"])
    assert "none" not in study.arm_grids(study.make_settings(reference=False))


def test_sphere_eta_grid_hand_values():
    th_min, th_max = 0.00888523, 0.142164
    # linear rate Δθ = 0.5·η: η = 2·Δθ at Δθ = θ_min, 4·θ_min, 16·θ_min
    np.testing.assert_allclose(study.sphere_eta_grid(th_min, th_max, 3, {"c": 0.5, "p": 1.0}),
                               [0.01777046, 0.07108184, 0.284328], rtol=1e-5)
    # Δθ = 0.2·η^0.5 -> η = (Δθ/0.2)²: (0.00888523/0.2)² = 0.00197368
    got = study.sphere_eta_grid(th_min, th_max, 2, {"c": 0.2, "p": 0.5})
    np.testing.assert_allclose(got, [0.00197368, 0.505263], rtol=1e-4)
    # through arm_grids: 11 target angles from θ_min/16 (sphere_below) to θ_max = 16·θ_min,
    # i.e. a factor 256 = 2^8 in 10 steps of 2^0.8; each point carries its target angle
    s = study.make_settings()
    g = study.arm_grids(s, {"c": 0.5, "p": 1.0})
    assert len(g["sphere"]) == 11
    assert g["_facts"]["sphere_theta_min"] == pytest.approx(th_min / 16, rel=1e-5)
    assert g["sphere"][0]["eta"] == pytest.approx(2 * th_min / 16, rel=1e-5)
    assert g["sphere"][0]["theta_target"] == pytest.approx(0.000555327, rel=1e-5)
    assert g["sphere"][5]["theta_target"] == pytest.approx(th_min, rel=1e-5)  # 2^(5·0.8) = 16
    assert g["sphere"][-1]["theta_target"] == pytest.approx(th_max, rel=1e-5)
    assert all(p["lambda"] is None for p in g["sphere"])
    # sphere_below = 1: the sphere spans exactly (a)'s equilibrium range
    g1 = study.arm_grids(study.make_settings(sphere_below=1.0), {"c": 0.5, "p": 1.0})
    assert g1["sphere"][0]["theta_target"] == pytest.approx(th_min, rel=1e-5)
    with pytest.raises(ValueError, match="sphere_below"):
        study.make_settings(sphere_below=0.5)


def test_fit_rate():
    etas = [0.01, 0.1, 1.0]
    thetas = [0.3 * e ** 0.8 for e in etas]
    r = study.fit_rate(etas, thetas)
    assert r["c"] == pytest.approx(0.3, rel=1e-9) and r["p"] == pytest.approx(0.8, rel=1e-9)
    assert study.fit_rate([0.1], [0.02]) == {"c": pytest.approx(0.2), "p": 1.0}
    # an angle that falls with η (a collapsed run) cannot be inverted: the theory's p = 1
    flat = study.fit_rate([0.1, 1.0], [0.02, 0.01])
    assert flat["p"] == 1.0 and flat["fitted_p"] < 0
    assert flat["c"] == pytest.approx(math.sqrt(0.2 * 0.01))  # geometric mean of θ/η


# ------------------------------------------------------------------ the search statistic
def test_geometric_quantile_hand_values():
    # P(N <= k) = 1 − (2/3)^k: 0.333, 0.556 (median 2) ... 0.868, 0.912 (90th pct 6)
    assert study.geometric_quantile(1 / 3, 0.5) == 2
    assert study.geometric_quantile(1 / 3, 0.9) == 6
    assert study.geometric_quantile(1.0, 0.9) == 1
    assert study.geometric_quantile(0.0, 0.5) is None


def test_search_trials_with_replacement_matches_the_hand_computed_distribution():
    # 3 points × 2 seeds, 2 of the 6 single-seed scores reach 0.8: p = 1/3 per draw
    table = [[0.9, 0.5], [0.5, 0.5], [0.5, 0.9]]
    r = study.search_trials(table, 0.8, budget=6, searches=20000, seed=3)
    assert r["p_hit"] == pytest.approx(1 / 3)
    assert r["median"] == 2 and r["p90"] == 6  # hand values above
    assert r["missed"] == pytest.approx((2 / 3) ** 6, abs=0.01)  # 0.0878
    assert len(r["trials"]) == 20000 and r["budget"] == 6
    counts = np.array([t for t in r["trials"] if t is not None])
    assert counts.min() == 1 and counts.max() <= 6
    # P(first hit at trial 1) = 1/3
    assert np.mean(counts == 1) * (1 - r["missed"]) == pytest.approx(1 / 3, abs=0.01)
    # a budget too small to reach the 90th percentile reports it as missed (None)
    short = study.search_trials(table, 0.8, budget=4, searches=2000, seed=1)
    assert short["p90"] is None and short["median"] == 2


def test_search_trials_random_order_and_edge_cases():
    # without replacement: 3 points, one always reaches the target -> its position in a random
    # order is 1, 2 or 3 with probability 1/3 each: median 2, 90th percentile 3, never missed
    table = [[0.1, 0.1], [0.95, 0.95], [0.1, 0.1]]
    r = study.search_trials(table, 0.9, budget=3, searches=6000, seed=0, replace=False)
    assert (r["median"], r["p90"], r["missed"]) == (2, 3, 0.0)
    # every score reaches it: one trial; none does: never, median/p90 None
    assert study.search_trials([[1.0], [1.0]], 0.5, budget=2, searches=50)["median"] == 1
    none = study.search_trials([[0.1, 0.2]], 0.5, budget=5, searches=50)
    assert none["median"] is None and none["p90"] is None and none["missed"] == 1.0
    # deterministic for a seed
    a = study.search_trials(table, 0.9, budget=5, searches=100, seed=4)
    b = study.search_trials(table, 0.9, budget=5, searches=100, seed=4)
    assert a["trials"] == b["trials"]


# ------------------------------------------------------------------ summary, analysis, report
def _fake_results(sphere_best=0.93, reference_best=0.5, quick=True):
    """Results as run_study writes them, with made-up scores: the (a)/(b)/(d) scores fall
    with the predicted angle, the sphere arm peaks at ``sphere_best``, the reference at
    ``reference_best``."""
    s = study.make_settings(quick=quick, seeds=(1, 2, 3))
    rate = {"c": 0.1, "p": 1.0}
    grids = study.arm_grids(s, rate)
    runs = []
    for arm in study.ALL_ARMS:
        for i, gp in enumerate(grids[arm]):
            for k, seed in enumerate(s.seeds):
                if arm in ("sphere", "none"):
                    base = (sphere_best if arm == "sphere" else reference_best) if i == 0 else 0.5
                    theta = 0.02 * (i + 1)
                else:
                    base = 0.95 - 2 * gp["theta_pred"] - (0.02 if arm == "coupled" else 0)
                    theta = 0.9 * gp["theta_pred"]
                runs.append({"arm": arm, "point": i, "seed": seed, "pilot": False,
                             "eta": gp["eta"], "lambda": gp["lambda"],
                             "eta_lambda": gp["eta_lambda"], "theta_pred": gp["theta_pred"],
                             "epochs": s.epochs, "score": base + (0.0, 0.01, 0.03)[k],
                             "val_accuracy_last": [base], "val_loss": 0.3, "train_loss": 0.2,
                             "diverged": False, "theta_measured": theta,
                             "theta_whole_kernel": theta, "theta_pred_monitor": float("nan"),
                             "unit_norm": 1.0 if arm == "sphere" else 0.5,
                             "unit_effective_lr": gp["eta"], "seconds": 1.0})
    pilot = [{"eta": e, "theta_measured": 0.1 * e, "seed": 1, "pilot": True}
             for e in s.pilot_etas]
    return {"command": "python -m experiments.eta_only --quick", "date": "2026-11-30 17:00 UTC",
            "total_seconds": 90.0, "estimate_seconds": 60.0,
            "settings": dataclasses.asdict(s), "grids": {a: grids[a] for a in study.ALL_ARMS},
            "facts": grids["_facts"], "pilot": {"runs": pilot, "rate": rate}, "runs": runs,
            "versions": {"python": "3.11", "keras": "3.15.1", "tensorflow": "2.21.0",
                         "numpy": "2", "backend": "tensorflow", "machine": "x86_64", "cpus": 2},
            "searches": 200, "timing": dict(study.MEASURED_TIMING)}


def test_summarize_and_analyse():
    res = _fake_results()
    summary = study.summarize(res["runs"])
    assert [len(summary[a]) for a in study.ALL_ARMS] == [4, 4, 2, 2, 2]
    p = summary["sphere"][0]
    assert p["scores"] == pytest.approx([0.93, 0.94, 0.96])
    # mean 0.94333; std (ddof=1) = sqrt((0.01333² + 0.00333² + 0.01667²)/2) = 0.0152753
    assert p["mean"] == pytest.approx(0.943333, rel=1e-5) and p["std"] == pytest.approx(0.0152753, rel=1e-5)
    an = study.analyse(summary, searches=200)
    # the best of all arms is that sphere point (the others peak at 0.95 − 2·θ_min + 0.0133)
    assert an["overall_arm"] == "sphere" and an["best_mean"] == pytest.approx(0.943333, rel=1e-5)
    assert an["targets"]["best_std"] == pytest.approx(0.943333 - 0.0152753, rel=1e-5)
    assert an["pooled_std"] == pytest.approx(0.0152753, rel=1e-5)  # every point has the same spread
    assert an["arms"]["sphere"]["trials_used"] == 6 and an["arms"]["decoupled"][
        "trials_used"] == 12
    assert an["arms"]["sphere"]["reaches_target"] is True
    assert an["arms"]["decoupled"]["reaches_target"] is False
    # the target 0.92806: all 3 scores of the best sphere point, none of the other one
    assert an["arms"]["sphere"]["search"]["best_std"]["p_hit"] == pytest.approx(3 / 6)
    assert an["arms"]["decoupled"]["search"]["best_std"]["p_hit"] == 0.0
    # the reference gets the numbers too, and sets nothing
    assert an["arms"]["none"]["best"]["mean"] == pytest.approx(0.5 + 0.04 / 3)
    better = study.analyse(study.summarize(_fake_results(reference_best=0.99)["runs"]),
                           searches=50)
    assert better["overall_arm"] == "sphere" and better["best_mean"] == pytest.approx(0.943333,
                                                                                     rel=1e-5)
    assert better["arms"]["none"]["reaches_target"] is True


def test_render_writes_report_table_and_figures(tmp_path):
    out = tmp_path / "docs" / "study_eta_only"
    out.mkdir(parents=True)
    res = _fake_results()
    (out / "results.json").write_text(json.dumps(res))
    path = study.render(str(out))
    assert path == str(out) + ".md"
    text = open(path).read()
    assert "python -m experiments.eta_only --quick" in text and "**Quick mode**" in text
    assert "**The claim holds here.**" in text and "does not hold" not in text
    assert "(e) reference, no decay" in text and "For context, the reference" in text
    assert "λ acts on the four BN'd conv kernels only" in text
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert os.path.getsize(tmp_path / "docs" / link) > 1000, link
    assert {os.path.basename(p) for p in re.findall(r"\(([^)]+\.png)\)", text)} == {
        "heatmaps.png", "accuracy_vs_theta.png", "search.png"}
    # one summary row per arm, one row per grid point
    for letter in "abcde":
        assert f"| ({letter}) " in text
    assert len(re.findall(r"^\| \([abcde]\) \| ", text, re.MULTILINE)) == 14
    assert "$" not in text.replace("$ ", "")  # every placeholder filled
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 14 and rows[0]["arm"] == "decoupled" and rows[-1]["arm"] == "none"
    assert float(rows[0]["mean"]) == pytest.approx(study.summarize(res["runs"])["decoupled"][0][
        "mean"], abs=1e-4)


def test_render_verdict_follows_the_numbers(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    fake = _fake_results(sphere_best=0.6, reference_best=0.99)
    fake["settings"]["decay_scope"] = "all"
    (out / "results.json").write_text(json.dumps(fake))
    text = open(study.render(str(out))).read()
    assert "**The claim does not hold here.**" in text and "holds here.**" not in text.replace(
        "does not hold here.**", "")
    assert "**The reference without any decay does better than all four arms**" in text
    # its measured angle (0.02) is below the equilibrium floor of the quick budget (0.0281)
    assert "0.02 rad/step, below this budget's equilibrium floor (0.0281 rad/step" in text
    assert "Without decay the norms grow and the rotation slows down by itself" in text
    assert "as long as the grid runs" not in text  # the quick pilots are shorter
    assert "λ acts on every kernel, the classifier's included" in text


def test_template_and_render_errors(tmp_path):
    bad = tmp_path / "t.md"
    bad.write_text("<!-- @section report -->\nx\n")
    with pytest.raises(ValueError, match=r"`path`.*missing: \['arm_row'.*Received: path="):
        study.load_template(str(bad))
    with pytest.raises(ValueError, match=r"`out_dir` must hold a results.json.*Received: "
                                         r"out_dir="):
        study.render(str(tmp_path / "nothing"))
    # every section the renderer uses is in the shipped template
    assert set(study.SECTIONS) <= set(study.load_template())


# ------------------------------------------------------------------ errors
def test_argument_errors():
    with pytest.raises(ValueError, match=r"`epochs`.*Received: epochs=0"):
        study.make_settings(epochs=0)
    with pytest.raises(ValueError, match=r"`seeds`.*Received: seeds=\(1, 1\)"):
        study.make_settings(seeds=(1, 1))
    with pytest.raises(ValueError, match=r"`eta_grid`.*Received: eta_grid=\(0.1, -1\)"):
        study.make_settings(eta_grid=(0.1, -1))
    with pytest.raises(ValueError, match=r"`score_epochs`.*Received: score_epochs=5"):
        study.make_settings(epochs=2, score_epochs=5)
    with pytest.raises(ValueError, match=r"`backend`.*Received: backend='numpy'"):
        study.make_settings(backend="numpy")
    with pytest.raises(ValueError, match=r"`arm`.*Received: arm='l2'"):
        study.equilibrium_theta("l2", 0.1, 0.1, ALPHA)
    with pytest.raises(ValueError, match=r"`scores_by_point`.*Received: scores_by_point=\[\]"):
        study.search_trials([], 0.5, budget=3)
    with pytest.raises(ValueError, match=r"`budget`.*Received: budget=0"):
        study.search_trials([[0.5]], 0.5, budget=0)
    with pytest.raises(ValueError, match=r"`budget` must be at most the 1 grid points.*"
                                         r"Received: budget=2"):
        study.search_trials([[0.5]], 0.5, budget=2, replace=False)
    with pytest.raises(ValueError, match=r"`target`.*Received: target=nan"):
        study.search_trials([[0.5]], float("nan"), budget=1)
    with pytest.raises(ValueError, match=r"`etas` and `thetas`.*Received: etas=\[0.1\], "
                                         r"thetas=\[-1.0\]"):
        study.fit_rate([0.1], [-1.0])
    with pytest.raises(ValueError, match=r"`rate\['p'\]`.*Received: rate\['p'\]=0.0"):
        study.sphere_eta_grid(0.01, 0.1, 3, {"c": 1.0, "p": 0.0})
    with pytest.raises(ValueError, match=r"`p`.*Received: p=1.5"):
        study.geometric_quantile(1.5, 0.5)


def test_estimate_and_dry_run(capsys):
    # 192 runs × (20 epochs × 0.5 s + 5 s) over 2 workers = 1440 s
    assert study.estimate_seconds(192, 20, workers=2, s_per_epoch=0.5,
                                  overhead_s=5) == pytest.approx(1440)
    assert study.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "219 runs × 20 epochs" in out and "(a) decoupled: 25 points × 3 seeds" in out
    assert "(e) none: 5 points × 3 seeds" in out
    assert "ηλ >= 0.00075" in out and "min" in out
    # --set: any other setting
    assert study.main(["--dry-run", "--set", "n_tau=2", "--set", "reference=False",
                       "--set", "eta_grid=(0.05, 0.1)"]) == 0
    out = capsys.readouterr().out
    assert "ηλ >= 0.0005 (= 2/(2·2000))" in out and "(e) none" not in out
    assert "(a) decoupled: 10 points × 3 seeds; η [0.05, 0.1]" in out
    assert study.main(["--dry-run", "--set", "speed=3"]) == 2
    assert "Unknown study setting(s) ['speed']" in capsys.readouterr().err
    assert study.main(["--dry-run", "--set", "decay_scope=some"]) == 2
    assert "Received: decay_scope='some'" in capsys.readouterr().err


# ------------------------------------------------------------------ the command
def test_cli_study_eta_only(monkeypatch, capsys, tmp_path):
    calls = []
    # the command's code lives in experiments/eta_only/study.py: patch it there
    monkeypatch.setattr("experiments.eta_only.study.run_study",
                        lambda s, out, **kw: calls.append((s, out, kw)))
    out = str(tmp_path / "s")
    assert cli.main(["study", "eta-only", "--epochs", "4", "--out", out]) == 0
    (s, got_out, kw), = calls
    assert s.epochs == 4 and got_out == out and not s.quick
    assert kw == {"command": f"keras-normreg experiment eta-only --epochs 4 --out {out}"}
    # the study's own defaults when the options are left out
    assert cli.main(["study", "eta-only"]) == 0
    assert calls[1][0].epochs == 20 and calls[1][1] == study.DEFAULT_OUT
    assert calls[1][2] == {"command": "keras-normreg experiment eta-only"}
    assert cli.main(["study", "eta-only", "--epochs", "0"]) == 2
    assert "Received: epochs=0" in capsys.readouterr().err
    # python -m experiments.eta_only --quick
    assert study.main(["--quick", "--out", out]) == 0
    assert calls[-1][0].quick and calls[-1][0].seeds == (1,)
    assert calls[-1][2] == {"command": f"python -m experiments.eta_only --quick --out {out}"}
    # every option that reproduces the run, in order, --set items shell-quoted
    assert study.main(["--epochs", "3", "--workers", "1", "--out", out,
                       "--set", "eta_grid=(0.1, 0.2)"]) == 0
    assert calls[-1][2] == {"command": "python -m experiments.eta_only --epochs 3 --workers 1 "
                                       f"--out {out} --set 'eta_grid=(0.1, 0.2)'"}


def test_cli_study_l2_vs_bn_keeps_its_defaults(monkeypatch):
    from experiments import l2_vs_bn

    calls = []
    monkeypatch.setattr(l2_vs_bn, "run_l2_vs_bn",
                        lambda **kw: calls.append(kw) or {"report": "r.md", "total_seconds": 1})
    assert cli.main(["study", "l2-vs-bn"]) == 0
    assert calls[0]["epochs"] == 30 and calls[0]["out_dir"] == "docs/study_l2_vs_bn"


# ------------------------------------------------------------------ the miniature, end to end
@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path):
    """`--quick`: 2 pilots (1 epoch) + 14 runs of 2 epochs on 2 worker processes (~2 min on
    the shared 2-core machine): results, table, figures and report."""
    out = tmp_path / "docs" / "study_eta_only"
    res = study.run_study(study.make_settings(quick=True), str(out), verbose=0)
    assert res["report"] == str(out) + ".md"
    assert not (out / "partial_runs.jsonl").exists()  # the progress log goes at the end
    saved = json.load(open(out / "results.json"))
    assert saved["command"] == "python -m experiments.eta_only --quick"
    assert {"keras", "jax", "python", "backend", "threads_per_worker"} <= set(saved["versions"])
    assert saved["versions"]["backend"] == "jax" and saved["date"].endswith("UTC")
    assert len({r["worker"] for r in saved["runs"]}) == 2  # two worker processes
    assert len(saved["runs"]) == 14 and len(saved["pilot"]["runs"]) == 2
    assert [sum(r["arm"] == a for r in saved["runs"]) for a in study.ALL_ARMS] == [4, 4, 2, 2, 2]
    # λ acts on the BN'd conv kernels only; the sphere arm retracts them, decays nothing
    convs = [f"block{i}_conv/kernel" for i in range(1, 5)]
    for r in saved["runs"]:
        t = r["treatment"]
        assert t == {"decoupled": {"decay": convs, "sphere": [], "penalty": []},
                     "eta_lambda": {"decay": convs, "sphere": [], "penalty": []},
                     "coupled": {"decay": [], "sphere": [], "penalty": convs},
                     "sphere": {"decay": [], "sphere": convs, "penalty": []},
                     "none": {"decay": [], "sphere": [], "penalty": []}}[r["arm"]], r["arm"]
    for r in saved["runs"]:
        assert 0.0 <= r["score"] <= 1.0 and r["seconds"] > 0
        if not r["diverged"]:
            assert r["theta_measured"] > 0  # monitored in the last epoch
        if r["arm"] == "sphere" and not r["diverged"]:
            assert r["unit_norm"] == pytest.approx(1.0, abs=1e-3)
    # the measured equilibrium angle of the decoupled runs is within a factor 2 of the theory
    dec = [r for r in saved["runs"] if r["arm"] == "decoupled" and not r["diverged"]]
    assert all(0.5 < r["theta_measured"] / r["theta_pred"] < 2 for r in dec)
    text = open(res["report"]).read()
    assert "**Quick mode**" in text and "**Verdict.**" in text
    for name in ("heatmaps.png", "accuracy_vs_theta.png", "search.png", "table.csv"):
        assert os.path.getsize(out / name) > 100, name
    # re-rendering from results.json gives the same report
    again = copy.deepcopy(text)
    assert open(study.render(str(out))).read() == again


def test_duplicate_points_are_reported_not_reused():
    """The full grids share one configuration between (a) and (d): η = 0.1, λ = 0.12 (ηλ =
    0.012); both are trained and the report shows both results."""
    g = study.arm_grids(study.make_settings())
    shared = [(d["eta"], d["lambda"]) for d in g["eta_lambda"] for a in g["decoupled"]
              if math.isclose(d["eta"], a["eta"]) and math.isclose(d["lambda"], a["lambda"])]
    assert shared == [(0.1, pytest.approx(0.12))]
    point = {"eta": 0.1, "lambda": 0.12, "scores": [0.9, 0.91]}
    other = {"eta": 0.1, "lambda": 0.24, "scores": [0.8, 0.8]}
    text = study._duplicates(study.load_template(), {"decoupled": [point, other],
                                                     "eta_lambda": [dict(point, scores=[0.9,
                                                                                        0.92])]})
    assert "Nothing is reused" in text
    assert "η = 0.1, λ = 0.12, scores per seed (a) 0.9000, 0.9100, (d) 0.9000, 0.9200" in text
    assert study._duplicates(study.load_template(), {"decoupled": [other],
                                                     "eta_lambda": [point]}) == ""


@pytest.mark.slow
def test_a_run_does_not_depend_on_the_runs_before_it():
    """A worker trains many runs in one process: the same task gives the same record whatever
    ran before it (TensorFlow mixes its global seed into tf.data's shuffles, so train_one seeds
    before building the streams). Run as the study runs it: one spawned worker, one thread,
    the study's backend. ~40 s."""
    settings = study.make_settings(quick=True, workers=1)
    s = dataclasses.asdict(settings)

    def task(arm, eta, lam, seed):
        return {"settings": s, "arm": arm, "point": 0, "seed": seed, "epochs": 2,
                "grid_point": {"eta": eta, "lambda": lam,
                               "eta_lambda": None if lam is None else eta * lam,
                               "theta_pred": float("nan")}}

    tasks = [task("decoupled", 0.1, 0.12, 1), task("sphere", 0.05, None, 2),
             task("decoupled", 0.1, 0.12, 1)]
    with environ(study._worker_env(settings)), concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")) as pool:
        first, _, again = pool.map(study.train_one, tasks)
    assert first["worker"] == again["worker"]
    for key in ("val_accuracy_last", "train_loss", "theta_measured", "unit_norm"):
        assert again[key] == first[key], key


def test_settings_defaults_follow_the_epochs():
    s = study.make_settings(epochs=3)
    assert s.score_epochs == 3 and s.pilot_epochs == 3
    s = study.make_settings(epochs=30)
    assert s.score_epochs == 5 and s.pilot_epochs == 30 and s.total_steps() == 3000
    q = study.make_settings(quick=True)
    assert (q.epochs, q.score_epochs, q.pilot_epochs, q.seeds) == (2, 1, 1, (1,))


def test_equilibrium_steps_hand_values():
    # Δθ = 0.001, α = 0.9: ηλ = 1e-6·1.9/0.2 = 9.5e-6, τ = 1/(2·9.5e-6) = 52631.58 steps
    need = study.equilibrium_steps(0.001, 0.9, 3)
    assert need["eta_lambda"] == pytest.approx(9.5e-6)
    assert need["tau"] == pytest.approx(52631.58, rel=1e-6)
    assert need["steps"] == pytest.approx(157894.74, rel=1e-6)
    # the inverse of the library's equilibrium angle for decoupled SGD
    el = study.equilibrium_steps(0.02, 0.9, 1)["eta_lambda"]
    assert study.equilibrium_theta("decoupled", 0.1, el / 0.1, 0.9) == pytest.approx(0.02)
    with pytest.raises(ValueError, match=r"`theta`.*Received: theta=0"):
        study.equilibrium_steps(0, 0.9, 3)
