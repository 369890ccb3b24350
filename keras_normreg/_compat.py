"""The one place where keras_normreg touches private Keras and keras-tuner internals.

Everything here is a thin, named accessor for something Keras or keras-tuner does not export
publicly. The rest of the package calls these functions instead of reaching into ``keras.src``,
``keras_tuner.src`` or underscore attributes, so a Keras / keras-tuner release that moves one of
them breaks one function here (and its test in ``tests/test_compat.py``), not a dozen call sites.

The versions this module was written and tested against are :data:`KERAS_TESTED` and
:data:`KERAS_TUNER_TESTED` (the same bounds as ``pyproject.toml``); :func:`check_versions`
says loudly when the installed versions are outside them. keras-tuner is imported lazily: the
blocks (layers, optimizers, ...) do not need it.
"""

from __future__ import annotations

import keras

__all__ = [
    "KERAS_TESTED",
    "KERAS_TUNER_TESTED",
    "check_kt_private_names",
    "check_versions",
    "flatten_layers",
    "graph_nodes_by_depth",
    "hyperband_budget",
    "in_stateless_scope",
    "kt_display_class",
    "kt_distribute",
    "kt_missing_private_names",
    "kt_silence_conditions",
    "kt_trial_status",
    "kt_tuner_hooks",
    "no_automatic_dependency_tracking",
    "optimizer_iterations",
    "optimizer_learning_rate_attr",
    "optimizer_uses_weight_decay",
    "optimizer_variable_key",
    "oracle_client_class",
    "oracle_display",
    "oracle_messages",
    "oracle_servicer",
    "oracle_stub",
    "sequential_functional",
    "set_oracle_client_channel",
    "set_oracle_display",
    "stored_value",
    "tuner_checkpoint_path",
    "version_in_range",
]

#: (lowest, first excluded) versions of Keras this package is tested with (pyproject.toml).
KERAS_TESTED = ("3.10", "3.16")
#: (lowest, first excluded) versions of keras-tuner this package is tested with.
KERAS_TUNER_TESTED = ("1.4", "1.5")


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in str(text).split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def version_in_range(version: str, bounds: tuple[str, str]) -> bool:
    """``bounds[0] <= version < bounds[1]``, comparing numeric release parts."""
    low, high = (_version_tuple(b) for b in bounds)
    v = _version_tuple(version)
    return low <= v < high


def check_versions(keras_version: str | None = None, keras_tuner_version: str | None = None):
    """Raise ``RuntimeError`` naming the package and version when it is outside the tested range.

    With no arguments it checks the installed Keras (and keras-tuner, if installed).
    """
    if keras_version is None:
        keras_version = keras.__version__
    if not version_in_range(keras_version, KERAS_TESTED):
        raise RuntimeError(
            f"keras_normreg's private-API accessors (keras_normreg/_compat.py) are tested with "
            f"keras>={KERAS_TESTED[0]},<{KERAS_TESTED[1]}. Received: keras=={keras_version}")
    if keras_tuner_version is None:
        try:
            import keras_tuner
        except ImportError:
            return
        keras_tuner_version = keras_tuner.__version__
    if not version_in_range(keras_tuner_version, KERAS_TUNER_TESTED):
        raise RuntimeError(
            f"keras_normreg's private-API accessors (keras_normreg/_compat.py) are tested with "
            f"keras-tuner>={KERAS_TUNER_TESTED[0]},<{KERAS_TUNER_TESTED[1]}. "
            f"Received: keras-tuner=={keras_tuner_version}")


# ----------------------------------------------------------------------------------- Keras
def _dependency_tracking_decorator():
    from keras.src.utils.tracking import no_automatic_dependency_tracking as decorator

    return decorator


#: Decorator: attributes set inside the method are not tracked by Keras (``keras.src.utils``).
no_automatic_dependency_tracking = _dependency_tracking_decorator()


def optimizer_variable_key(optimizer: keras.optimizers.Optimizer, variable) -> str:
    """The key Keras optimizers index their per-variable state with (``_var_key``)."""
    return optimizer._var_key(variable)


def optimizer_iterations(optimizer: keras.optimizers.Optimizer):
    """The optimizer's step counter variable (``_iterations``; ``iterations`` may be a copy)."""
    return optimizer._iterations


def optimizer_learning_rate_attr(optimizer: keras.optimizers.Optimizer):
    """What the optimizer was given as learning rate: a float-valued Variable, a schedule or a
    callable (``_learning_rate``; the public ``learning_rate`` evaluates schedules)."""
    return optimizer._learning_rate


