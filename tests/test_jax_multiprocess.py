"""Training across two JAX processes on one machine (``jax.distributed`` over 127.0.0.1, one CPU
device each, cross-process collectives on the CPU) against one process with one device.

Each process is started with ``KERAS_BACKEND=jax JAX_PLATFORMS=cpu``, joins the cluster with
:func:`keras_normreg.distribute.initialize_processes` and feeds its half of every global batch.
Before training, the workers check that JAX can sum across processes on the CPU at all; where it
cannot (a JAX without CPU collectives), the test is skipped with JAX's own error.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_normreg import cli, distribute
from keras_normreg.data.streams import ArrayEpochs
from tests.test_backends_train import ROOT, _env, _tiny_recipe

#: One process with one device: the reference.
_REFERENCE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    from keras_normreg import config, data, distribute, train
    recipe, run_dir = sys.argv[1], sys.argv[2]
    sets = ['data.train_split="train[:128]"', "train.epochs=1", 'train.strategy="default"']
    cfg = config.load_recipe(recipe, sets)
    result = train.train(cfg, save=False, run_dir=run_dir)
    out = {"weights": [np.asarray(keras.ops.convert_to_numpy(w)).tolist()
                       for w in result.model.weights],
           "loss": result.history["loss"]}
    x, y = data.arrays("mnist1d", "train[:128]")
    x = np.array(x, dtype="float32")
    x[64:] = 3.0 * x[64:] + 2.0
    model = train.build_and_compile(cfg, steps_per_epoch=1)
    bn = model.get_layer("block1_norm")
    probe = keras.Model(model.inputs, bn.input)   # pre-normalization activations, initial weights
    out["activations"] = np.asarray(keras.ops.convert_to_numpy(probe(x, training=False)),
                                    dtype="float64").tolist()
    model.train_on_batch(x, y)
    moving = np.asarray(keras.ops.convert_to_numpy(bn.moving_mean), dtype="float64")
    out["batch_mean"] = (moving / (1.0 - bn.momentum)).tolist()   # moving mean starts at 0
    print("RESULT " + json.dumps(out))
""")

#: One of the two processes (argv: recipe, coordinator port, process id).
_WORKER = textwrap.dedent("""
    import json, re, sys
    import numpy as np
    from keras_normreg import distribute
    recipe, port, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    distribute.initialize_processes(f"127.0.0.1:{port}", 2, pid, timeout=120)
    import jax
    from jax.experimental import multihost_utils
    try:   # can this JAX run a computation across processes on the CPU?
        ids = np.asarray(multihost_utils.process_allgather(np.int32(pid))).tolist()
    except Exception as e:
        text = " ".join(str(e).split())
        if re.search(r"unimplemented|not implemented|aren't implemented|not supported", text,
                     re.I):
            print("MISSING " + f"{type(e).__name__}: {text}"[:600])
            sys.exit(0)
        raise
    import keras
    from keras_normreg import config, data, train
    out = {"ids": ids, "process": jax.process_index(), "devices": jax.device_count(),
           "local_devices": jax.local_device_count()}

    # (1) the training path: one step (128 examples, batch 128) over the two processes
    sets = ['data.train_split="train[:128]"', "train.epochs=1", 'train.strategy="multiworker"']
    cfg = config.load_recipe(recipe, sets)
    result = train.train(cfg)   # run_dir: runs/<name> for process 0, a temporary one for 1
    out["weights"] = [np.asarray(keras.ops.convert_to_numpy(w)).tolist()
                      for w in result.model.weights]
    out["loss"] = result.history["loss"]
    out["path"] = result.get("path")

    # (2) batch statistics: each process feeds one half, the halves' statistics differ
    x, y = data.arrays("mnist1d", "train[:128]")
    x = np.array(x, dtype="float32")
    x[64:] = 3.0 * x[64:] + 2.0
    strategy = distribute.resolve("multiworker")
    rows = strategy.local_rows(len(x))
    out["rows"] = [rows.start, rows.stop]
    with strategy.scope():
        model = train.build_and_compile(cfg, steps_per_epoch=1)
        model.train_on_batch(x[rows], y[rows])
        bn = model.get_layer("block1_norm")
        moving = np.asarray(keras.ops.convert_to_numpy(bn.moving_mean), dtype="float64")
    out["batch_mean"] = (moving / (1.0 - bn.momentum)).tolist()

    # (3) an unfinished run state (process 0's) is refused in every process, not resumed by one
    from keras_normreg import runstate
    if pid == 0:
        writer = runstate.StateWriter("runs/mp", cfg)
        writer.set_model(model)
        writer.epochs_done = 1
        with distribute.chief_writes(strategy):
            writer.save()
    try:
        train.train(cfg, save=False)
        out["resume"] = None
    except runstate.RunStateError as e:
        out["resume"] = str(e)
    print("RESULT " + json.dumps(out))
""")

