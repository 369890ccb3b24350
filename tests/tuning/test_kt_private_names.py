"""The installed keras-tuner still has the private names the study relies on (through
keras_normreg/_compat.py), and still calls the private per-execution hooks the study tuner
plugs into (``_compat.kt_tuner_hooks``)."""

import keras
import keras_tuner as kt
import numpy as np
import pytest

from keras_normreg import _compat
from keras_normreg.tuning import tuner as nr_tuner


def test_installed_keras_tuner_has_every_private_name_we_use():
    # fails with "The installed keras-tuner lacks private names ...: <each missing name>"
    _compat.check_kt_private_names()


def test_the_check_names_each_missing_name_and_the_version():
    names = ("keras_tuner:Tuner._build_and_fit_model", "keras_tuner:Tuner._no_such_hook",
             "keras_tuner.src.no_such_module:Anything")
    assert _compat.kt_missing_private_names(names, ("_retry_queue", "_no_such_attr")) == [
        "keras_tuner:Tuner._no_such_hook", "keras_tuner.src.no_such_module:Anything",
        "Oracle()._no_such_attr"]
    with pytest.raises(RuntimeError, match=r"lacks private names .*: keras_tuner:Tuner\."
                                           r"_no_such_hook, keras_tuner\.src\.no_such_module:"
                                           r"Anything, Oracle\(\)\._no_such_attr\. Received: "
                                           rf"keras-tuner=={kt.__version__}$"):
        _compat.check_kt_private_names(names=names, oracle_attributes=("_no_such_attr",))


def test_the_study_tuner_plugs_into_the_hooks():
    for cls in (nr_tuner.StudyTuner, nr_tuner.HyperbandStudyTuner):
        for hook in ("_build_hypermodel", "_build_and_fit_model"):
            assert getattr(cls, hook) is getattr(nr_tuner._StudyMixin, hook), (cls, hook)


def test_keras_tuner_calls_the_hooks_once_per_execution(tmp_path):
    """A search of 1 trial x 2 executions: keras-tuner calls the build hook and the fit hook
    once per execution, each with keras-tuner's own method as the next step."""
    calls = []

    @_compat.kt_tuner_hooks
    class Recording:
        def _study_build_hypermodel(self, hp, build):
            calls.append(("build", build.__func__))
            return build(hp)

        def _study_build_and_fit(self, trial, build_and_fit, *args, **kwargs):
            calls.append(("fit", build_and_fit.__func__, trial.trial_id))
            return build_and_fit(trial, *args, **kwargs)

    class Tuner(Recording, kt.RandomSearch):
        pass

    def build(hp):
        model = keras.Sequential([keras.Input((2,)),
                                  keras.layers.Dense(hp.Int("units", 1, 4), activation="relu"),
                                  keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse", run_eagerly=True)  # no tracing: fast
        return model

    tuner = Tuner(build, objective="val_loss", max_trials=1, executions_per_trial=2,
                  directory=str(tmp_path), project_name="p", seed=0)
    x = np.zeros((4, 2), "float32")
    tuner.search(x, x[:, :1], validation_data=(x, x[:, :1]), epochs=1, verbose=0)
    fits = [c for c in calls if c[0] == "fit"]
    assert [c[2] for c in fits] == ["0", "0"]
    assert {c[1] for c in fits} == {kt.Tuner._build_and_fit_model}
    builds = [c for c in calls if c[0] == "build"]
    assert len(builds) == 2
    assert {c[1] for c in builds} == {kt.Tuner._build_hypermodel}
