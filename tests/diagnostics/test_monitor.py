"""diagnostics.NormMonitor: logged values against NumPy, CSV/TensorBoard, warnings, errors."""

import csv
import glob
import math
import os
import warnings

import keras
import numpy as np
import pytest

from keras_normreg import optimizers, regularizers, zoo
from keras_normreg.diagnostics import NormMonitor, equilibrium_angular_update, optimizer_facts
from tests.backend_marks import spawns_backends
from tests.helpers import assert_config_roundtrip, assert_serialize_roundtrip

L = keras.layers


def _bn_mlp(dim=6, units=8, bias_head=True):
    inp = keras.Input((dim,))
    h = L.Dense(units, use_bias=False, name="d1")(inp)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="r1")(h)
    h = L.Dense(units, use_bias=False, name="d2")(h)
    h = L.BatchNormalization(name="bn2")(h)
    h = L.ReLU(name="r2")(h)
    return keras.Model(inp, L.Dense(3, use_bias=bias_head, name="head")(h))


def _data(n=64, dim=6, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, dim).astype("float32")
    return x, rng.randint(0, 3, n)


class _Recorder(keras.callbacks.Callback):
    """Independent record of the weights before and after every training step."""

    def __init__(self, paths):
        super().__init__()
        self.paths = paths
        self.before, self.after, self.lr = [], [], []

    def _get(self):
        by = {v.path: v for v in self.model.trainable_variables}
        return {p: by[p].numpy().astype(np.float64) for p in self.paths}

    def on_train_batch_begin(self, batch, logs=None):
        self.before.append(self._get())
        self.lr.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_train_batch_end(self, batch, logs=None):
        self.after.append(self._get())


def _angle(a, b):
    a, b = a.ravel(), b.ravel()
    c = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.arccos(np.clip(c, -1, 1)))


def _fit(model, optimizer, monitor, steps=6, batch=16, paths=None):
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rec = _Recorder(paths or monitor.tracked or ["d1/kernel", "d2/kernel", "head/kernel"])
    x, y = _data(steps * batch)
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0,
              callbacks=[rec, monitor])
    return rec


def test_sgd_values_match_numpy():
    model = _bn_mlp()
    mon = NormMonitor(every_n_steps=1, layers="all", per_unit=True)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.2, decay_steps=1, decay_rate=0.8)
    rec = _fit(model, keras.optimizers.SGD(schedule, momentum=0.9), mon, steps=6,
               paths=["d1/kernel", "d2/kernel", "head/kernel"])
    assert mon.tracked == ["d1/kernel", "d2/kernel", "head/kernel"]
    h = mon.history
    np.testing.assert_array_equal(h["d1/kernel"]["step"], np.arange(6))
    np.testing.assert_allclose(h["d1/kernel"]["lr"], [0.2 * 0.8 ** t for t in range(6)],
                               rtol=1e-6)
    np.testing.assert_allclose(rec.lr, h["d1/kernel"]["lr"], rtol=1e-6)
    for path in mon.tracked:
        for t in range(6):
            w0, w1 = rec.before[t][path], rec.after[t][path]
            lr = rec.lr[t]
            n1 = np.linalg.norm(w1)
            np.testing.assert_allclose(h[path]["norm"][t], n1, rtol=1e-5)
            np.testing.assert_allclose(h[path]["effective_lr"][t], lr / n1 ** 2, rtol=1e-5)
            np.testing.assert_allclose(h[path]["angular_update"][t], _angle(w0, w1), rtol=2e-3)
            # per unit: columns of the (in, out) kernel
            nu = np.linalg.norm(w1, axis=0)
            np.testing.assert_allclose(h[path]["unit_norm"][t], np.sqrt(np.mean(nu ** 2)),
                                       rtol=1e-5)
            np.testing.assert_allclose(h[path]["unit_effective_lr"][t], np.mean(lr / nu ** 2),
                                       rtol=1e-5)
            th = [_angle(w0[:, j], w1[:, j]) for j in range(w1.shape[1])]
            np.testing.assert_allclose(h[path]["unit_angular_update"][t], np.mean(th),
                                       rtol=2e-3)
    # no decay -> no equilibrium prediction
    assert np.all(np.isnan(h["d1/kernel"]["predicted_angular_update"]))


