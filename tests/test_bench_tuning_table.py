"""The tabular tuning benchmark (bench/_tabular.py, bench_tuning.py --only tabular) on tiny
synthetic tables, against hand-derived values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.test_bench_smoke import _load

ETAS = [0.01, 0.1, 1.0]
LAMS = [1e-6, 1e-4, 1e-2]
# 1.0 only at (η = 0.1, λ = 1e-4), 0.5 elsewhere; unit norm: 1.0 only at η = 0.1
SCORE = [[0.5, 0.5, 0.5], [0.5, 1.0, 0.5], [0.5, 0.5, 0.5]]


def _table():
    return {"complete": True, "command": "synthetic", "model": {"epochs": 0, "seed": 0},
            "grids": {"decoupled": {"decay": "decoupled", "learning_rate": ETAS,
                                    "lambda": LAMS, "score": SCORE},
                      "unit_norm": {"decay": "unit_norm", "learning_rate": ETAS,
                                    "lambda": None, "score": [0.5, 1.0, 0.5]}}}


def _good(eta, lam):
    """The 1.0 cell by hand: log10 η in (-1.5, -0.5], log10 λ in (-5, -3]."""
    a, b = math.log10(eta), math.log10(lam)
    return -1.5 < a <= -0.5 and -5 < b <= -3


def test_log_grid_and_nearest_index_hand_values():
    tab = _load("_tabular")
    assert tab.log_grid(0.01, 1.0, 3) == pytest.approx([0.01, 0.1, 1.0])
    assert tab.log_grid(1e-6, 10, 15)[1] == pytest.approx(10 ** -5.5)
    idx = tab.nearest_index(ETAS, [0.05, 0.03, 1e-5, 100.0, 0.3, 0.32])
    # log10: -1.30 -> 0.1; -1.52 -> 0.01; below / above the grid -> edges;
    # -0.52 -> 0.1; -0.49 -> 1
    assert idx.tolist() == [1, 0, 0, 2, 1, 2]
    # exactly half-way in log (log 2 = (log 1 + log 4) / 2): the lower value
    assert int(tab.nearest_index([1.0, 4.0], 2.0)) == 0
    with pytest.raises(ValueError, match="grid="):
        tab.nearest_index([0.1, 0.01], 0.05)
    with pytest.raises(ValueError, match="x="):
        tab.nearest_index(ETAS, -1.0)


def test_lookup_hand_values():
    tab = _load("_tabular")
    entry = {"learning_rate": ETAS, "lambda": [1e-4, 1e-2],
             "score": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]}
    # η 0.05 -> 0.1 (row 1); λ 2e-3 is above the log midpoint 1e-3 -> 1e-2 (column 1)
    assert float(tab.lookup(entry, 0.05, 2e-3)) == 0.4
    assert float(tab.lookup(entry, 0.05, 5e-4)) == 0.3
    assert float(tab.lookup(entry, 0.9, 1e-7)) == 0.5  # λ below the grid: edge
    f = tab.table_objective(entry)
    # a product-parametrization point: λ = ηλ / η = 2e-4 / 0.02 = 1e-2; η 0.02 -> 0.01
    assert f({"learning_rate": 0.02, "lambda": 1e-2, "eta_lambda": 2e-4}) == 0.2
    one_d = {"learning_rate": ETAS, "lambda": None, "score": [0.7, 0.8, 0.9]}
    assert float(tab.lookup(one_d, 0.4)) == 0.9
    with pytest.raises(ValueError, match="lam="):
        tab.lookup(one_d, 0.4, 1e-3)
    with pytest.raises(ValueError, match="shape="):
        tab.lookup({"learning_rate": ETAS, "lambda": LAMS, "score": [1, 2, 3]}, 0.1, 1e-4)


def test_volume_fractions_and_targets_hand_values():
    tab = _load("_tabular")
    table = _table()
    arms = tab.arms_for(table)
    assert set(arms) == {"naive", "product", "unit_norm"}
    # product box: ηλ in [λ_min η_max, λ_max η_min] = [1e-6, 1e-4]; naive box covers it
    assert arms["product"]["space"]["eta_lambda"]["min"] == pytest.approx(1e-6)
    assert arms["product"]["space"]["eta_lambda"]["max"] == pytest.approx(1e-4)
    assert arms["naive"]["space"]["lambda"]["min"] == pytest.approx(1e-6)
    assert arms["naive"]["space"]["lambda"]["max"] == pytest.approx(1e-2)
    vol = {a: tab.volume_scores(table, arms[a], 1000) for a in arms}
    # naive: the middle cell is half of each log axis -> 1/2 * 1/2
    assert tab.fraction_reaching(vol["naive"], 1.0) == pytest.approx(0.25, abs=1e-12)
    # product, in (u, v) = (log10 η, log10 ηλ) over [-2, 0] x [-6, -4]: the cell is
    # u in (-1.5, -0.5), v - u in (-5, -3): area 0.875 + 0.875 = 1.75 of 4
    assert tab.fraction_reaching(vol["product"], 1.0) == pytest.approx(0.4375, abs=2e-3)
    assert tab.fraction_reaching(vol["unit_norm"], 1.0) == pytest.approx(0.5, abs=1e-12)
    assert tab.fraction_reaching(vol["naive"], 0.5) == 1.0
    assert tab.targets_from_quantiles(vol["naive"], [0.1, 0.25, 0.26]) == [1.0, 1.0, 0.5]
    assert tab.targets_from_quantiles([0.9, 0.8, 0.8, 0.7, 0.5], [0.2, 0.4, 0.6, 0.61]) == \
        [0.9, 0.8, 0.8, 0.7]
    e = tab.random_search_expectation(0.5, 3)
    assert e == {"mean": 2.0, "median": 1, "p_miss": 0.125}
    assert tab.random_search_expectation(0.1, 30)["median"] == 7  # ln .5 / ln .9 = 6.58
    s = tab.summarize_counts([1, None, 3], 4)
    assert s["median_censored"] == 3 and s["mean_censored"] == 3.0 and s["reached"] == 2
    lo, hi = tab.bootstrap_ratio_ci([4, 4, 4], [2, 2, 2], n=50)
    assert lo == hi == 2.0


def test_search_against_table_counts_trials_by_hand():
    from experiments import compare

    tab = _load("_tabular")
    table = _table()
    arms = tab.arms_for(table)
    for name in ("naive", "product"):
        seen = []
        f = tab.table_objective(table["grids"]["decoupled"])

        def recorder(point, f=f, seen=seen):
            seen.append((point["learning_rate"], point["lambda"]))
            return f(point)

        scores = compare.search_scores(recorder, arms[name]["space"], budget=8, seed=3,
                                       tuner="random")
        assert len(scores) == len(seen) == 8
        expected = [1.0 if _good(eta, lam) else 0.5 for eta, lam in seen]
        assert scores == expected
        by_hand = next((i + 1 for i, (eta, lam) in enumerate(seen) if _good(eta, lam)), None)
        assert compare.trials_to_target(scores, 1.0) == by_hand
    # everything reaches 0.5 at the first trial; nothing reaches 1.1
    sims = tab.simulate(table, arms, tuner="random", budget=3, seeds=[0, 1])
    assert set(sims) == {"naive", "product", "unit_norm"}
    for runs in sims.values():
        assert [compare.trials_to_target(v, 0.5) for v in runs] == [1, 1]
        assert tab.summarize_counts([compare.trials_to_target(v, 1.1) for v in runs],
                                    3)["median_censored"] == 4


def test_bench_tuning_tabular_part_on_synthetic_table(tmp_path, capsys):
    module = _load("bench_tuning")
    path = tmp_path / "table.json"
    path.write_text(json.dumps(_table()))
    res = module.main(["--quick", "--only", "tabular", "--table", str(path), "--tuners",
                       "random", "--quantiles", "0.1,0.2,0.5"])["tabular"]
    m = res["modes"]["decoupled"]
    # the best 10 % and 20 % of the naive box both score 1.0 (its share is 25 %): one target
    assert [r["target"] for r in m["targets"]] == [1.0, 0.5]
    assert [r["quantiles"] for r in m["targets"]] == [[0.1, 0.2], [0.5]]
    fr = m["targets"][0]["volume_fraction"]
    # --quick: 100 midpoints per axis
    assert fr["naive"] == pytest.approx(0.25) and fr["unit_norm"] == pytest.approx(0.5)
    assert fr["product"] == pytest.approx(0.4375, abs=0.02)
    rows = m["searches"]["random"]["rows"]
    assert rows[1]["ratio"] == {"product": 1.0, "unit_norm": 1.0}  # target 0.5: trial 1
    scores = m["searches"]["random"]["scores"]
    for a in ("naive", "product", "unit_norm"):
        counts = [next((i + 1 for i, v in enumerate(s) if v >= 1.0), None) for s in scores[a]]
        assert rows[0]["arms"][a]["trials"] == counts
        assert len(scores[a]) == 2 and all(len(s) == 4 for s in scores[a])
        assert all(np.isin(s, [0.5, 1.0]).all() for s in scores[a])
    assert "naive / product [95% CI]" in capsys.readouterr().out


def test_bench_tuning_tabular_rejects_incomplete_table(tmp_path):
    module = _load("bench_tuning")
    path = tmp_path / "table.json"
    path.write_text(json.dumps({**_table(), "complete": False}))
    with pytest.raises(ValueError, match="table="):
        module.main(["--quick", "--only", "tabular", "--table", str(path)])
    with pytest.raises(SystemExit):
        module.main(["--quick", "--only", "tabular", "--tuners", "grid"])


@pytest.mark.slow
def test_bench_tuning_quick_table_then_tabular(tmp_path):
    module = _load("bench_tuning")
    path = tmp_path / "table.json"
    res = module.main(["--quick", "--only", "table,tabular", "--table", str(path),
                       "--tuners", "random"])
    saved = json.loads(path.read_text())
    assert saved["complete"] and saved["wall_seconds"] > 0
    assert saved["model"]["epochs"] == 1 and saved["model"]["arch"] == "cnn_digits"
    d, u = saved["grids"]["decoupled"], saved["grids"]["unit_norm"]
    assert np.asarray(d["score"]).shape == (2, 2) and len(u["score"]) == 2
    assert all(0.0 <= v <= 1.0 for row in d["score"] for v in row)
    assert set(res["tabular"]["modes"]) == {"decoupled"}
