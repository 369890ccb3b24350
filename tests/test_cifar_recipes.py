"""The CIFAR-10 recipes of zoo/ (docs/recipes_cifar.md): schedules in iterations against the
papers, the coupled-decay convention, model sizes against the papers, a short end-to-end run of
every recipe on a tiny fake CIFAR-10 prepared offline in a temporary tfds data_dir, and the
one-line error when the data_dir holds no CIFAR-10.

The fake data go through the real tfds ``cifar10`` builder (its ``download_and_prepare`` with
the download replaced by a folder of CIFAR binary files written here), so training reads a
genuinely prepared data_dir as a user's would, without network.
"""

import glob
import json
import os
from unittest import mock

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")  # the cifar10 pipelines are tf.data
tfds = pytest.importorskip("tensorflow_datasets")

from keras_normreg import cli, config, train  # noqa: E402
from keras_normreg.optimizers import DecoupledWeightDecay  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="tfds sets train on the tensorflow backend only")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = os.path.join(ROOT, "zoo")
STEPS = 391  # ceil(50000 / 128): the pipeline keeps the last partial batch (80 images)

HE = {"cifar10_resnet20": 20, "cifar10_resnet56": 56, "cifar10_resnet110": 110}
RECIPES = sorted(
    [*HE, *(f"{n}_sphere" for n in HE), "cifar10_wrn28_10", "cifar10_wrn28_10_sphere",
     "cifar10_preact_resnet18", "cifar10_preact_resnet18_sphere"])

# Each recipe shrunk to a few thousand weights for the end-to-end runs (same builder, same
# norm / decay / schedule kind): the recipe's arch at a reduced size.
SHRINK = {"preact": "{blocks = [1, 1], width = 4}",  # before "resnet": preact_resnet18
          "wrn": "{depth = 10, widen_factor = 1}",
          "resnet": "{depth = 8, width = 4}"}
FAST_E2E = ("cifar10_resnet20", "cifar10_resnet20_sphere")


def _path(name):
    return os.path.join(ZOO, f"{name}.toml")


def _family(name):
    return next(k for k in SHRINK if k in name)  # dicts keep their order


def test_the_cifar_recipes_are_all_here_and_named_after_their_files():
    found = sorted(os.path.splitext(os.path.basename(p))[0]
                   for p in glob.glob(os.path.join(ZOO, "cifar10_*.toml")))
    assert found == RECIPES
    for name in RECIPES:
        cfg = config.load_recipe(_path(name))
        assert cfg["name"] == name
        assert cfg["data"]["dataset"] == "cifar10" and cfg["data"]["batch_size"] == 128
        assert cfg["data"]["augment"] is None  # the cifar10 default: pad-4 crop + flip
        assert cfg["optimizer"]["learning_rate"] == 0.1 and cfg["optimizer"]["momentum"] == 0.9
        assert cfg["description"]


def _lr(schedule, step):
    if isinstance(schedule, float):
        return schedule
    return float(keras.ops.convert_to_numpy(schedule(step)))


# He et al. 2016, sec. 4.2: lr 0.1, /10 at 32k and 48k iterations, stop at 64k.
# Zagoruyko & Komodakis 2016: lr 0.1, x0.2 at epochs 60, 120, 160, 200 epochs.
# The values are float32 roundings of products computed in float64 (one rounding each:
# relative error <= 2**-24 ~ 6e-8), hence rtol=1e-6.
@pytest.mark.parametrize("name", [*HE, *(f"{n}_sphere" for n in HE)])
def test_he_schedule_in_iterations(name):
    cfg = config.load_recipe(_path(name))
    assert (cfg["train"]["epochs"] - 1) * STEPS < 64_000 <= cfg["train"]["epochs"] * STEPS
    lr = train.build_schedule(cfg, STEPS)
    # Keras counts steps from 0: step 31999 is the 32,000th iteration.
    for step, want in [(0, 0.1), (31_999, 0.1), (32_000, 0.01), (47_999, 0.01),
                       (48_000, 0.001), (64_000, 0.001)]:
        np.testing.assert_allclose(_lr(lr, step), want, rtol=1e-6, err_msg=f"step {step}")