def test_adam_effective_lr_form_and_prediction():
    model = _bn_mlp()
    mon = NormMonitor(every_n_steps=1)  # scale-invariant kernels only
    opt = keras.optimizers.AdamW(0.01, beta_1=0.8, weight_decay=0.05)
    rec = _fit(model, opt, mon, steps=3)
    assert mon.tracked == ["d1/kernel", "d2/kernel"]
    h = mon.history["d2/kernel"]
    n1 = np.linalg.norm(rec.after[-1]["d2/kernel"])
    np.testing.assert_allclose(h["effective_lr"][-1], 0.01 / n1, rtol=1e-5)  # η/‖w‖ for Adam
    # AdamW: sqrt(2 d (1-β1)/(1+β1)), d = ηλ = 5e-4 -> sqrt(2 * 5e-4 * 0.2 / 1.8)
    np.testing.assert_allclose(h["predicted_angular_update"], math.sqrt(1e-4 / 0.9), rtol=1e-5)


def test_predictions_read_from_optimizers():
    hand = {
        # Keras SGD decoupled: d = ηλ = 1e-3, sqrt(2 d (1-α)/(1+α)) = sqrt(2 * 1e-3 * .1 / 1.9)
        "sgd_wd": (lambda: keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-2), None,
                   math.sqrt(2e-4 / 1.9)),
        # our wrapper, semantics "lr": same number
        "sgdw": (lambda: optimizers.SGDW(0.1, momentum=0.9, weight_decay=1e-2), None,
                 math.sqrt(2e-4 / 1.9)),
        # semantics "schedule": d = λ·η/η0 = 1e-2 (constant lr), sqrt(2 * 1e-2 * .1 / 1.9)
        "sgdw_schedule": (lambda: optimizers.SGDW(0.1, momentum=0.9, weight_decay=1e-2,
                                                  semantics="schedule"), None,
                          math.sqrt(2e-3 / 1.9)),
        # coupled L2(5e-4): λ' = 1e-3, sqrt(2 * .1 * 1e-3 / 1.9)
        "l2": (lambda: keras.optimizers.SGD(0.1, momentum=0.9), 5e-4, math.sqrt(2e-4 / 1.9)),
        # both: sqrt(2(η λ' + (1-α) d)/(1+α)), d = .1 * 1e-2
        "both": (lambda: keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-2), 5e-4,
                 math.sqrt(2 * (1e-4 + 0.1 * 1e-3) / 1.9)),
        # plain SGD without momentum, coupled: sqrt(2 η λ')
        "plain": (lambda: keras.optimizers.SGD(0.05), 1e-3, math.sqrt(2 * 0.05 * 2e-3)),
    }
    for key, (make, l2, expected) in hand.items():
        keras.utils.set_random_seed(0)
        model = _bn_mlp()
        if l2:
            regularizers.apply(model, regularizers.L2(l2), skip_scale_invariant=False)
        mon = NormMonitor(every_n_steps=1, warn=False)
        _fit(model, make(), mon, steps=2)
        got = mon.history["d1/kernel"]["predicted_angular_update"]
        np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=key)


def test_sphere_and_sgdp_have_no_prediction():
    model = _bn_mlp()
    opt = optimizers.DecoupledWeightDecay(keras.optimizers.SGD(0.1, momentum=0.9), 1e-2,
                                          scale_invariant="sphere").bind(model)
    mon = NormMonitor()
    _fit(model, opt, mon, steps=2)
    h = mon.history["d1/kernel"]
    assert np.all(np.isnan(h["predicted_angular_update"]))
    np.testing.assert_allclose(h["norm"][-1], math.sqrt(8), rtol=1e-4)  # 8 unit columns
    facts = optimizer_facts(optimizers.SGDP(0.1, weight_decay=1e-2))
    assert facts["kind"] == "sgdp" and facts["form"] == "sgd"
    wrapped = keras.optimizers.LossScaleOptimizer(optimizers.AdamW(1e-3, weight_decay=0.1))
    facts = optimizer_facts(wrapped)
    assert facts["kind"] == "adam" and facts["form"] == "adam" and facts["momentum"] == 0.9


