"""keras_normreg/_compat.py: the version guard and every private-API accessor, against the
installed Keras / keras-tuner (a release that moves one of them fails here, by name)."""

from __future__ import annotations

import math
import os
import re
import sys

import keras
import keras_tuner as kt
import numpy as np
import pytest

from keras_normreg import _compat

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------ versions
def _pyproject_bounds(package: str) -> tuple[str, str]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    for dep in deps:
        m = re.fullmatch(rf"{re.escape(package)}\s*>=\s*([\d.]+)\s*,\s*<\s*([\d.]+)", dep.strip())
        if m:
            return m.group(1), m.group(2)
    raise AssertionError(f"no '{package}>=a,<b' in pyproject.toml's dependencies: {deps}")


def test_tested_bounds_are_the_pyproject_ones():
    assert _compat.KERAS_TESTED == _pyproject_bounds("keras")
    assert _compat.KERAS_TUNER_TESTED == _pyproject_bounds("keras-tuner")


def test_installed_versions_pass():
    _compat.check_versions()
    _compat.check_versions(keras.__version__, kt.__version__)
    assert _compat.version_in_range(keras.__version__, _compat.KERAS_TESTED)
    assert _compat.version_in_range(kt.__version__, _compat.KERAS_TUNER_TESTED)


@pytest.mark.parametrize("version, inside", [
    ("3.5", True), ("3.5.0", True), ("3.15.1", True), ("3.15.99", True), ("3.16.0rc1", False),
    ("3.16", False), ("3.16.0", False), ("4.0", False), ("3.4.9", False), ("2.15.0", False),
])
def test_version_in_range_by_hand(version, inside):
    assert _compat.version_in_range(version, ("3.5", "3.16")) is inside


@pytest.mark.parametrize("version", ["3.16.0", "4.0", "3.4.9"])
def test_untested_keras_raises_naming_it(version):
    low, high = (re.escape(b) for b in _compat.KERAS_TESTED)  # the bounds of pyproject.toml
    with pytest.raises(RuntimeError, match=rf"keras>={low},<{high}\. Received: keras=={version}$"):
        _compat.check_versions(keras_version=version, keras_tuner_version=kt.__version__)


@pytest.mark.parametrize("version", ["1.5.0", "1.3.5", "2.0"])
def test_untested_keras_tuner_raises_naming_it(version):
    with pytest.raises(RuntimeError,
                       match=rf"keras-tuner>=1\.4,<1\.5\. Received: keras-tuner=={version}$"):
        _compat.check_versions(keras_version=keras.__version__, keras_tuner_version=version)


# ----------------------------------------------------------------------------------- Keras
def _sgd_with_two_variables():
    a, b = keras.Variable(np.ones(3, "float32"), name="a"), keras.Variable(np.ones(2, "float32"),
                                                                           name="b")
    opt = keras.optimizers.SGD(learning_rate=0.1)
    opt.build([a, b])
    return opt, a, b


def test_optimizer_variable_key_is_distinct_and_stable():
    opt, a, b = _sgd_with_two_variables()
    ka, kb = _compat.optimizer_variable_key(opt, a), _compat.optimizer_variable_key(opt, b)
    assert isinstance(ka, str) and ka != kb
    assert _compat.optimizer_variable_key(opt, a) == ka


def test_optimizer_iterations_counts_applied_steps():
    opt, a, b = _sgd_with_two_variables()
    it = _compat.optimizer_iterations(opt)
    assert int(keras.ops.convert_to_numpy(it)) == 0
    for _ in range(3):
        opt.apply_gradients([(keras.ops.ones((3,)), a), (keras.ops.ones((2,)), b)])
    assert int(keras.ops.convert_to_numpy(_compat.optimizer_iterations(opt))) == 3
    # SGD without momentum: three steps of 0.1 * 1
    np.testing.assert_allclose(keras.ops.convert_to_numpy(a), np.full(3, 0.7), rtol=1e-6)


def test_optimizer_learning_rate_attr():
    opt = keras.optimizers.SGD(learning_rate=0.25)
    lr = _compat.optimizer_learning_rate_attr(opt)
    assert float(keras.ops.convert_to_numpy(lr)) == pytest.approx(0.25)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=10, decay_rate=0.5)
    opt = keras.optimizers.SGD(learning_rate=schedule)
    assert _compat.optimizer_learning_rate_attr(opt) is schedule


def _nested():
    inner = keras.Sequential([keras.layers.Dense(3, name="inner_dense"),
                              keras.layers.BatchNormalization(name="inner_bn")], name="inner")
    x = keras.Input((4,))
    y = keras.layers.Dense(2, name="head")(inner(x))
    return keras.Model(x, y, name="outer")


def test_flatten_layers_finds_the_nested_ones():
    model = _nested()
    names = {layer.name for layer in _compat.flatten_layers(model)}
    assert {"inner", "inner_dense", "inner_bn", "head"} <= names
    assert "outer" not in names
    assert "outer" in {layer.name for layer in _compat.flatten_layers(model, include_self=True)}


