"""The modular arithmetic datasets as real, offline tensorflow-datasets builders.

``modular_add``, ``modular_sub``, ``modular_mul`` and ``modular_div`` (Power et al., 2022,
"Grokking: Generalization beyond overfitting on small algorithmic datasets"): every equation
``a op b = c`` with ``c = (a op b) mod p``, generated locally by
:mod:`keras_normreg.data.modular` (NumPy), which also documents the token ids, the fixed order
and the split strings. ``tfds.load("modular_add", split="train[:30%]")`` works offline once
``keras_normreg`` has been imported.

Features (stored on disk):

- ``x``: ``int32`` of shape ``(4,)``, the tokens ``[a, OP, b, EQ]`` (``OP = p``,
  ``EQ = p + 1``; vocabulary ``p + 2``);
- ``label``: ``ClassLabel(num_classes=p)``.

One split, ``train``, holding every equation in the fixed order (``disable_shuffling=True``):
example ``i`` is ``(x[i], y[i])`` of ``modular.generate(name, p)``, so ``train[:30%]`` /
``train[30%:]`` split the equations without overlap.

Configs: ``"default"`` (p = 97) and ``"p_113"``; any other prime with ``modular_config(p)``,
e.g. ``tfds.builder("modular_add", config=modular_config(59), data_dir=...)``
(``keras_normreg.data.load`` accepts the name ``"modular_add/p_59"`` for it).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_normreg.data._deps import require_tfds

require_tfds(__name__)

import tensorflow_datasets as tfds  # noqa: E402

from keras_normreg.data import modular  # noqa: E402
from keras_normreg.data._common import OfflineBuilderMixin, already_registered  # noqa: E402
from keras_normreg.data.modular import (  # noqa: E402, F401  (re-exported)
    DEFAULT_P,
    SEED,
    SEQUENCE_LENGTH,
    eq_token,
    op_token,
    vocab_size,
)

_WORDS = {"modular_add": "addition", "modular_sub": "subtraction",
          "modular_mul": "multiplication", "modular_div": "division"}


@dataclasses.dataclass(eq=False)
class ModularConfig(tfds.core.BuilderConfig):
    """BuilderConfig of the modular sets: the prime modulus ``p``."""

    p: int = DEFAULT_P


def _description(p: int) -> str:
    return (f"Every equation modulo p={p}, tokens [a, {op_token(p)}, b, {eq_token(p)}] "
            f"(vocabulary {vocab_size(p)}), in the fixed order of "
            f"numpy.random.default_rng({SEED}).permutation.")


def modular_config(p: int) -> ModularConfig:
    """The config of modulus ``p`` (a prime in [3, 4093]; 97 is ``"default"``)."""
    p = modular.check_p(p)
    for config in BUILDER_CONFIGS:
        if config.p == p:
            return config
    return ModularConfig(name=modular.config_name(p), p=p, description=_description(p))


def config_from_name(config_name: str) -> ModularConfig | None:
    """``"default"`` or ``"p_<prime>"`` -> config; None when the name does not parse or the
    number is not an accepted prime."""
    p = modular.p_from_config_name(config_name)
    if p is None or modular.prime_problem(p) is not None:
        return None
    return modular_config(p)


BUILDER_CONFIGS = [
    ModularConfig(name="default", p=DEFAULT_P, description=_description(DEFAULT_P)),
    ModularConfig(name="p_113", p=113, description=_description(113)),
]


class _ModularBuilder(OfflineBuilderMixin, tfds.core.GeneratorBasedBuilder,
                      skip_registration=True):
    """The generator-based builder shared by the four operations (not registered itself)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": f"Generated offline; order numpy default_rng({SEED}).permutation."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        p = self.builder_config.p
        symbol = modular.OPERATIONS[self.name]
        return self.dataset_info_from_configs(
            description=(
                f"Modular {_WORDS[self.name]}: every equation 'a {symbol} b = c' with "
                f"c = (a {symbol} b) mod p, as the tokens [a, OP=p, b, EQ=p+1] and the label c "
                f"(Power et al., 2022). One split, 'train', in a fixed seeded order: use "
                f"percent slices such as 'train[:30%]' / 'train[30%:]' for train/validation."
            ),
            features=tfds.features.FeaturesDict({
                "x": tfds.features.Tensor(shape=(SEQUENCE_LENGTH,), dtype=np.int32),
                "label": tfds.features.ClassLabel(num_classes=modular.num_classes(p)),
            }),
            supervised_keys=("x", "label"),
            homepage="https://arxiv.org/abs/2201.02177",
            citation=(
                "@article{power2022grokking, title={Grokking: Generalization Beyond Overfitting "
                "on Small Algorithmic Datasets}, author={Power, Alethea and Burda, Yuri and "
                "Edwards, Harri and Babuschkin, Igor and Misra, Vedant}, journal={arXiv "
                "preprint arXiv:2201.02177}, year={2022}}"
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        # the arrays data.arrays(name, ...) serves: int32 (n, 4) tokens, int64 labels
        arrays = modular.stored_splits(self.name, self.builder_config.p)
        return {split: self._generate_examples(*xy) for split, xy in arrays.items()}

    def _generate_examples(self, x, y):
        for index, (tokens, label) in enumerate(zip(x, y, strict=True)):
            yield index, {"x": tokens, "label": int(label)}


class ModularAdd(_ModularBuilder, skip_registration=already_registered("modular_add")):
    """``a + b = c (mod p)``."""

    name = "modular_add"


class ModularSub(_ModularBuilder, skip_registration=already_registered("modular_sub")):
    """``a - b = c (mod p)``."""

    name = "modular_sub"


class ModularMul(_ModularBuilder, skip_registration=already_registered("modular_mul")):
    """``a * b = c (mod p)``."""

    name = "modular_mul"


class ModularDiv(_ModularBuilder, skip_registration=already_registered("modular_div")):
    """``a / b = a * b**(p - 2) = c (mod p)``, ``b != 0``."""

    name = "modular_div"
