"""bench/bench_monitor.py in its --quick mode (so it cannot rot)."""

import importlib.util
import json
import pathlib

import pytest

# A benchmark script (slow-marked): run once, on TensorFlow.
pytestmark = pytest.mark.tf_only

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "bench" / "bench_monitor.py"


@pytest.mark.slow
def test_bench_monitor_quick(capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("_bench_monitor_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--quick", "--every", "3", "--json", str(tmp_path / "m.json")])
    assert result["every_n_steps"] == 3
    assert result["tracked"] == [f"block{i}_conv/kernel" for i in range(1, 5)]
    assert result["step_ms_off"] > 0 and result["step_ms_on"] > 0
    assert 0 < result["hook_fraction"] < 1
    out = capsys.readouterr().out
    assert "ratio with/without" in out and "time inside the monitor's hooks" in out
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["hook_fraction"] == result["hook_fraction"]
    assert saved["command"].endswith("--every 3 --json " + str(tmp_path / "m.json"))