def test_graph_nodes_by_depth():
    nodes = _compat.graph_nodes_by_depth(_nested())
    assert isinstance(nodes, dict) and nodes
    assert all(isinstance(depth, int) for depth in nodes)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    sub = Sub()
    sub(np.zeros((1, 4), "float32"))
    assert _compat.graph_nodes_by_depth(sub) is None


def test_no_automatic_dependency_tracking():
    class Holder(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.tracked = [keras.Variable(1.0, name="tracked")]
            self.remember()

        @_compat.no_automatic_dependency_tracking
        def remember(self):
            self.untracked = [keras.Variable(2.0, name="untracked")]

    layer = Holder()
    assert [v.name for v in layer.variables] == ["tracked"]
    assert float(keras.ops.convert_to_numpy(layer.untracked[0])) == 2.0


# ----------------------------------------------------------------------------- keras-tuner
def test_kt_trial_status():
    status = _compat.kt_trial_status()
    for name in ("RUNNING", "IDLE", "STOPPED", "COMPLETED", "FAILED", "INVALID"):
        assert getattr(status, name) == name


def test_kt_distribute_outside_a_distributed_run(monkeypatch):
    for var in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        monkeypatch.delenv(var, raising=False)
    dist = _compat.kt_distribute()
    assert dist.has_chief_oracle() is False
    assert dist.is_chief_oracle() is False
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "1")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    assert dist.has_chief_oracle() is True and dist.is_chief_oracle() is True


def _oracle(tmp_path, cls=kt.oracles.RandomSearchOracle, **kwargs):
    return cls(objective=kt.Objective("score", "max"), **kwargs)


def test_display_class_and_oracle_display(tmp_path):
    display_cls = _compat.kt_display_class()
    assert isinstance(display_cls, type)
    for method in ("on_trial_begin", "on_trial_end"):
        assert callable(getattr(display_cls, method))
    oracle = _oracle(tmp_path, max_trials=1)
    assert isinstance(_compat.oracle_display(oracle), display_cls)

    class Mine(display_cls):
        pass

    mine = Mine(oracle=oracle, verbose=0)
    _compat.set_oracle_display(oracle, mine)
    assert _compat.oracle_display(oracle) is mine


def test_kt_silence_conditions(capsys):
    """keras-tuner 1.4.8 prints a conditional hyperparameter's parent value in to_proto."""
    hp = kt.HyperParameters()
    hp.Choice("norm", ["batch", "none"])
    with hp.conditional_scope("norm", ["batch"]):
        hp.Float("lambda", 1e-5, 1e-1, sampling="log")
    _compat.kt_silence_conditions()
    proto = hp.to_proto()
    assert capsys.readouterr().out == ""
    assert kt.HyperParameters.from_proto(proto).get("norm") == "batch"


@pytest.mark.parametrize("max_epochs, factor, expected", [
    # bracket b has b + 1 rounds of ceil(ceil(1 + log_f(E)) / (b + 1) * f**(b - r)) trials;
    # E=9, f=3: 3 brackets, end size 3: [3] + [5, 2] + [9, 3, 1] = 23
    (9, 3, 23),
    # E=4, f=2: 3 brackets, end size 3: [3] + [3, 2] + [4, 2, 1] = 15
    (4, 2, 15),
    # E=2, f=3: 1 bracket (2 -> 2/3 < 1), end size ceil(1 + 0.63) = 2: [2]
    (2, 3, 2),
])
def test_hyperband_budget_by_hand(tmp_path, max_epochs, factor, expected):
    oracle = _oracle(tmp_path, kt.oracles.HyperbandOracle, max_epochs=max_epochs, factor=factor)
    assert _compat.hyperband_budget(oracle) == expected


def test_hyperband_budget_formula(tmp_path):
    """The same count from keras-tuner's documented sizes, computed here independently."""
    oracle = _oracle(tmp_path, kt.oracles.HyperbandOracle, max_epochs=27, factor=3)
    end = math.ceil(1 + math.log(27, 3))
    brackets = 4  # 27, 9, 3, 1 >= 1
    total = sum(math.ceil(end / (b + 1) * 3 ** (b - r))
                for b in range(brackets) for r in range(b + 1))
    assert _compat.hyperband_budget(oracle) == total


def test_tuner_checkpoint_path(tmp_path):
    def build(hp):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        return model

    tuner = kt.RandomSearch(build, objective="loss", max_trials=1, directory=str(tmp_path),
                            project_name="p", overwrite=True)
    path = _compat.tuner_checkpoint_path(tuner, "0007")
    assert "0007" in path
    assert os.path.commonpath([path, str(tmp_path / "p")]) == str(tmp_path / "p")
    assert path != _compat.tuner_checkpoint_path(tuner, "0008")