@pytest.mark.parametrize("name", ["cifar10_wrn28_10", "cifar10_wrn28_10_sphere"])
def test_wrn_schedule_in_iterations(name):
    cfg = config.load_recipe(_path(name))
    assert cfg["train"]["epochs"] == 200 and cfg["optimizer"]["nesterov"] is True
    lr = train.build_schedule(cfg, STEPS)
    for epoch, want in [(0, 0.1), (60, 0.02), (120, 0.004), (160, 0.0008)]:
        np.testing.assert_allclose(_lr(lr, epoch * STEPS), want, rtol=1e-6)
        if epoch:  # the last step of the epoch before still has the previous value
            np.testing.assert_allclose(_lr(lr, epoch * STEPS - 1), want / 0.2, rtol=1e-6)


@pytest.mark.parametrize("name", ["cifar10_preact_resnet18", "cifar10_preact_resnet18_sphere"])
def test_preact_cosine_schedule(name):
    cfg = config.load_recipe(_path(name))
    assert cfg["train"]["epochs"] == 200
    lr = train.build_schedule(cfg, STEPS)
    total = 200 * STEPS
    # 0.1 * (1 + cos(pi * t / T)) / 2, evaluated by Keras in float32 in ~6 ops on values <= 1
    # (each rounding <= 6e-8 absolute): atol 1e-6.
    for t in (0, total // 4, total // 2, total):
        want = 0.1 * (1 + np.cos(np.pi * t / total)) / 2
        np.testing.assert_allclose(_lr(lr, t), want, rtol=0, atol=1e-6)


# Paper's decay lambda (gradient + lambda * w) -> Keras' l2 * sum(w^2) needs l2 = lambda / 2.
@pytest.mark.parametrize("name,lam", [("cifar10_resnet20", 1e-4), ("cifar10_resnet56", 1e-4),
                                      ("cifar10_resnet110", 1e-4), ("cifar10_wrn28_10", 5e-4),
                                      ("cifar10_preact_resnet18", 5e-4)])
def test_plain_recipes_use_coupled_decay_lambda_over_two(name, lam):
    cfg = config.load_recipe(_path(name))
    assert cfg["regularization"]["kind"] == "l2"
    assert cfg["regularization"]["l2"] == lam / 2
    assert cfg["optimizer"]["name"] == "sgd" and cfg["optimizer"]["weight_decay"] == 0


@pytest.mark.parametrize("name,lam", [(f"{n}_sphere", 1e-4) for n in HE]
                         + [("cifar10_wrn28_10_sphere", 5e-4),
                            ("cifar10_preact_resnet18_sphere", 5e-4)])
def test_sphere_recipes_use_decoupled_decay(name, lam):
    cfg = config.load_recipe(_path(name))
    assert cfg["regularization"]["kind"] == "none"
    o = cfg["optimizer"]
    assert (o["name"], o["scale_invariant"], o["weight_decay"]) == ("sgdw", "sphere", lam)


def test_resnet20_penalty_gradient_is_the_papers_decay_on_every_weight():
    """The summed penalty of cifar10_resnet20 has gradient 1e-4 * w for EVERY trainable weight
    (SGD's coupled decay of He et al.), found by differentiating the model's losses."""
    cfg = config.load_recipe(_path("cifar10_resnet20"), ["model.overrides={width = 4}"])
    model = train.build_model(cfg)
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:  # gamma starts at 1, beta at 0: make them generic
        v.assign(rng.normal(size=v.shape).astype("float32"))
    with tf.GradientTape() as tape:
        penalty = tf.add_n(model.losses)
    grads = tape.gradient(penalty, model.trainable_variables)
    assert all(g is not None for g in grads)
    for v, g in zip(model.trainable_variables, grads, strict=True):
        # 2 * 5e-5 * w: one float32 product of a float32 constant (rounded once) -> rtol 1e-6
        np.testing.assert_allclose(g.numpy(), 1e-4 * v.numpy(), rtol=1e-6, atol=1e-12,
                                   err_msg=v.path)


def _trainable_counts(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


# Unreduced models built from the recipes (no training), against the papers' parameter counts
# (He et al. Table 6; Zagoruyko & Komodakis, 36.5M; the CIFAR pre-activation ResNet-18's
# 11.2M) and, for ResNet-20, the count derived by hand below.
def _resnet20_by_hand():
    convs = 3 * 3 * 3 * 16 + 6 * (9 * 16 * 16)  # stem + stage 1 (6 convs 16->16)
    convs += 9 * 16 * 32 + 5 * (9 * 32 * 32)  # stage 2
    convs += 9 * 32 * 64 + 5 * (9 * 64 * 64)  # stage 3
    bn = 2 * (16 * 7 + 32 * 6 + 64 * 6)  # gamma + beta after each of the 19 convs
    return convs + bn + 64 * 10 + 10


@pytest.mark.parametrize("name,paper", [("cifar10_resnet20", 0.27e6),
                                        ("cifar10_resnet56_sphere", 0.85e6)])
def test_unreduced_recipe_builds_the_papers_model(name, paper):
    cfg = config.load_recipe(_path(name))
    model = train.build_model(cfg)
    n = _trainable_counts(model)
    assert abs(n - paper) / paper < 0.02
    if name == "cifar10_resnet20":
        assert n == _resnet20_by_hand() == 269_722


@pytest.mark.parametrize("name,paper", [("cifar10_resnet110", 1.7e6),
                                        ("cifar10_wrn28_10", 36.5e6),
                                        ("cifar10_preact_resnet18", 11.2e6)])
def test_unreduced_big_recipes_build_the_papers_model(name, paper):
    model = train.build_model(config.load_recipe(_path(name)))
    n = _trainable_counts(model)
    assert abs(n - paper) / paper < 0.02
    if name == "cifar10_wrn28_10":
        assert n == 36_479_194  # the widely reproduced WRN-28-10 count


def _plan(name, overrides=()):
    cfg = config.load_recipe(_path(name), list(overrides))
    model = train.build_model(cfg)
    opt = train.build_optimizer(cfg, STEPS, model)
    assert isinstance(opt, DecoupledWeightDecay)
    return opt.decay_plan(model.trainable_variables)


def test_resnet_sphere_plan_every_conv_on_the_sphere():
    # Post-activation CIFAR ResNet: every conv feeds a BatchNorm (conv -> BN), so all 19
    # conv kernels are scale-invariant; the Dense kernel is decayed; BN and biases are not.
    plan = _plan("cifar10_resnet20_sphere")
    kernels = {p: t for p, t in plan.items() if p.endswith("/kernel")}
    assert sum(t == "sphere" for t in kernels.values()) == 19
    assert kernels == {**{p: "sphere" for p in kernels if p != "classifier/kernel"},
                       "classifier/kernel": "decay"}
    assert {t for p, t in plan.items() if not p.endswith("/kernel")} == {"skip"}


def test_wrn_sphere_plan_first_convs_and_stem_on_the_sphere():
    # Pre-activation blocks: conv1 feeds mid_norm (invariant); conv2 and the projections add
    # into the residual stream (not invariant). The stem feeds only the first block's
    # pre_norm, since that block's shortcut is a projection of the pre-activated input.
    plan = _plan("cifar10_wrn28_10_sphere")
    sphere = sorted(p for p, t in plan.items() if t == "sphere")
    want = ["stem_conv/kernel"] + [f"stage{s}_block{b}_conv1/kernel"
                                   for s in (1, 2, 3) for b in (1, 2, 3, 4)]
    assert sphere == sorted(want)
    assert plan["classifier/kernel"] == "decay" and plan["stage1_block1_conv2/kernel"] == "decay"


# --- end to end on a tiny fake CIFAR-10 ---------------------------------------------------------

LABELS = "airplane automobile bird cat deer dog frog horse ship truck".split()


def _prepare_fake_cifar10(root, per_batch=4, test=8):
    """A real tfds data_dir holding cifar10 (5 * per_batch train, test examples of random
    pixels): the builder reads CIFAR binary files (1 label byte + 3072 CHW pixel bytes per
    image) from the folder the patched download returns."""
    src = os.path.join(root, "download", "cifar-10-batches-bin")
    os.makedirs(src)
    rng = np.random.default_rng(0)

    def write(name, n):
        labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
        images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        np.concatenate([labels, images], axis=1).tofile(os.path.join(src, name))

    for i in range(1, 6):
        write(f"data_batch_{i}.bin", per_batch)
    write("test_batch.bin", test)
    with open(os.path.join(src, "batches.meta.txt"), "w") as f:
        f.write("\n".join(LABELS))
    data_dir = os.path.join(root, "tfds")
    builder = tfds.builder("cifar10", data_dir=data_dir)
    fake = os.path.join(root, "download")
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                           lambda self, url: fake):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    assert builder.is_prepared()
    return data_dir


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return _prepare_fake_cifar10(str(tmp_path_factory.mktemp("cifar")))


def _train_shrunk(name, data_dir, out, capsys):
    cfg = config.load_recipe(_path(name))
    sets = [f"data.data_dir={json.dumps(data_dir)}", f"train.output_dir={json.dumps(out)}",
            "train.epochs=2", "train.verbose=0", "data.batch_size=8",
            f"model.overrides={SHRINK[_family(name)]}"]
    if cfg["schedule"]["kind"] == "step":  # the recipe's kind and factor, boundary at epoch 1
        sets.append("schedule.boundaries=[1.0]")
    argv = ["train", _path(name)]
    for s in sets:
        argv += ["--set", s]
    rc = cli.main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "test accuracy:" in captured.out
    entry = os.path.join(out, name)
    with open(os.path.join(entry, "card.json"), encoding="utf-8") as f:
        card = json.load(f)
    # 20 fake training images in batches of 8: ceil(20 / 8) = 3 steps per epoch, 2 epochs.
    assert len(card["history"]["loss"]) == 2
    assert all(np.isfinite(card["history"]["loss"]))
    saved = config.read_toml(os.path.join(entry, "recipe.toml"))
    assert saved["name"] == name and saved["model"]["arch"] == cfg["model"]["arch"]
    assert saved["data"]["data_dir"] == data_dir
    return card


@pytest.mark.parametrize("name", FAST_E2E)
def test_recipe_trains_end_to_end_on_fake_cifar10(name, cifar_dir, tmp_path, monkeypatch,
                                                  capsys):
    monkeypatch.chdir(tmp_path)  # runs/<name> goes there
    _train_shrunk(name, cifar_dir, str(tmp_path / "saved"), capsys)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in RECIPES if n not in FAST_E2E])
def test_other_recipes_train_end_to_end_on_fake_cifar10(name, cifar_dir, tmp_path, monkeypatch,
                                                        capsys):
    monkeypatch.chdir(tmp_path)
    _train_shrunk(name, cifar_dir, str(tmp_path / "saved"), capsys)


def test_missing_cifar10_is_a_one_line_error_naming_the_data_dir(tmp_path, monkeypatch,
                                                                 capsys):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty_tfds"
    empty.mkdir()
    rc = cli.main(["train", _path("cifar10_resnet20"), "--set",
                   f"data.data_dir={json.dumps(str(empty))}"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("keras-normreg train: error: Dataset 'cifar10' is not prepared")
    assert f"data_dir '{empty}'" in line
    assert "--download" in line  # how to get it
    assert not os.listdir(empty)  # nothing downloaded or written there
