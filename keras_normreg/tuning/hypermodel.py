"""``NormRegHyperModel``: a keras-tuner HyperModel over λ × normalization × decay mode × lr."""

from __future__ import annotations

import math
from collections.abc import Mapping

import keras
import keras_tuner as kt

from keras_normreg import config as nr_config
from keras_normreg import train as nr_train
from keras_normreg.tuning import space as nr_space

__all__ = ["NormRegHyperModel"]


class NormRegHyperModel(kt.HyperModel):
    """A zoo architecture on a dataset, with the whole λ × normalization space in ``build(hp)``.

    ``build(hp)`` declares (see :func:`keras_normreg.tuning.space.declare`):

    * ``norm``: ``Choice(space.norms)`` — the zoo model's normalization;
    * ``decay``: ``Choice(space.decay)`` — ``"l2"`` (coupled, λ/2·‖w‖² also on scale-invariant
      kernels), ``"decoupled"`` (``w ← w − ηλw``), ``"unit_norm"`` (scale-invariant kernels on
      the sphere, radius rule ``sphere_radius="units"``) or ``"none"``;
    * ``learning_rate``: η (fixed, choice or range);
    * only when ``decay`` is ``l2`` or ``decoupled`` (a conditional scope, so there is no λ
      under ``unit_norm``/``none``): ``lambda`` (independent parametrization) or
      ``eta_lambda`` (product parametrization, ``λ = eta_lambda / learning_rate``);

    then builds and compiles the model the way ``keras-normreg train`` does, with
    :func:`keras_normreg.train.build_and_compile` (:func:`~keras_normreg.train.build_model`,
    :func:`~keras_normreg.train.build_optimizer` whose schedule spans ``train.epochs``, sparse
    cross-entropy on logits, accuracy); the data come from
    :func:`keras_normreg.train.prepare_data`. ``fit`` trains on the base recipe's
    ``data.train_split`` and validates on ``data.validation_split`` (default ``train[:90%]`` /
    ``train[90%:]``: the test split is never seen by the search).

    Args:
        arch: zoo model name (``keras-normreg list``).
        dataset: dataset name.
        space: the ``[space]`` table (dict) or a resolved space; None: the default space
            (``norms=["batch"]``, ``decay=["decoupled"]``, λ log-uniform in [1e-6, 1e-2]).
        base: a partial recipe (``model``, ``data``, ``optimizer``, ``schedule``, ``train``
            sections) for everything the space does not set; ``arch`` and ``dataset`` win.
        strategy: a ``tf.distribute.Strategy`` the trials run under (None: the default).
        name: the recipe name of the trials.
        seed_offset: added to ``train.seed`` (the tuner sets it per execution).
    """

    def __init__(self, arch: str, dataset: str, space=None, *, base: Mapping | None = None,
                 strategy=None, name: str = "normreg_trial", seed_offset: int = 0):
        super().__init__(name=name, tunable=True)
        if not isinstance(arch, str) or not arch:
            raise ValueError(f"Argument `arch` must be a zoo model name. Received: arch={arch!r}")
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"Argument `dataset` must be a dataset name. "
                             f"Received: dataset={dataset!r}")
        if base is not None and not isinstance(base, Mapping):
            raise ValueError(f"Argument `base` must be a dict (a partial recipe). "
                             f"Received: base={base!r}")
        self.arch = arch
        self.dataset = dataset
        raw = nr_config.merge(nr_config.drop_none(dict(base or {})),
                              {"model": {"arch": arch}, "data": {"dataset": dataset}})
        raw.pop("name", None)
        data = raw.setdefault("data", {})
        if data.get("validation_split") is None and "train_split" not in data:
            data["train_split"], data["validation_split"] = "train[:90%]", "train[90%:]"
        raw.setdefault("train", {}).setdefault("verbose", 0)
        self.base = nr_config.resolve({"name": name, **raw})
        self.space = nr_space.resolve_space(
            space, base_learning_rate=self.base["optimizer"]["learning_rate"])
        self.strategy = strategy
        self.seed_offset = seed_offset
        self._data = None

    # -- the space -----------------------------------------------------------------------
    def point(self, hp) -> dict:
        """Declare the space on ``hp`` and return the decoded point (norm, decay, η, λ, ηλ)."""
        return nr_space.declare(hp, self.space)

    def recipe(self, hp_or_values, name: str | None = None) -> dict:
        """The resolved recipe of a trial (``HyperParameters`` or its ``values`` dict)."""
        values = hp_or_values.values if isinstance(hp_or_values, kt.HyperParameters) \
            else hp_or_values
        point = nr_space.decode(values, self.space)
        cfg = nr_space.trial_recipe(self.base, point, self.space, name or self.name)
        cfg["train"]["seed"] = self.base["train"]["seed"] + self.seed_offset
        return cfg

    # -- data ----------------------------------------------------------------------------
    def data(self):
        """Training and validation streams of the base recipe (loaded once per process), by
        :func:`keras_normreg.train.prepare_data`: ``train``, ``val``, ``steps``,
        ``val_steps``, ``num_examples``."""
        if self._data is None:
            self._data = nr_train.prepare_data(self.base, self.strategy)
        return self._data

    # -- HyperModel API --------------------------------------------------------------------
    def build(self, hp):
        """The trial's model, compiled by :func:`keras_normreg.train.build_and_compile`
        (seeded with the trial's ``train.seed``)."""
        self.point(hp)
        cfg = self.recipe(hp)
        return nr_train.build_and_compile(cfg, self.data().steps)

    def fit(self, hp, model, *args, epochs=None, initial_epoch=0, callbacks=None, verbose=None,
            **kwargs):
        """Train ``model`` on the trial's data; returns the ``History`` (keras-tuner scores the
        best epoch). If the loss diverged before any validation, returns the validation
        metrics of the diverged model instead (so the trial is scored, not failed)."""
        if args or kwargs:
            raise ValueError("NormRegHyperModel.fit takes its data from the recipe; pass no "
                             f"data to search(). Received: args={args!r}, kwargs="
                             f"{sorted(kwargs)!r}")
        cfg = self.recipe(hp)
        data = self.data()
        cbs = [*(callbacks or []), keras.callbacks.TerminateOnNaN()]
        history = model.fit(
            data.train, epochs=epochs or cfg["train"]["epochs"], initial_epoch=initial_epoch,
            steps_per_epoch=data.steps, validation_data=data.val,
            validation_steps=data.val_steps, callbacks=cbs, shuffle=False,
            verbose=cfg["train"]["verbose"] if verbose is None else verbose)
        logs = history.history
        if data.val is not None and not logs.get("val_loss"):
            measured = model.evaluate(data.val, steps=data.val_steps, verbose=0,
                                      return_dict=True)
            out = {f"val_{k}": _finite(float(v)) for k, v in measured.items()}
            out.update({k: _finite(float(v[-1])) for k, v in logs.items() if v})
            out.setdefault("loss", math.inf)
            out["diverged"] = 1.0
            return out
        return history


def _finite(v: float) -> float:
    return v if math.isfinite(v) else math.inf