def flatten_layers(model, include_self: bool = False):
    """Every layer inside ``model``, nested ones included (``_flatten_layers``)."""
    return list(model._flatten_layers(include_self=include_self, recursive=True))


def graph_nodes_by_depth(model):
    """``{depth: [node, ...]}`` of a functional/Sequential model, or None for a subclassed one."""
    return getattr(model, "_nodes_by_depth", None)


# ----------------------------------------------------------------------------- keras-tuner
def kt_trial_status():
    """keras-tuner's ``TrialStatus`` enum-like class."""
    from keras_tuner.src.engine import trial as kt_trial

    return kt_trial.TrialStatus


def kt_distribute():
    """keras-tuner's distribution helpers (``has_chief_oracle``, ``is_chief_oracle``)."""
    from keras_tuner.src.distribute import utils as kt_dist

    return kt_dist


def kt_display_class():
    """The base class of keras-tuner's per-trial progress display (``oracle.Display``)."""
    from keras_tuner.src.engine import oracle as kt_oracle

    return kt_oracle.Display


def kt_silence_conditions():
    """keras-tuner prints a line for every conditional-scope check; replace its ``print``."""
    from keras_tuner.src.engine import conditions as kt_conditions

    kt_conditions.print = lambda *args, **kwargs: None


def oracle_display(oracle):
    """The oracle's progress display object (``_display``)."""
    return oracle._display


def set_oracle_display(oracle, display) -> None:
    oracle._display = display


def hyperband_budget(oracle) -> int:
    """Trials of one Hyperband iteration: the sum of its bracket/round sizes."""
    total = 0
    for bracket in range(oracle._get_num_brackets()):
        for rnd in range(oracle._get_num_rounds(bracket)):
            total += oracle._get_size(bracket, rnd)
    return total


def tuner_checkpoint_path(tuner, trial_id: str) -> str:
    """Where a trial's best weights are written (``_get_checkpoint_fname``)."""
    return tuner._get_checkpoint_fname(trial_id)


def kt_tuner_hooks(mixin):
    """Class decorator for a mixin placed before a keras-tuner ``Tuner`` class: keras-tuner's
    private per-execution hooks call the mixin's own methods.

    * ``Tuner._build_hypermodel(hp)`` (builds the model of a trial; Hyperband also loads the
      weights of an earlier trial) calls ``mixin._study_build_hypermodel(hp, build)``;
    * ``Tuner._build_and_fit_model(trial, *args, **kwargs)`` (one execution of a trial)
      calls ``mixin._study_build_and_fit(trial, build_and_fit, *args, **kwargs)``,

    where ``build`` / ``build_and_fit`` are keras-tuner's own (the next class after the mixin,
    as ``super()`` would give). No public method runs once per execution: ``run_trial`` loops
    over the executions itself. Returns ``mixin``.
    """

    def _build_hypermodel(self, hp):
        return self._study_build_hypermodel(hp, super(mixin, self)._build_hypermodel)

    def _build_and_fit_model(self, trial, *args, **kwargs):
        return self._study_build_and_fit(trial, super(mixin, self)._build_and_fit_model,
                                         *args, **kwargs)

    mixin._build_hypermodel = _build_hypermodel
    mixin._build_and_fit_model = _build_and_fit_model
    return mixin


#: The private keras-tuner names the accessors of this module rely on, as
#: ``"module:attribute.path"``; :func:`kt_missing_private_names` checks them.
KT_PRIVATE_NAMES = (
    "keras_tuner.src.engine.trial:TrialStatus",
    "keras_tuner.src.distribute.utils:has_chief_oracle",
    "keras_tuner.src.distribute.utils:is_chief_oracle",
    "keras_tuner.src.engine.oracle:Display",
    "keras_tuner.src.engine.oracle:Oracle._get_oracle_fname",
    "keras_tuner.src.engine.conditions:Parent.to_proto",
    "keras_tuner:oracles.HyperbandOracle._get_num_brackets",
    "keras_tuner:oracles.HyperbandOracle._get_num_rounds",
    "keras_tuner:oracles.HyperbandOracle._get_size",
    "keras_tuner:Tuner._get_checkpoint_fname",
    "keras_tuner:Tuner._build_hypermodel",
    "keras_tuner:Tuner._build_and_fit_model",
    "keras_tuner:Hyperband._build_hypermodel",
    "keras_tuner.src.engine.tuner_utils:SaveBestEpoch._save_model",
    "keras_tuner.src.protos:get_service",
    "keras_tuner.src.protos:get_service_grpc",
    "keras_tuner.src.distribute.oracle_chief:OracleServicer",
    "keras_tuner.src.distribute.oracle_chief:exit_chief",
    "keras_tuner.src.distribute.oracle_client:OracleClient",
    "keras_tuner.src.utils:save_json",
)
#: Private attributes of an oracle instance (set in ``Oracle.__init__``) the accessors use.
KT_PRIVATE_ORACLE_ATTRIBUTES = ("_display", "_retry_queue")