def test_optimizer_facts_read_the_public_decay_contract():
    """decayed() is DecoupledWeightDecay.treatment(v) == "decay" and decay_rate() its
    effective_decay(): d = λ·lr²/lr_max for semantics "corrected" (hand value)."""
    model = _bn_mlp()
    opt = optimizers.DecoupledWeightDecay(
        keras.optimizers.SGD(0.1, momentum=0.9), 0.02, semantics="corrected",
        max_learning_rate=0.4, exclude=("bias", "normalization"), sphere=("glob:d2/kernel",))
    facts = optimizer_facts(keras.optimizers.LossScaleOptimizer(opt))
    assert facts["base"] is opt.inner_optimizer
    assert float(facts["decay_rate"]()) == pytest.approx(0.02 * 0.1 * 0.1 / 0.4, rel=1e-6)
    by = {v.path: v for v in model.trainable_variables}
    decayed = {p for p, v in by.items() if facts["decayed"](v)}
    assert decayed == {"d1/kernel", "head/kernel"}
    assert {p for p, v in by.items() if opt.treatment(v) == "decay"} == decayed
    assert opt.treatment(by["d2/kernel"]) == "sphere"


def test_default_every_n_steps_is_10():
    model = _bn_mlp()
    mon = NormMonitor(layers=["d1/kernel"])
    assert mon.every_n_steps == 10
    rec = _fit(model, keras.optimizers.SGD(0.1), mon, steps=21, paths=["d1/kernel"])
    h = mon.history["d1/kernel"]
    np.testing.assert_array_equal(h["step"], [0, 10, 20])
    ref = _angle(rec.before[10]["d1/kernel"], rec.after[10]["d1/kernel"])
    np.testing.assert_allclose(h["angular_update"][1], ref, rtol=2e-3)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="autograd state: torch only")
def test_pending_measurements_hold_no_autograd_graph():
    """The measurements waiting for the epoch-end flush are plain values: built from weights
    that require grad, they would otherwise keep their autograd graph (and the weight copies
    it references) alive until the flush."""
    model = _bn_mlp()
    mon = NormMonitor(every_n_steps=1)
    seen = []

    class Inspect(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.extend(t.requires_grad for p in mon._pending for t in p[2:])

    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(48)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[mon, Inspect()])
    assert seen and not any(seen)


def test_every_n_steps_measures_single_steps():
    model = _bn_mlp()
    mon = NormMonitor(every_n_steps=3, layers=["d2"])
    rec = _fit(model, keras.optimizers.SGD(0.1, momentum=0.9), mon, steps=7,
               paths=["d2/kernel"])
    h = mon.history["d2/kernel"]
    np.testing.assert_array_equal(h["step"], [0, 3, 6])
    for i, t in enumerate((0, 3, 6)):
        ref = _angle(rec.before[t]["d2/kernel"], rec.after[t]["d2/kernel"])
        np.testing.assert_allclose(h["angular_update"][i], ref, rtol=2e-3)


def test_csv_and_tensorboard_written(tmp_path):
    model = _bn_mlp()
    csv_path = tmp_path / "sub" / "norms.csv"
    mon = NormMonitor(every_n_steps=1, csv_path=str(csv_path), log_dir=str(tmp_path / "tb"))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(64)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[mon])
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "epoch", "variable", "lr", "norm", "effective_lr",
                             "angular_update", "predicted_angular_update"]
    assert len(rows) == 8 * 2  # 4 steps x 2 epochs x 2 weights
    assert [r["epoch"] for r in rows[::2]] == ["0"] * 4 + ["1"] * 4
    h = mon.history["d2/kernel"]
    d2 = [r for r in rows if r["variable"] == "d2/kernel"]
    np.testing.assert_allclose([float(r["norm"]) for r in d2], h["norm"], rtol=1e-6)
    events = glob.glob(os.path.join(tmp_path, "tb", "events.out.tfevents.*"))
    assert events
    import tensorflow as tf

    tags = {}
    for event in tf.compat.v1.train.summary_iterator(events[0]):
        for v in event.summary.value:
            tags.setdefault(v.tag, []).append(
                (event.step, float(tf.make_ndarray(v.tensor))))
    assert set(tags) >= {"norm/d1/kernel", "effective_lr/d2/kernel",
                         "angular_update/d1/kernel", "predicted_angular_update/d2/kernel"}
    steps, values = zip(*sorted(tags["norm/d2/kernel"]), strict=True)
    assert list(steps) == list(range(8))
    np.testing.assert_allclose(values, h["norm"], rtol=1e-6)