#: Seconds before a process that has not finished counts as hung (each process also gives up
#: joining the cluster after 120 s).
_TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _result(name: str, stdout: str, stderr: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"{name} printed no result:\n{stdout[-2000:]}\n{stderr[-4000:]}"
    return json.loads(lines[-1][7:])


# Three interpreters (reference + two workers) of ~13 s CPU each: ~20 s on 2 idle cores, 53 s
# to 260 s measured on a loaded one; `make test-slow` runs it.
@pytest.mark.slow
def test_two_jax_processes_train_like_one(tmp_path):
    """Two processes (1 CPU device each, ``jax.distributed`` over 127.0.0.1) train the tiny
    recipe (MNIST-1D cnn1d with batch norm, SGDW lr 0.1) for one step of 128 examples, each
    process feeding its 64; one process with one device trains the same step on all 128.

    (1) The weights after the step. The runs differ only in the order of float32 reductions:
    the gradient and the batch statistics are sums over N <= 128 examples x 40 positions =
    5120 terms, computed here as two partial sums (one per process) added by the all-reduce,
    there as one sum; each order is within ~log2(N)·u·Σ|t| of the exact sum (u = 2^-24), so
    ~8e-7 relative to the terms, which are O(1) for this model's gradients, amplified at most a
    few times by BatchNorm's backward pass. One SGD step with lr 0.1 moves a weight by lr·g, so
    the weights differ by <~ 0.1 x 8e-7 x a few ~ 3e-7: atol 1e-6, rtol 1e-5 (the bound of the
    one-process two-device test in tests/test_backends_train.py, for the same reason).
    Statistics or gradients of one process's half would differ at the 1e-2 level. Only
    process 0 writes the saved entry.

    (2) Batch statistics are global: a batch whose second half (process 1's rows) is scaled by
    3 and shifted by 2. The first BatchNormalization's moving mean after one step from 0 is
    (1 - momentum)·(the batch mean it used); in both processes that must be the NumPy mean of
    the whole batch's pre-normalization activations (float32 reductions over 5120 values:
    <= ~13·u·max|a| ~ 1e-6·max|a|; atol 1e-5·max|a|), while the mean of either half differs
    from it by more than 0.1 (checked, so per-process statistics would fail)."""
    recipe = _tiny_recipe(tmp_path, "mp")
    port = _free_port()
    (tmp_path / "tmp").mkdir()   # process 1's temporary run directory lands here
    base = dict(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TMPDIR=str(tmp_path / "tmp"))
    names = ["reference", "process 0", "process 1"]
    procs = [subprocess.Popen([sys.executable, "-c", _REFERENCE, str(recipe),
                               str(tmp_path / "reference_run")],
                              cwd=ROOT, env=_env(**base), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)]
    for pid in (0, 1):
        procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, str(recipe), str(port),
                                       str(pid)],
                                      cwd=tmp_path, env=_env(**base), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for name, p in zip(names, procs, strict=True):
            try:
                outputs.append(p.communicate(timeout=_TIMEOUT))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} did not finish within {_TIMEOUT} s (hung?)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    missing = [ln[8:] for out, _ in outputs[1:] for ln in out.splitlines()
               if ln.startswith("MISSING ")]
    if missing:
        pytest.skip(f"this JAX cannot compute across processes on the CPU: {missing[0]}")
    for name, p, (out, err) in zip(names, procs, outputs, strict=True):
        assert p.returncode == 0, f"{name} exited {p.returncode}:\n{out[-2000:]}\n{err[-4000:]}"
    ref, *workers = (_result(n, o, e) for n, (o, e) in zip(names, outputs, strict=True))

    # the cluster: two processes with one CPU device each, ids 0 and 1
    for pid, w in enumerate(workers):
        assert (w["process"], w["devices"], w["local_devices"]) == (pid, 2, 1)
        assert w["ids"] == [0, 1]

    # (1) one step over two processes = one step on one device; only process 0 saved
    for w in workers:
        assert len(w["weights"]) == len(ref["weights"])
        for a, b in zip(ref["weights"], w["weights"], strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(w["loss"], ref["loss"], rtol=1e-5)
    entry = tmp_path / "saved" / "mp"
    assert workers[0]["path"] == str(entry) and workers[1]["path"] is None
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["mp"]
    assert sorted(p.name for p in entry.iterdir()) == ["card.json", "model.keras", "recipe.toml"]
    card = json.loads((entry / "card.json").read_text())
    assert card["backend"] == "jax" and card["hardware"]["replicas"] == 2

    # (2) batch statistics over both processes' rows, not over either half
    assert [w["rows"] for w in workers] == [[0, 64], [64, 128]]
    act = np.asarray(ref["activations"])            # (128, positions, channels)
    channels = act.shape[-1]
    whole = act.reshape(-1, channels).mean(axis=0)
    first = act[:64].reshape(-1, channels).mean(axis=0)
    second = act[64:].reshape(-1, channels).mean(axis=0)
    tol = 1e-5 * np.abs(act).max()
    assert min(np.abs(first - whole).max(), np.abs(second - whole).max()) > 0.1 > 100 * tol
    for mean in (ref["batch_mean"], *(w["batch_mean"] for w in workers)):
        np.testing.assert_allclose(mean, whole, rtol=0, atol=tol)

    # (3) process 0's unfinished run state: both processes refuse it (none hangs, none resumes)
    for w in workers:
        assert w["resume"] and "resuming a run across JAX processes is not supported" in \
            w["resume"], w["resume"]


def test_local_rows_are_the_block_of_this_process_devices():
    """4 devices, this process holding devices 2 and 3: rows [n/2, n) of a batch of n."""
    dist = distribute.KerasDistribution(None, 4, num_processes=2, local=(2, 4))
    assert dist.local_rows(8) == slice(4, 8)
    assert dist.local_rows(128) == slice(64, 128)
    assert distribute.KerasDistribution(None, 4).local_rows(6) == slice(0, 6)  # one process
    with pytest.raises(ValueError, match=r"multiple of 4 examples\. Received: n=6"):
        dist.local_rows(6)


def test_process_shard_feeds_this_process_rows_of_every_batch():
    x = np.arange(24, dtype="float32").reshape(12, 2)
    y = np.arange(12)
    stream = ArrayEpochs(x, y, 8, shuffle=True, seed=3, multiple_of=2)
    dist = distribute.KerasDistribution(None, 2, num_processes=2, local=(1, 2))
    shard = distribute.ProcessShard(ArrayEpochs(x, y, 8, shuffle=True, seed=3, multiple_of=2),
                                    dist)
    assert len(shard) == len(stream) == 2   # batches of 8 and 4
    for _ in range(2):   # two epochs: the epoch end reaches the wrapped stream
        for i in range(len(stream)):
            bx, by = stream[i]
            half = len(by) // 2
            sx, sy = shard[i]
            np.testing.assert_array_equal(sx, bx[half:])
            np.testing.assert_array_equal(sy, by[half:])
        stream.on_epoch_end()
        shard.on_epoch_end()
    with pytest.raises(ValueError, match=r"keras\.utils\.PyDataset.*Received: stream="):
        distribute.ProcessShard([(x, y)], dist)


_ERRORS = textwrap.dedent("""
    import os
    from keras_normreg import distribute
    cases = [dict(coordinator="127.0.0.1", num_processes=2, process_id=0),
             dict(coordinator="127.0.0.1:1234", num_processes=2, process_id=2),
             dict(coordinator="127.0.0.1:1234", num_processes=0, process_id=0),
             dict(coordinator="127.0.0.1:1234", num_processes=2, process_id=0, timeout=0),
             dict()]
    for kwargs in cases:
        try:
            distribute.initialize_processes(**kwargs)
            print("NO ERROR", kwargs)
        except ValueError as e:
            print("ERROR", e)
    os.environ["KERAS_DISTRIBUTION_NUM_PROCESSES"] = "two"
    try:
        distribute.initialize_processes("127.0.0.1:1234", process_id=0)
    except ValueError as e:
        print("ERROR", e)
""")


def test_initialize_processes_errors_name_the_argument():
    env = _env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    for var in distribute.PROCESS_ENV.values():
        env.pop(var, None)
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", _ERRORS], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith(("ERROR", "NO ERROR"))]
    assert len(errors) == 6 and all(e.startswith("ERROR ") for e in errors), proc.stdout
    assert "must be 'host:port'" in errors[0] and "Received: coordinator='127.0.0.1'" in errors[0]
    assert "must be < num_processes=2" in errors[1] and errors[1].endswith("process_id=2")
    assert "`num_processes` must be >= 1" in errors[2] and errors[2].endswith("num_processes=0")
    assert "`timeout` must be >= 1" in errors[3] and errors[3].endswith("timeout=0")
    assert "--coordinator, --num-processes, --process-id" in errors[4]
    assert errors[4].endswith("coordinator=None, num_processes=None, process_id=None")
    assert "KERAS_DISTRIBUTION_NUM_PROCESSES must be a non-negative integer" in errors[5]
    assert errors[5].endswith("Received: KERAS_DISTRIBUTION_NUM_PROCESSES='two'")


def test_train_process_flags_reach_initialize_processes(tmp_path, capsys):
    """The CLI flags join processes; on TensorFlow that is refused with what to use instead."""
    recipe = _tiny_recipe(tmp_path, "flags")
    code = cli.main(["train", str(recipe), "--coordinator", "127.0.0.1:1234",
                     "--num-processes", "2", "--process-id", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "for the JAX backend (on TensorFlow set TF_CONFIG" in err
    assert err.strip().endswith("Received: backend='tensorflow'")
    assert not (tmp_path / "saved").exists()

