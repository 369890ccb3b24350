"""The l2-vs-bn study (a 1-epoch miniature), its report template, its plots and the
`keras-normreg experiment` command. The experiment itself is experiments/l2_vs_bn.py of the checkout."""

import copy
import csv
import json
import os
import re

import numpy as np
import pytest

from experiments import l2_vs_bn as study
from keras_normreg import cli
from keras_normreg.diagnostics import plots

# A study of experiments/ (its report, plots and command): runs on TensorFlow only.
pytestmark = pytest.mark.tf_only

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "study_l2_vs_bn")


@pytest.mark.slow
def test_mini_study_writes_report_figures_and_data(tmp_path):
    """~15 s (three 1-epoch runs): slow-marked; the CLI and plot tests below stay fast."""
    out = tmp_path / "docs" / "study_l2_vs_bn"
    res = study.run_l2_vs_bn(epochs=1, out_dir=str(out), l2_values=(1e-2,), match_l2=1e-2,
                             no_bn=False)
    report = str(out) + ".md"
    assert res["report"] == report and os.path.exists(report)
    text = open(report).read()
    assert f"keras-normreg experiment l2-vs-bn --epochs 1 --out {out}" in text
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert os.path.getsize(os.path.join(tmp_path, "docs", link)) > 1000, link
    assert {os.path.basename(p) for p in re.findall(r"\(([^)]+\.png)\)", text)} == {
        "norm.png", "effective_lr.png", "angular_update.png", "accuracy.png"}
    assert [r["kind"] for r in res["runs"]] == ["bn_l2", "bn_unit", "bn_pinned"]
    for label in ("BN, L2 0.01", "BN, unit norm", "BN, norms pinned"):
        assert f"| {label}" in text
    assert "| block1_conv/kernel | yes | yes |" in text  # the auditor table
    saved = json.load(open(out / "results.json"))
    assert saved["command"] == res["command"] and len(saved["runs"]) == 3

    with open(out / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 5  # 3 runs x 5 kernels x 1 epoch
    # matching, recomputed from the CSV: η_unit = η / mean over conv layers of ‖w_j‖²
    ref = {r["variable"]: float(r["unit_norm"]) for r in rows
           if r["run"] == "bn_l2_0.01" and "conv" in r["variable"]}
    assert len(ref) == 4
    expected_lr = 0.1 / np.mean([v ** 2 for v in ref.values()])
    np.testing.assert_allclose(res["matched"]["learning_rate"], expected_lr, rtol=1e-4)
    np.testing.assert_allclose(res["runs"][1]["lr"], expected_lr, rtol=1e-4)
    # the unit-norm and pinned runs hold their norms (the last step of each epoch is exact;
    # the epoch mean is within float tolerance)
    for r in rows:
        if r["run"] == "bn_unit_norm" and "conv" in r["variable"]:
            np.testing.assert_allclose(float(r["unit_norm"]), 1.0, rtol=1e-4)
        if r["run"] == "bn_pinned" and "conv" in r["variable"]:
            np.testing.assert_allclose(float(r["unit_norm"]), ref[r["variable"]], rtol=1e-4)


def test_plot_monitor_csv(tmp_path):
    path = tmp_path / "m.csv"
    with open(path, "w") as f:
        f.write("step,epoch,variable,lr,norm,effective_lr,angular_update,"
                "predicted_angular_update\n")
        for t in range(5):
            for v in ("a/kernel", "b/kernel"):
                f.write(f"{t},0,{v},0.1,{1 + t},{0.1 / (1 + t) ** 2},0.01,nan\n")
    data = plots.read_monitor_csv(path)
    np.testing.assert_allclose(data["b/kernel"]["norm"], [1, 2, 3, 4, 5])
    png = plots.plot_monitor_csv(path, tmp_path / "fig" / "norm.png")
    assert os.path.getsize(png) > 1000
    with pytest.raises(ValueError, match=r"`metric`.*Received: metric='speed'"):
        plots.plot_monitor_csv(path, tmp_path / "x.png", metric="speed")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a NormMonitor CSV"):
        plots.read_monitor_csv(bad)
    with pytest.raises(ValueError, match=r"`panels`"):
        plots.line_grid(tmp_path / "y.png", [], ylabel="y")


def test_run_l2_vs_bn_errors(tmp_path):
    out = str(tmp_path / "s")
    with pytest.raises(ValueError, match=r"`epochs`.*Received: epochs=0"):
        study.run_l2_vs_bn(epochs=0, out_dir=out)
    with pytest.raises(ValueError, match=r"`l2_values`.*Received: l2_values=-1"):
        study.run_l2_vs_bn(epochs=1, out_dir=out, l2_values=(0, -1))
    with pytest.raises(ValueError, match=r"`l2_values` must not be empty"):
        study.run_l2_vs_bn(epochs=1, out_dir=out, l2_values=())
    with pytest.raises(ValueError, match=r"`match_l2`.*Received: match_l2=0.5"):
        study.run_l2_vs_bn(epochs=1, out_dir=out, match_l2=0.5)
    with pytest.raises(ValueError, match=r"`out_dir`.*Received: out_dir=''"):
        study.run_l2_vs_bn(epochs=1, out_dir="")
    with pytest.raises(ValueError, match=r"`learning_rate`.*Received: learning_rate=0"):
        study.run_l2_vs_bn(epochs=1, out_dir=out, learning_rate=0)


def test_cli_study(monkeypatch, capsys, tmp_path):
    calls = []

    def fake(**kw):
        calls.append(kw)
        return {"report": kw["out_dir"] + ".md", "total_seconds": 1.0}

    monkeypatch.setattr(study, "run_l2_vs_bn", fake)
    out = str(tmp_path / "s")
    assert cli.main(["study", "l2-vs-bn", "--epochs", "3", "--out", out]) == 0
    assert calls == [{"epochs": 3, "out_dir": out, "verbose": 1,
                      "command": f"keras-normreg experiment l2-vs-bn --epochs 3 --out {out}"}]
    assert f"report: {out}.md" in capsys.readouterr().out
    assert cli.main(["study", "l2-vs-bn", "--epochs", "0"]) == 2
    assert "Received: epochs=0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["study", "bn-vs-l2"])
    assert e.value.code == 2
    assert calls[0]["epochs"] == 3 and len(calls) == 1


def test_cli_study_outside_a_source_checkout(monkeypatch, capsys, tmp_path):
    """A pip-installed package has no experiments/ next to it: one line saying where to run."""
    calls = []
    monkeypatch.setattr(study, "run_l2_vs_bn", lambda **kw: calls.append(kw))
    monkeypatch.setattr(cli, "_source_root", lambda: str(tmp_path))
    assert cli.main(["experiment", "l2-vs-bn", "--epochs", "1", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("keras-normreg experiment: error: ")
    assert "source checkout" in err and str(tmp_path) in err and "pip install -e ." in err
    assert calls == []


def test_cli_finds_the_experiment_in_this_checkout():
    assert os.path.samefile(cli._source_root(), ROOT)
    assert os.path.isfile(os.path.join(cli._source_root(), "experiments", "l2_vs_bn.py"))


def test_report_from_results_json_reproduces_the_committed_doc():
    """docs/study_l2_vs_bn.md was written by the study's in-process report code; rendering the
    template from the results.json saved beside it gives the same text, byte for byte."""
    results, audit = study.load_results(os.path.join(DOC, "results.json"))
    text = study.render_report(results, audit, DOC)
    with open(DOC + ".md", encoding="utf-8") as f:
        assert text == f.read()


def _doc_results():
    return study.load_results(os.path.join(DOC, "results.json"))


def test_report_sections_follow_the_runs():
    results, audit = _doc_results()
    full = study.render_report(copy.deepcopy(results), audit, "out/study")
    for piece in ("**Matched runs.**", "* *unit norm*", "* *norms pinned*", "\n2. **",
                  "\n4. **", "\n5. **", "9.6× less rotation.", "Same effective learning rate",
                  "](study/norm.png)", "`study/epochs.csv`"):
        assert piece in full, piece
    assert "$" not in full  # every placeholder filled
    # no matched runs, no λ = 0, no no-BN runs: those paragraphs go, the others stay
    results["runs"] = [r for r in results["runs"]
                       if r["kind"] == "bn_l2" and r["l2"] != 0.0]
    results["match_l2"] = None
    short = study.render_report(results, audit, "out/study")
    for piece in ("**Matched runs.**", "\n2. **", "\n4. **", "\n5. **", "| no BN", "90% of"):
        assert piece not in short, piece
    assert "\n1. **" in short and "\n3. **" in short and "**Overall.**" in short
    assert "\n\n\n## " not in short and "\n\n## Results" in short  # no stray blank lines
    # a pinned run rotating as much as the λ run: "similar", and no annealing paragraph
    results, audit = _doc_results()
    ref = next(r for r in results["runs"] if r["kind"] == "bn_l2" and r["l2"] == 1e-3)
    for r in results["runs"]:
        if r["kind"] in ("bn_unit", "bn_pinned"):
            r["last_epoch_conv_mean"]["angular_update"] = \
                ref["last_epoch_conv_mean"]["angular_update"]
    similar = study.render_report(results, audit, "out/study")
    assert "a similar rotation." in similar and "Same effective learning rate" not in similar
    assert "keeps rotating like the λ run" not in similar


def test_report_numbers_by_hand():
    """Numbers in the text recomputed from results.json independently of the renderer."""
    results, audit = _doc_results()
    text = study.render_report(results, audit, DOC)
    runs = {r["name"]: r for r in results["runs"]}
    lam = 1e-3
    ref = runs["bn_l2_0.001"]
    measured = ref["last_epoch_conv_mean"]["angular_update"]
    predicted = np.sqrt(2 * 0.1 * 2 * lam / 1.9)  # SGDM equilibrium, λ' = 2λ, α = 0.9
    np.testing.assert_allclose(ref["predicted_angular_update"], predicted, rtol=1e-9)
    assert (f"λ = 0.001: {measured:.3g} vs {predicted:.3g} "
            f"({100 * (measured / predicted - 1):+.0f}%; (1−α)/(8ηλ) ≈ 125 steps)") in text
    effs = [runs[f"bn_l2_{lam:g}"]["last_epoch_conv_mean"]["rms_effective_lr"]
            for lam in (0.0, 1e-5, 1e-4, 1e-3, 1e-2)]
    assert f"a {max(effs) / min(effs):.1f}× range" in text
    steps = results["steps_per_epoch"] * results["epochs"]
    assert steps == 32 * 30 and f"{results['epochs']} epochs ({steps} steps)" in text
    minutes = results["total_seconds"] / 60
    assert f"Produced by (CPU, {minutes:.1f} min wall time" in text


def test_template_errors(tmp_path):
    bad = tmp_path / "t.md"
    bad.write_text("<!-- @section report -->\n# $title\n")
    with pytest.raises(ValueError, match=r"`path`.*missing: \['row'.*Received: path="):
        study.load_template(bad)
    sections = study.load_template()
    assert set(sections) == set(study._SECTIONS)
    sections["row"] = study.string.Template("| $label | $unknown |")
    results, audit = _doc_results()
    with pytest.raises(KeyError, match="unknown"):
        study.render_report(results, audit, "out/study", template=sections)
