"""Strategy resolution, and data-parallel training equal to one device (subprocesses: logical
CPU devices and TF_CONFIG must be set before TensorFlow initializes)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from keras_normreg import distribute
from keras_normreg.data import pipelines

RECIPE = """
name = "dist"
[model]
arch = "cnn_digits"
norm = "none"
overrides = {{ widths = [8, 16] }}
[data]
dataset = "digits"
batch_size = 64
data_dir = "{data_dir}"
augment = false
[optimizer]
name = "sgd"
learning_rate = 0.05
momentum = 0.0
[schedule]
kind = "constant"
[train]
epochs = 2
verbose = 0
output_dir = "{out}"
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(extra)
    return env


def _train_cmd(recipe, out, strategy):
    return [sys.executable, "-m", "keras_normreg.cli", "train", str(recipe),
            "--set", f'train.output_dir="{out}"', "--strategy", strategy]


def _cwd(folder):
    """Each training runs in its own folder: its run state goes to ``runs/<name>`` under the
    working directory, and two trainings of the recipe (this module's tests on two pytest-xdist
    workers, or beside another checkout's run) must not share it."""
    os.makedirs(folder, exist_ok=True)
    return str(folder)


def _history(out):
    with open(os.path.join(out, "dist", "card.json")) as f:
        return json.load(f)["history"]["loss"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    recipe = tmp / "r.toml"
    recipe.write_text(RECIPE.format(data_dir=tmp / "tfds", out=tmp / "single"))
    proc = subprocess.run(_train_cmd(recipe, tmp / "single", "default"), env=_env(),
                          capture_output=True, text=True, timeout=300, cwd=_cwd(tmp))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, recipe, _history(tmp / "single")


def test_mirrored_cpu2_matches_single_device(setup):
    tmp, recipe, single = setup
    out = tmp / "mirrored"
    proc = subprocess.run(_train_cmd(recipe, out, "cpu:2"), env=_env(), capture_output=True,
                          text=True, timeout=300, cwd=_cwd(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((out / "dist" / "card.json").read_text())
    assert card["hardware"]["replicas"] == 2
    assert card["hardware"]["strategy"] == "MirroredStrategy"
    assert _history(out) == pytest.approx(single, rel=1e-3)


def test_multiworker_two_local_workers_match_single_device(setup):
    tmp, recipe, single = setup
    out = tmp / "multi"
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(subprocess.Popen(_train_cmd(recipe, out, "multiworker"),
                                      env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=_cwd(out)))
    errs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        errs.append(err)
        assert p.returncode == 0, err[-3000:]
    card = json.loads((out / "dist" / "card.json").read_text())
    assert card["hardware"]["strategy"] == "MultiWorkerMirroredStrategy"
    assert card["hardware"]["replicas"] == 2
    assert _history(out) == pytest.approx(single, rel=1e-3)


# Runs in a subprocess with 2 logical CPUs: the per-replica parts of every global batch.
SPLIT_SCRIPT = """
import json, sys
import numpy as np, tensorflow as tf
from keras_normreg import distribute
s = distribute.resolve_strategy("cpu:2")
out = {}
for n in (7, 9):  # batch 4: last batch 3 (split 2 / 1) or 1 (fewer than 2 replicas: dropped)
    ds = tf.data.Dataset.from_tensor_slices((np.arange(n), 10 * np.arange(n))).batch(4)
    steps = []
    for x, y in distribute.distribute_batches(s, ds):
        steps.append([[s.experimental_local_results(v)[r].numpy().tolist() for r in range(2)]
                      for v in (x, y)])
    out[n] = steps
json.dump(out, sys.stdout)
"""


def _reference_split(n, batch, replicas):
    """Replica r of R gets examples r, r + R, ... of each global batch; batches < R dropped."""
    steps = []
    for start in range(0, n, batch):
        idx = np.arange(start, min(start + batch, n))
        if len(idx) < replicas:
            continue
        xs = [idx[r::replicas].tolist() for r in range(replicas)]
        steps.append([xs, [[10 * v for v in part] for part in xs]])
    return steps


def test_distribute_batches_splits_each_global_batch_evenly():
    proc = subprocess.run([sys.executable, "-c", SPLIT_SCRIPT], env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["7"] == _reference_split(7, 4, 2)
    assert got["7"][-1][0] == [[4, 6], [5]]
    assert got["9"] == _reference_split(9, 4, 2)
    assert len(got["9"]) == 2  # the last batch (one example) is dropped


def test_batch_size_must_be_a_multiple_of_the_replicas(setup):
    tmp, recipe, _ = setup
    cmd = _train_cmd(recipe, tmp / "odd", "cpu:2") + ["--set", "data.batch_size=63"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300,
                          cwd=_cwd(tmp / "odd"))
    assert proc.returncode != 0
    assert "must be a multiple of the 2 replicas" in proc.stderr
    assert "Received: data.batch_size=63" in proc.stderr


def test_load_epochs_same_batches_for_every_iterator(setup):
    tmp, _, _ = setup
    ds, n = pipelines.load_epochs("digits", "train", 64, data_dir=str(tmp / "tfds"), seed=3)
    assert n == 1437
    steps = -(-n // 64)

    def labels_of_two_epochs():
        return [y.numpy() for _, y in ds.take(2 * steps)]

    first, second = labels_of_two_epochs(), labels_of_two_epochs()
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    # every epoch ends with its own partial batch and holds each example exactly once
    assert [len(first[steps - 1]), len(first[-1])] == [n % 64, n % 64]
    plain = np.concatenate([y.numpy() for _, y in pipelines.load(
        "digits", "train", 64, data_dir=str(tmp / "tfds"), shuffle=False)])
    epoch0, epoch1 = np.concatenate(first[:steps]), np.concatenate(first[steps:])
    assert np.array_equal(np.sort(epoch0), np.sort(plain))
    assert np.array_equal(np.sort(epoch1), np.sort(plain))
    assert not np.array_equal(epoch0, epoch1) and not np.array_equal(epoch0, plain)


def test_steps_per_epoch_counts_the_kept_batches():
    assert distribute.steps_per_epoch(1437, 64) == 23  # 22 full + 29
    assert distribute.steps_per_epoch(1437, 64, 2) == 23
    assert distribute.steps_per_epoch(1409, 64, 2) == 22  # last batch of 1 < 2 replicas: dropped
    assert distribute.steps_per_epoch(1409, 64, 1) == 23
    assert distribute.steps_per_epoch(1408, 64, 4) == 22


def test_distribute_batches_errors():
    import tensorflow as tf

    with pytest.raises(ValueError, match=r"Received: dataset=\[1, 2\]"):
        distribute.distribute_batches(tf.distribute.get_strategy(), [1, 2])
    ds = tf.data.Dataset.range(4).batch(2)
    assert distribute.distribute_batches(tf.distribute.get_strategy(), ds) is ds


def test_resolve_strategy_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"Received: strategy='gpu'"):
        distribute.resolve_strategy("gpu")
    with pytest.raises(ValueError, match=r"needs N >= 1\. Received: strategy='cpu:0'"):
        distribute.resolve_strategy("cpu:0")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match=r"needs TF_CONFIG"):
        distribute.resolve_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{bad")
    with pytest.raises(ValueError, match=r"TF_CONFIG is not valid JSON"):
        distribute.num_workers_in_tf_config()


def test_auto_and_default_on_this_machine(monkeypatch):
    import tensorflow as tf

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.resolve_strategy("default") is tf.distribute.get_strategy()
    if len(tf.config.list_physical_devices("GPU")) < 2:
        assert distribute.resolve_strategy("auto").num_replicas_in_sync == 1
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {"type": "chief"}}))
    assert distribute.num_workers_in_tf_config() == 3


def test_strategy_table_imports_without_tensorflow(tmp_path):
    """distribute's table and validator import without TensorFlow (TF is imported on first use).

    Run in a subprocess with Keras on its NumPy backend, ``tensorflow`` blocked, and the package
    __init__ (which checks for TensorFlow and imports the data pipelines) skipped.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"""
import sys, types
sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError
pkg = types.ModuleType("keras_normreg")
pkg.__path__ = [{os.path.join(root, "keras_normreg")!r}]
sys.modules["keras_normreg"] = pkg
from keras_normreg import distribute
assert distribute.STRATEGIES[0] == "auto", distribute.STRATEGIES
assert distribute.check_strategy("cpu:2") is None
assert distribute.check_strategy("gpu").startswith("must be one of auto | default")
assert distribute.steps_per_epoch(1409, 64, 2) == 22
try:
    distribute.resolve_strategy("default")
except ImportError:
    print("ok")
"""
    env = _env(KERAS_BACKEND="numpy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_check_strategy_matches_resolve_strategy():
    """Every name of the table but the 'cpu:N' pattern is accepted by check_strategy; a name
    that check_strategy rejects is rejected by resolve_strategy with the table in the message."""
    assert distribute.STRATEGIES[-1] == "cpu:N"
    for name in distribute.STRATEGIES[:-1]:
        assert distribute.check_strategy(name) is None
    assert distribute.check_strategy("cpu:N") == distribute.check_strategy("gpu") is not None
    with pytest.raises(ValueError, match=r"Strategy must be one of \['auto', 'default', "
                                         r"'mirrored', 'multiworker', 'tpu', 'cpu:N'\]\. "
                                         r"Received: strategy='gpu'"):
        distribute.resolve_strategy("gpu")
    with pytest.raises(ValueError, match=r"Strategy must be one of .*Received: strategy=3"):
        distribute.resolve_strategy(3)