def kt_missing_private_names(names=KT_PRIVATE_NAMES,
                             oracle_attributes=KT_PRIVATE_ORACLE_ATTRIBUTES) -> list[str]:
    """The names of ``names`` (``"module:attribute.path"``) that the installed keras-tuner
    lacks, and the attributes of ``oracle_attributes`` a fresh ``RandomSearchOracle`` lacks
    (as ``"Oracle().<name>"``); empty when every one is there."""
    import importlib

    import keras_tuner

    missing = []
    for entry in names:
        module_name, _, path = entry.partition(":")
        try:
            obj = importlib.import_module(module_name)
        except ImportError:
            missing.append(entry)
            continue
        for part in path.split("."):
            if not hasattr(obj, part):
                missing.append(entry)
                break
            obj = getattr(obj, part)
    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("score", "max"), max_trials=1)
    missing += [f"Oracle().{name}" for name in oracle_attributes if not hasattr(oracle, name)]
    return missing


def check_kt_private_names(**kwargs) -> None:
    """Raise ``RuntimeError`` naming every private keras-tuner name this module relies on that
    the installed keras-tuner lacks (arguments: those of :func:`kt_missing_private_names`)."""
    missing = kt_missing_private_names(**kwargs)
    if missing:
        import keras_tuner

        raise RuntimeError(
            f"The installed keras-tuner lacks private names keras_normreg relies on "
            f"(keras_normreg/_compat.py, tested with keras-tuner>={KERAS_TUNER_TESTED[0]},"
            f"<{KERAS_TUNER_TESTED[1]}): {', '.join(missing)}. "
            f"Received: keras-tuner=={keras_tuner.__version__}")


def oracle_servicer(oracle):
    """keras-tuner's gRPC oracle service for ``oracle``.

    Returns ``(servicer, add_to_server, exit_chief)``: the servicer (``stop_triggered`` says a
    worker was told to stop), ``add_to_server(servicer, grpc_server)`` and
    ``exit_chief(oracle) -> bool`` (True once no trial runs and every worker was told to stop).
    """
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    servicer = oracle_chief.OracleServicer(oracle)
    return (servicer, protos.get_service_grpc().add_OracleServicer_to_server,
            oracle_chief.exit_chief)


# ------------------------------------------------------------------------- Keras (more)
def sequential_functional(model):
    """The functional graph a built ``keras.Sequential`` keeps (``_functional``), or None when
    it was built without an input shape (no symbolic graph)."""
    return getattr(model, "_functional", None)


def optimizer_uses_weight_decay(optimizer: keras.optimizers.Optimizer, variable) -> bool:
    """Whether a Keras optimizer's own ``weight_decay`` applies to ``variable``
    (``_use_weight_decay``: ``exclude_from_weight_decay`` not matching it)."""
    return bool(optimizer._use_weight_decay(variable))


# ------------------------------------------------------------------------------------------
# Stateless calls (the layers on the JAX backend).
# JAX's trainer runs every step inside a keras.StatelessScope and keeps only the assignments
# to NON-trainable variables; a layer that must assign a trainable one (WeightNormalization's
# data init) checks these to fail loudly instead of silently losing the assignment.
def in_stateless_scope() -> bool:
    """Whether a ``keras.StatelessScope`` is active (``stateless_scope.in_stateless_scope``)."""
    from keras.src.backend.common import stateless_scope

    return stateless_scope.in_stateless_scope()


def stored_value(variable):
    """A variable's own value, ignoring any StatelessScope mapping (``variable._value``)."""
    return variable._value


# ------------------------------------------------------------------------------------------
# Distributed studies under faults: the study oracle keeps its state consistent, hands the
# trial of a silent worker back and writes checkpoints atomically; these reach into
# keras-tuner 1.4's Oracle / Tuner internals.
def oracle_retry_queue(oracle) -> list:
    """The trial ids waiting to be run again (``_retry_queue``; ``create_trial`` pops the
    last one first)."""
    return oracle._retry_queue


