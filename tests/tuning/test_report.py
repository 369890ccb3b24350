"""Reports (leaderboard, heatmap) and the progress line, on hand-made trials."""

import csv
import json
import os

import pytest

from keras_normreg.tuning import progress, report, study
from keras_normreg.tuning import spec as nr_spec

from .conftest import TINY


def _row(trial, score, norm, decay, lam=None, lr=0.1, status="COMPLETED"):
    return {"trial": trial, "status": status, "score": score, "norm": norm, "decay": decay,
            "lambda": lam, "learning_rate": lr, "eta_lambda": None if lam is None else lam * lr,
            "epochs": 1, "seconds": 1.5, "worker": "tuner0"}


ROWS = [
    _row("0", 0.80, "none", "decoupled", 1e-4),
    _row("1", 0.90, "batch", "decoupled", 1e-4),
    _row("2", 0.85, "batch", "decoupled", 1e-4, lr=0.2),
    _row("3", 0.70, "batch", "l2", 1e-3),
    _row("4", 0.60, "none", "none"),
    _row("5", 0.95, "batch", "unit_norm"),
    _row("6", None, "none", "l2", 1e-2, status="FAILED"),
]


def test_leaderboard_order():
    rows = report.leaderboard(ROWS, "max")
    assert [r["trial"] for r in rows] == ["5", "1", "2", "0", "3", "4", "6"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5, 6, None]
    rows = report.leaderboard(ROWS, "min")
    assert [r["trial"] for r in rows][:2] == ["4", "3"] and rows[-1]["trial"] == "6"


def test_heatmap_cells_by_hand():
    panels = report.heatmap_cells(ROWS, ["none", "batch"], "max")
    titles = [p[0] for p in panels]
    assert titles == ["decay=l2: λ", "decay=decoupled: λ", "no λ"]
    l2, dec, free = panels
    assert l2[1] == ["0.001"] and l2[2] == {("batch", "0.001"): 0.70}  # the failed trial is out
    # trials 1 and 2 share the (batch, 1e-4) cell: the best (0.90) wins
    assert dec[1] == ["0.0001"] and dec[2] == {("none", "0.0001"): 0.80,
                                               ("batch", "0.0001"): 0.90}
    assert free[1] == ["none", "unit_norm"]
    assert free[2] == {("none", "none"): 0.60, ("batch", "unit_norm"): 0.95}
    # min direction: the lower score of the shared cell
    assert report.heatmap_cells(ROWS, ["none", "batch"], "min")[1][2][("batch", "0.0001")] == 0.85


def test_heatmap_bins_many_lambdas_in_half_decades():
    rows = [_row(str(i), 0.5 + i / 100, "batch", "decoupled", lam)
            for i, lam in enumerate([1.1e-5, 2e-5, 4e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3,
                                     3.5e-3, 8e-3])]
    (title, labels, cells), = report.heatmap_cells(rows, ["batch"], "max")
    # half-decade bins [1e-5, 3.2e-5), [3.2e-5, 1e-4), ..., lower edges as labels
    assert labels == ["1e-05", "3.2e-05", "0.0001", "0.00032", "0.001", "0.0032"]
    assert cells[("batch", "1e-05")] == pytest.approx(0.51)     # 1.1e-5, 2e-5 -> best i=1
    assert cells[("batch", "0.00032")] == pytest.approx(0.56)   # 3e-4, 5e-4 -> i=6
    assert cells[("batch", "0.0032")] == pytest.approx(0.60)    # 3.5e-3, 8e-3 -> i=10


def test_write_reports_files(tmp_path):
    spec = nr_spec.load_study(TINY)
    rows = report.leaderboard(ROWS, "max")
    png = report.write_heatmap(rows, str(tmp_path / "h.png"), spec)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    path = report.write_leaderboard_csv(rows, str(tmp_path / "l.csv"), "val_accuracy")
    with open(path, newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["trial"] for r in got] == ["5", "1", "2", "0", "3", "4", "6"]
    assert got[0]["val_accuracy"] == "0.95" and got[-1]["val_accuracy"] == ""
    md = report.write_leaderboard_md(rows, str(tmp_path / "l.md"), spec,
                                     command="keras-normreg tune x.toml", budget=8)
    text = open(md).read()
    assert "command: `keras-normreg tune x.toml`" in text
    assert "trials done: 7/8" in text
    assert "| 1 | 5 | COMPLETED | 0.9500 | batch | unit_norm |" in text
    assert "λ convention" in text


def test_heatmap_without_completed_trials(tmp_path):
    spec = nr_spec.load_study(TINY)
    png = report.write_heatmap([ROWS[-1]], str(tmp_path / "h.png"), spec)
    assert os.path.getsize(png) > 0


def test_collect_trials_reads_keras_tuner_files(tmp_path):
    d = tmp_path / "trial_03"
    d.mkdir()
    (d / "trial.json").write_text(json.dumps({
        "trial_id": "03", "status": "COMPLETED", "score": 0.5, "best_step": 2,
        "hyperparameters": {"values": {"norm": "batch", "decay": "decoupled",
                                       "learning_rate": 0.1, "lambda": 1e-3}}}))
    (d / "result.json").write_text(json.dumps({
        "seconds": 3.5, "tuner_id": "tuner1", "executions": [{"epochs": 4}]}))
    (row,) = report.collect_trials(str(tmp_path))
    assert row["trial"] == "03" and row["lambda"] == 1e-3
    assert row["eta_lambda"] == pytest.approx(1e-4)
    assert (row["epochs"], row["seconds"], row["worker"]) == (4, 3.5, "tuner1")


# -- progress -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seconds, text", [(0, "0s"), (45, "45s"), (80, "1m20s"),
                                           (3599, "59m59s"), (7500, "2h05m")])
def test_format_duration(seconds, text):
    assert study.format_duration(seconds) == text


def test_progress_line():
    assert study.progress_line(3, 12, "val_accuracy", 0.93, 80) == \
        "trial 3/12 done, best val_accuracy 0.9300, ETA 1m20s"
    assert study.progress_line(1, None, "val_loss", None, None) == \
        "trial 1/? done, best val_loss n/a, ETA ?"


def test_eta_from_session_pace(monkeypatch):
    class FakeOracle:
        pass

    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    display = study.ProgressDisplay(FakeOracle(), total=12)
    assert display.eta(0) is None  # nothing finished yet in this session
    now[0] = 120.0
    display.session_done = 2  # 2 trials in 20 s; 2 were done before (resumed): 4/12 done
    assert display.eta(4) == pytest.approx(10.0 * 8)