def test_warns_once_for_l2_on_scale_invariant_kernels():
    model = _bn_mlp()
    regularizers.apply(model, regularizers.L2(1e-4), skip_scale_invariant=False)
    mon = NormMonitor()
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[mon])
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[mon])
    ours = [w for w in caught if "NormMonitor" in str(w.message)]
    assert len(ours) == 1
    msg = str(ours[0].message)
    assert "d1/kernel" in msg and "d2/kernel" in msg and "head/kernel" not in msg
    assert "effective learning rate" in msg and issubclass(ours[0].category, UserWarning)


def test_no_warning_when_l2_skips_invariant_kernels_or_warn_false():
    for skip, warn in (("auto", True), (False, False)):
        model = _bn_mlp()
        regularizers.apply(model, regularizers.L2(1e-4), skip_scale_invariant=skip)
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x, y = _data(32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, y, batch_size=16, verbose=0, callbacks=[NormMonitor(warn=warn)])
        assert not [w for w in caught if "NormMonitor" in str(w.message)]


def test_nothing_to_monitor_warns_and_trains():
    model = zoo.create("cnn_digits", norm="none")
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.RandomState(0).randn(8, 8, 8, 1).astype("float32")
    with pytest.warns(UserWarning, match="no weight to monitor"):
        model.fit(x, np.zeros(8, "int64"), verbose=0, callbacks=[(mon := NormMonitor())])
    assert mon.tracked == [] and mon.history == {}


def test_equilibrium_angular_update_formulas():
    # hand values
    np.testing.assert_allclose(equilibrium_angular_update(learning_rate=0.1, l2=5e-4,
                                                          momentum=0.9), 0.0102598, rtol=1e-5)
    np.testing.assert_allclose(equilibrium_angular_update(learning_rate=0.1, weight_decay=1e-3,
                                                          momentum=0.9), 0.00324443, rtol=1e-5)
    np.testing.assert_allclose(equilibrium_angular_update("adam", learning_rate=1e-3,
                                                          weight_decay=0.1, momentum=0.9),
                               0.00324443, rtol=1e-5)
    # Nesterov: θ² × (α⁴ + (1-α²)(1+α)²); α = 0.5 -> 0.0625 + 0.75 * 2.25 = 1.75
    np.testing.assert_allclose(
        equilibrium_angular_update(learning_rate=0.1, l2=5e-4, momentum=0.5, nesterov=True),
        math.sqrt(2 * 0.1 * 1e-3 / 1.5 * 1.75), rtol=1e-6)
    assert math.isnan(equilibrium_angular_update("adam", learning_rate=1e-3, l2=1e-4))
    assert math.isnan(equilibrium_angular_update(learning_rate=0.1))


def test_config_roundtrip():
    mon = NormMonitor(every_n_steps=5, csv_path="a.csv", layers=["d1", "d2/kernel"],
                      warn=False, per_unit=True)
    assert_config_roundtrip(mon)
    assert_serialize_roundtrip(mon)


def test_errors():
    with pytest.raises(ValueError, match=r"`every_n_steps`.*Received: every_n_steps=0"):
        NormMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match=r"`layers`.*Received: layers='kernels'"):
        NormMonitor(layers="kernels")
    with pytest.raises(ValueError, match=r"`layers`.*Received: layers=\[\]"):
        NormMonitor(layers=[])
    with pytest.raises(ValueError, match=r"`layers`.*Received: layers=\[3\]"):
        NormMonitor(layers=[3])
    with pytest.raises(ValueError, match=r"`warn`.*Received: warn='yes'"):
        NormMonitor(warn="yes")
    with pytest.raises(ValueError, match=r"`per_unit`.*Received: per_unit=1"):
        NormMonitor(per_unit=1)
    with pytest.raises(ValueError, match=r"`csv_path`.*Received: csv_path=3"):
        NormMonitor(csv_path=3)
    with pytest.raises(ValueError, match=r"`learning_rate`.*Received: learning_rate=0"):
        equilibrium_angular_update(learning_rate=0)
    with pytest.raises(ValueError, match=r"`optimizer`.*Received: optimizer='lion'"):
        equilibrium_angular_update("lion", learning_rate=0.1)
    with pytest.raises(ValueError, match=r"`momentum`.*Received: momentum=1"):
        equilibrium_angular_update(learning_rate=0.1, momentum=1)
    model = _bn_mlp()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    x, y = _data(16)
    with pytest.raises(ValueError, match=r"'dense9'.*neither a layer.*d1"):
        model.fit(x, y, verbose=0, callbacks=[NormMonitor(layers=["dense9"])])
    with pytest.raises(ValueError, match=r"`last_steps`.*Received: last_steps=0"):
        NormMonitor().equilibrium(last_steps=0)


