"""`keras-normreg experiment NAME` runs a document-producing experiment of the source checkout;
`keras-normreg study NAME`, its old name, runs the same thing after a one-line note on stderr.
(A "study" is now only a keras-tuner search: `keras-normreg tune`.)"""

import os

import pytest

from experiments import l2_vs_bn
from keras_normreg import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTE = "keras-normreg study: note: the command is now `keras-normreg experiment`"


def _fake_l2_vs_bn(monkeypatch):
    calls = []
    monkeypatch.setattr(l2_vs_bn, "run_l2_vs_bn",
                        lambda **kw: calls.append(kw) or {"report": kw["out_dir"] + ".md",
                                                          "total_seconds": 1.0})
    return calls


def test_one_table_of_experiments_each_a_module_of_the_checkout():
    assert sorted(cli.EXPERIMENTS) == ["eta-only", "grokking", "l2-vs-bn"]
    for module in cli.EXPERIMENTS.values():
        assert os.path.isfile(os.path.join(ROOT, *module.split(".")) + ".py"), module
    assert not hasattr(cli, "STUDIES")  # the one table is EXPERIMENTS


def test_experiment_and_study_run_the_same_experiment(monkeypatch, capsys, tmp_path):
    calls = _fake_l2_vs_bn(monkeypatch)
    out = str(tmp_path / "s")
    assert cli.main(["experiment", "l2-vs-bn", "--epochs", "3", "--out", out]) == 0
    captured = capsys.readouterr()
    assert f"report: {out}.md" in captured.out
    assert captured.err == ""  # the new name: no note
    assert cli.main(["study", "l2-vs-bn", "--epochs", "3", "--out", out]) == 0
    captured = capsys.readouterr()
    assert f"report: {out}.md" in captured.out
    # the old name: exactly one line on stderr, the note naming the new command
    assert captured.err.count("\n") == 1 and captured.err.startswith(NOTE)
    assert len(calls) == 2 and calls[0] == calls[1]
    assert calls[0]["epochs"] == 3 and calls[0]["out_dir"] == out


@pytest.mark.parametrize("command", ["experiment", "study"])
def test_unknown_experiment_is_refused_with_the_names(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "bn-vs-l2"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bn-vs-l2'" in err
    assert "'l2-vs-bn', 'eta-only', 'grokking'" in err


def test_study_outside_a_source_checkout_notes_then_errors(monkeypatch, capsys, tmp_path):
    calls = _fake_l2_vs_bn(monkeypatch)
    monkeypatch.setattr(cli, "_source_root", lambda: str(tmp_path))
    assert cli.main(["study", "l2-vs-bn", "--epochs", "1", "--out", str(tmp_path / "s")]) == 2
    note, error = capsys.readouterr().err.splitlines()
    assert note.startswith(NOTE)
    assert error.startswith("keras-normreg study: error: ") and "source checkout" in error
    assert "keras-normreg experiment l2-vs-bn" in error  # the command to run there
    assert calls == []


def test_help_names_experiment_and_its_old_name(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "experiment (study)" in out and "`study` is its old name" in out