def test_oracle_servicer(tmp_path):
    grpc = pytest.importorskip("grpc")
    from concurrent import futures

    oracle = _oracle(tmp_path, max_trials=1)
    servicer, add_to_server, exit_chief = _compat.oracle_servicer(oracle)
    assert servicer.stop_triggered is False
    assert exit_chief(oracle) is True  # nothing running, no worker has asked yet
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    add_to_server(servicer, server)  # registers without error
    server.stop(grace=None)


ORACLE_RPCS = ("GetSpace", "UpdateSpace", "CreateTrial", "UpdateTrial", "EndTrial", "GetTrial",
               "GetBestTrials")


def test_oracle_stub_and_messages():
    grpc = pytest.importorskip("grpc")
    messages = _compat.oracle_messages()
    for rpc in ORACLE_RPCS:
        assert callable(getattr(messages, f"{rpc}Request"))
        assert callable(getattr(messages, f"{rpc}Response"))
    with grpc.insecure_channel("127.0.0.1:1") as channel:  # a channel connects lazily
        stub = _compat.oracle_stub(channel)
        for rpc in ORACLE_RPCS:
            assert callable(getattr(stub, rpc)), rpc


def test_oracle_client_sends_its_calls_over_the_channel_given(tmp_path, monkeypatch):
    """keras-tuner's OracleClient keeps only ``stub`` from the channel it builds itself: after
    set_oracle_client_channel its calls go over ours (here one adding a metadata entry, which
    a server interceptor sees), through keras-tuner's real servicer."""
    grpc = pytest.importorskip("grpc")
    import collections
    from concurrent import futures

    seen = []

    class Record(grpc.ServerInterceptor):
        def intercept_service(self, continuation, details):
            seen.append((details.method, dict(details.invocation_metadata or ())))
            return continuation(details)

    class Details(collections.namedtuple("Details", ("method", "timeout", "metadata",
                                                     "credentials", "wait_for_ready",
                                                     "compression")), grpc.ClientCallDetails):
        pass

    class Tag(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, d, request):
            return continuation(Details(d.method, d.timeout, [*(d.metadata or ()), ("x-tag", "1")],
                                        d.credentials, d.wait_for_ready, d.compression), request)

    oracle = _oracle(tmp_path, max_trials=1)
    oracle._set_project_dir(str(tmp_path), "p")
    oracle.hyperparameters.Float("x", 0.0, 1.0)
    servicer, add_to_server, _ = _compat.oracle_servicer(oracle)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[Record()])
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
        monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(port))
        monkeypatch.setenv("KERASTUNER_TUNER_ID", "w0")
        client = _compat.oracle_client_class()(oracle)
        assert [p.name for p in client.get_space().space] == ["x"]  # keras-tuner's own channel
        _compat.set_oracle_client_channel(
            client, grpc.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{port}"), Tag()))
        assert [p.name for p in client.get_space().space] == ["x"]
        assert client.create_trial("w0").status == "RUNNING"
    finally:
        server.stop(grace=None)
    assert [method.rsplit("/", 1)[1] for method, _ in seen] == ["GetSpace", "GetSpace",
                                                                "CreateTrial"]
    assert [md.get("x-tag") for _, md in seen] == [None, "1", "1"]
    with pytest.raises(TypeError, match="OracleClient"):
        _compat.set_oracle_client_channel(oracle, None)


def test_sequential_functional():
    dense = keras.layers.Dense(2)
    built = keras.Sequential([keras.Input((3,)), dense])
    graph = _compat.sequential_functional(built)
    # the Sequential's own graph: its input and output shapes, through the same Dense layer
    assert [tuple(t.shape) for t in graph.inputs] == [(None, 3)]
    assert [tuple(t.shape) for t in graph.outputs] == [(None, 2)]
    assert [la for la in graph.layers if la.weights] == [dense]
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    assert _compat.sequential_functional(unbuilt) is None


def test_optimizer_uses_weight_decay():
    opt = keras.optimizers.AdamW(1e-3, weight_decay=0.1)
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    bias = keras.Variable(np.ones((2,), "float32"), name="bias")
    opt.exclude_from_weight_decay(var_names=["bias"])
    assert _compat.optimizer_uses_weight_decay(opt, kernel) is True
    assert _compat.optimizer_uses_weight_decay(opt, bias) is False


def test_tf_in_xla_context():
    """True only while tracing a tf.function(jit_compile=True) (Keras' compile(jit_compile=True)
    train step); False eagerly and in a plain tf.function. Off TensorFlow: always False."""
    if keras.backend.backend() != "tensorflow":
        assert _compat.tf_in_xla_context() is False
        return
    import tensorflow as tf

    seen = {}
    for jit in (False, True):
        def step(x, jit=jit):
            seen[jit] = _compat.tf_in_xla_context()
            return x + 1.0

        tf.function(step, jit_compile=jit)(tf.constant(1.0))
    assert _compat.tf_in_xla_context() is False
    assert seen == {False: False, True: True}
