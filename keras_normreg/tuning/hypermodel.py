"""``NormRegHyperModel``: a keras-tuner HyperModel over λ × normalization × decay mode × lr."""

from __future__ import annotations

import math
import types
from collections.abc import Mapping

import keras
import keras_tuner as kt

from keras_normreg import config as nr_config
from keras_normreg import distribute
from keras_normreg.data.pipelines import load_epochs
from keras_normreg.tuning import space as nr_space

__all__ = ["NormRegHyperModel"]


class NormRegHyperModel(kt.HyperModel):
    """A zoo architecture on a dataset, with the whole λ × normalization space in ``build(hp)``.

    ``build(hp)`` declares (see :func:`keras_normreg.tuning.space.declare`):

    * ``norm``: ``Choice(space.norms)`` — the zoo model's normalization;
    * ``decay``: ``Choice(space.decay)`` — ``"l2"`` (coupled, λ/2·‖w‖² also on scale-invariant
      kernels), ``"decoupled"`` (``w ← w − ηλw``), ``"unit_norm"`` (scale-invariant kernels on
      the unit sphere) or ``"none"``;
    * ``learning_rate``: η (fixed, choice or range);
    * only when ``decay`` is ``l2`` or ``decoupled`` (a conditional scope, so there is no λ
      under ``unit_norm``/``none``): ``lambda`` (independent parametrization) or
      ``eta_lambda`` (product parametrization, ``λ = eta_lambda / learning_rate``);

    then builds the model with :func:`keras_normreg.train.build_model`, the optimizer with
    :func:`keras_normreg.train.build_optimizer` (its schedule spans ``train.epochs``) and
    compiles it (sparse cross-entropy on logits, accuracy). ``fit`` trains on the base recipe's
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
    def _replicas(self) -> int:
        return 1 if self.strategy is None else self.strategy.num_replicas_in_sync

    def data(self):
        """Training and validation streams (loaded once per process)."""
        if self._data is not None:
            return self._data
        d, t = self.base["data"], self.base["train"]
        b, replicas = d["batch_size"], self._replicas()
        if replicas > 1 and b % replicas:
            raise ValueError(
                f"data.batch_size is the global batch and must be a multiple of the {replicas} "
                f"replicas of the strategy. Received: data.batch_size={b!r}")
        train, n = load_epochs(d["dataset"], d["train_split"], b, data_dir=d["data_dir"],
                               augment=d["augment"], seed=t["seed"], download=d["download"],
                               autotune=d["autotune"])
        steps = distribute.steps_per_epoch(n, b, replicas)
        val, val_steps = None, None
        if d["validation_split"]:
            val, nv = load_epochs(d["dataset"], d["validation_split"], b, data_dir=d["data_dir"],
                                  augment=False, shuffle=False, download=d["download"],
                                  autotune=d["autotune"])
            val_steps = distribute.steps_per_epoch(nv, b, replicas)
        if steps < 1 or val_steps == 0:
            raise ValueError(f"The training or validation split is too small. Received: "
                             f"data.train_split={d['train_split']!r}, "
                             f"data.validation_split={d['validation_split']!r}")
        if self.strategy is not None and replicas > 1:
            train = distribute.distribute_batches(self.strategy, train)
            val = None if val is None else distribute.distribute_batches(self.strategy, val)
        self._data = types.SimpleNamespace(train=train, steps=steps, val=val,
                                           val_steps=val_steps, num_examples=n)
        return self._data

    # -- HyperModel API --------------------------------------------------------------------
    def build(self, hp):
        from keras_normreg import train as nr_train

        self.point(hp)
        cfg = self.recipe(hp)
        data = self.data()
        keras.utils.set_random_seed(cfg["train"]["seed"])
        model = nr_train.build_model(cfg)
        optimizer = nr_train.build_optimizer(cfg, data.steps, model)
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], jit_compile=cfg["train"]["jit_compile"])
        return model

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