def oracle_state_path(oracle) -> str:
    """Where the oracle's state is saved: ``<project_dir>/oracle.json``
    (``_get_oracle_fname``)."""
    return oracle._get_oracle_fname()


def kt_save_best_epoch_class():
    """keras-tuner's per-trial checkpoint callback (``tuner_utils.SaveBestEpoch``: writes the
    best epoch's weights to ``filepath`` through its ``_save_model``)."""
    from keras_tuner.src.engine import tuner_utils

    return tuner_utils.SaveBestEpoch


def set_checkpoint_writer(callback, write) -> None:
    """Make a ``SaveBestEpoch`` callback write its weights with ``write(model, filepath)``
    instead of ``model.save_weights(filepath)`` (replaces ``_save_model`` on the instance)."""
    callback._save_model = lambda: write(callback.model, callback.filepath)


# ------------------------------------------------------------------------------------------
# Who may use the oracle (a shared secret, optionally TLS): keras-tuner's worker client
# builds its own ``grpc.insecure_channel`` in ``OracleClient.__init__`` and keeps only the
# stub; the study gives it a stub over its own channel (TLS, the secret on every call).
def oracle_client_class():
    """keras-tuner's worker-side oracle proxy (``distribute.oracle_client.OracleClient``)."""
    from keras_tuner.src.distribute import oracle_client

    return oracle_client.OracleClient


def oracle_stub(channel):
    """keras-tuner's gRPC client stub of the oracle service over ``channel``
    (``protos.get_service_grpc().OracleStub``): one callable per RPC (``GetSpace``,
    ``CreateTrial``, ``UpdateTrial``, ``EndTrial``, ``GetTrial``, ...)."""
    from keras_tuner.src import protos

    return protos.get_service_grpc().OracleStub(channel)


def oracle_messages():
    """keras-tuner's request/response messages of the oracle service
    (``protos.get_service()``: ``GetSpaceRequest``, ``CreateTrialRequest``, ...)."""
    from keras_tuner.src import protos

    return protos.get_service()


def set_oracle_client_channel(client, channel) -> None:
    """Make keras-tuner's ``OracleClient`` send every call over ``channel`` (its ``stub``,
    which its methods call, replaced by one over ``channel``)."""
    if not isinstance(client, oracle_client_class()) or not hasattr(client, "stub"):
        raise TypeError("Expected keras-tuner's OracleClient with a `stub` attribute (keras-tuner "
                        f"changed?). Received: client={type(client).__name__}")
    client.stub = oracle_stub(channel)


def install_atomic_kt_json(write_text) -> None:
    """Route keras-tuner 1.4's JSON writer (``keras_tuner.src.utils.save_json``: an open and a
    write in place) through ``write_text(path, text)``, an atomic replace, for local paths.

    keras-tuner writes every ``trial_*/trial.json`` (``Trial.save``, from the oracle's
    ``_save_trial``), ``build_config.json`` and the tuner's own state with it: a process
    killed in the middle of the write left a truncated file, and the study could not resume
    (``Oracle.reload`` reads every trial.json). Paths with a scheme (``gs://...``) keep
    keras-tuner's writer. Returns the JSON text as keras-tuner's does; idempotent."""
    import json

    from keras_tuner.src import utils as kt_utils

    original = kt_utils.save_json
    if getattr(original, "keras_normreg_atomic", False):
        return

    def save_json(path, obj):
        if "://" in str(path):
            return original(path, obj)
        text = json.dumps(obj)
        write_text(path, text)
        return text

    save_json.keras_normreg_atomic = True
    kt_utils.save_json = save_json


def tf_in_xla_context() -> bool:
    """Whether the TensorFlow code being traced now will be compiled by XLA: inside a
    ``tf.function(jit_compile=True)`` (what Keras' ``compile(jit_compile=True)`` builds for
    the train step). False when running eagerly, off the TensorFlow backend, or where
    TensorFlow's private helper (``control_flow_util.GraphOrParentsInXlaContext``, TF 2.16-2.21)
    is missing. Used to pick the faster form of a reduction per compiler (``_kernels``)."""
    if keras.backend.backend() != "tensorflow":
        return False
    try:
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util
    except ImportError:
        return False
    if tf.executing_eagerly():
        return False
    probe = getattr(control_flow_util, "GraphOrParentsInXlaContext", None)
    if probe is None:
        return False
    return bool(probe(tf.compat.v1.get_default_graph()))