def test_log_dir_without_tensorflow_says_use_csv(monkeypatch, tmp_path):
    """TensorBoard logs need tf.summary: without TensorFlow, log_dir fails at construction with
    what to do instead; csv_path keeps working."""
    from keras_normreg.diagnostics import monitor as monitor_module

    monkeypatch.setattr(monitor_module, "_has_tensorflow", lambda: False)
    with pytest.raises(ValueError, match=r"`log_dir` needs TensorFlow.*csv_path=.*install "
                                         r"tensorflow\. Received: log_dir="):
        NormMonitor(log_dir=str(tmp_path / "tb"))
    model = _bn_mlp()
    mon = NormMonitor(every_n_steps=1, csv_path=str(tmp_path / "m.csv"))
    _fit(model, keras.optimizers.SGD(0.1), mon, steps=2)
    with open(tmp_path / "m.csv") as f:
        assert len(list(csv.reader(f))) == 1 + 2 * len(mon.tracked)


NO_TF_SCRIPT = r"""
import sys
for _name in ("tensorflow", "tensorflow_datasets"):
    sys.modules[_name] = None  # `import tensorflow` raises ImportError
import csv, json, os
import keras
import numpy as np
from keras_normreg import optimizers
from keras_normreg.diagnostics import NormMonitor, scale_invariant_weights

out = {"backend": keras.backend.backend()}
try:
    NormMonitor(log_dir=os.path.join(sys.argv[1], "tb"))
except ValueError as err:
    out["log_dir_error"] = str(err)
keras.utils.set_random_seed(0)
inp = keras.Input((6,))
h = keras.layers.Dense(8, use_bias=False, name="d1")(inp)
h = keras.layers.BatchNormalization(name="bn1")(h)
model = keras.Model(inp, keras.layers.Dense(3, name="head")(keras.layers.ReLU()(h)))
model.compile(optimizer=optimizers.SGDW(0.1, weight_decay=5e-3, scale_invariant="sphere").bind(model),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
x, y = rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 3, size=32)
mon = NormMonitor(every_n_steps=1, csv_path=os.path.join(sys.argv[1], "m.csv"), layers="all")
model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[mon])
with open(os.path.join(sys.argv[1], "m.csv")) as f:
    out["csv_rows"] = len(list(csv.reader(f)))
out["d1_norm"] = mon.history["d1/kernel"]["norm"].tolist()
out["invariant"] = sorted(scale_invariant_weights(model, x).invariant)
out["tf_loaded"] = any(m == "tensorflow" or m.startswith("tensorflow.")
                       for m, v in sys.modules.items() if v is not None)
print("RESULT " + json.dumps(out))
"""


@spawns_backends
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_monitor_sphere_and_auditor_without_tensorflow(backend, tmp_path):
    """With TensorFlow not importable: log_dir says to use csv_path, the CSV is written, the
    sphere-mode kernels (SGDW) are measured at unit norm per unit (√units for the tensor), the
    auditor's probe runs, and TensorFlow is never imported."""
    import importlib.util
    import json
    import subprocess
    import sys

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, KERAS_BACKEND=backend,
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", NO_TF_SCRIPT, str(tmp_path)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines and "KERAS_BACKEND" in proc.stderr and "ImportError" in proc.stderr:
        pytest.skip(f"keras_normreg refuses KERAS_BACKEND={backend}: {proc.stderr[-300:]}")
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["backend"] == backend and out["tf_loaded"] is False
    assert "csv_path" in out["log_dir_error"] and "Received: log_dir=" in out["log_dir_error"]
    assert out["csv_rows"] == 1 + 4 * 2  # header + 4 steps x (d1, head) kernels
    np.testing.assert_allclose(out["d1_norm"], math.sqrt(8), rtol=1e-5)
    assert out["invariant"] == ["d1/kernel"]
