"""The model zoo: ``from keras_normreg import zoo``; ``zoo.create(name, ...)``, ``zoo.list_models()``.

Families: MLP, 1-D/2-D CNNs, ResNets, pre-activation ResNets, VGG, wide ResNets and transformers
(ViT / sequence encoders / decoder-only GPT, with pre-/post-LN, RMSNorm, QK-norm and nGPT).
Every architecture takes the normalization (``norm=``), regularization (``regularization=``) and
constraint (``constraint=``) knobs; see :func:`keras_normreg.zoo.registry.create`.
Every model returns logits unless built with ``classifier_activation`` (``"softmax"``:
probabilities); it is a :class:`ZooModel`, whose ``compile`` warns
(:class:`LossMismatchWarning`) when the loss reads the outputs the wrong way.
"""

from keras_normreg.zoo._layers import ZeroPadChannels
from keras_normreg.zoo._model import LossMismatchWarning, ZooModel
from keras_normreg.zoo.preact_resnet import build_preact_resnet, preact_resnet18
from keras_normreg.zoo.pretrained import list_pretrained, load
from keras_normreg.zoo.registry import ModelSpec, create, get_spec, list_models, register_model
from keras_normreg.zoo.resnet import (
    build_resnet,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from keras_normreg.zoo.small import build_cnn1d, build_cnn2d, build_mlp, cnn1d, cnn_digits, mlp
from keras_normreg.zoo.transformer import (
    build_transformer,
    gpt_modular,
    seq_mnist1d,
    vit_cifar,
    vit_digits,
)
from keras_normreg.zoo.vgg import build_vgg, vgg11, vgg16
from keras_normreg.zoo.wide_resnet import build_wide_resnet, wrn16_4, wrn28_10

__all__ = [
    "LossMismatchWarning",
    "ModelSpec",
    "ZeroPadChannels",
    "ZooModel",
    "build_cnn1d",
    "build_cnn2d",
    "build_mlp",
    "build_preact_resnet",
    "build_resnet",
    "build_transformer",
    "build_vgg",
    "build_wide_resnet",
    "cnn1d",
    "cnn_digits",
    "create",
    "get_spec",
    "gpt_modular",
    "list_models",
    "list_pretrained",
    "load",
    "mlp",
    "preact_resnet18",
    "register_model",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "seq_mnist1d",
    "vgg11",
    "vgg16",
    "vit_cifar",
    "vit_digits",
    "wrn16_4",
    "wrn28_10",
]
