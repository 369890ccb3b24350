"""Try many bad inputs and count the clear errors.

Clear means:

* command line: a non-zero exit, no "Traceback" on stderr, and a message naming the key or the
  value (one of the probe's tokens);
* Python API: a ValueError or TypeError whose message names the argument (one of the tokens).

The command-line probes go through ``keras_normreg_cli.main`` (the console script's entry) in
this one process, so Keras and TensorFlow start once (an uncaught exception is what would have
printed a traceback; argparse's SystemExit gives the exit status); ``--subprocess`` runs each of
them in a fresh ``python -m keras_normreg_cli`` instead (slower: ~5 s each). The saved entries
probed (damaged zip whose sha256 matches its card, a Lambda layer, a crafted config) are built
in a temporary folder from saved_models/digits_cnn_batch.

Run: python bench/probe_bad_inputs.py [--subprocess]
Prints a table, "tried N, clear M", and the unclear probes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RECIPE = os.path.join(ROOT, "zoo", "digits_cnn_batch.toml")
STUDY = os.path.join(ROOT, "tuning", "tiny_digits.toml")
NAN, INF = math.nan, math.inf


# ---------------------------------------------------------------- command-line probes

def _train_set(key_value: str, *tokens) -> tuple:
    """A probe of ``train --set KEY=VALUE``; clear if the message names KEY (or a token)."""
    key = key_value.split("=", 1)[0]
    return (f"train --set {key_value}",
            ["train", RECIPE, "--set", key_value, "--print-config"], (key, *tokens))


TRAIN_SETS = [
    ('model.arch="resnet7"', "resnet7"),
    ('data.dataset="imagenet9"', "imagenet9"),
    ("optimizer.weight_decay=inf",), ("optimizer.weight_decay=nan",),
    ("optimizer.weight_decay=-1",), ("optimizer.learning_rate=0",),
    ("optimizer.learning_rate=inf",), ("optimizer.learning_rate=nan",),
    ('optimizer.learning_rate="fast"',), ("optimizer.momentum=1.5",),
    ("optimizer.momentum=nan",), ('optimizer.name="lion9"',),
    ('optimizer.decay_semantics="x"',), ('optimizer.scale_invariant="x"',),
    ("optimizer.clipnorm=-1",), ("optimizer.clipnorm=inf",), ('optimizer.exclude="bias"',),
    ('model.norm="groupish"',), ('model.constraint="x"',), ("model.constraint_value=0",),
    ("model.constraint_value=inf",), ("model.dropout=1.0",), ("model.dropout=nan",),
    ("model.width=3",), ("model.overrides=3",), ("data.batch_size=0",),
    ("data.batch_size=1.5",), ('data.augment="yes"',), ("data.download=1",),
    ('regularization.kind="l3"',), ("regularization.l2=-1",), ("regularization.l2=inf",),
    ("regularization.l1=nan",), ('regularization.targets="kernel"',),
    ('schedule.kind="x"',), ("schedule.warmup_epochs=-1",), ("schedule.warmup_epochs=inf",),
    ("schedule.factor=0",), ("schedule.boundaries=[1, inf]",), ("schedule.final_fraction=nan",),
    ("train.epochs=0",), ("train.epochs=-3",), ("train.epochs=1.5",),
    ('train.strategy="warp"',), ("train.verbose=5",), ('train.seed="x"',),
    ("bogus.key=1", "bogus"), ("name=5",), ("train=3",),
    # names that would become wrong paths; values that make sense only together
    ('name="../../x"', "../../x"), ('name=""',), ('name="."',), ('name=".hidden"',),
    ('name="a/b"',), ("optimizer.learning_rate=1e39",), ("optimizer.weight_decay=1e-50",),
    ("regularization.l2=1e40",), ("schedule.final_fraction=1.5",),
    ("schedule.warmup_epochs=1000",), ("schedule.boundaries=[10.0]",),
    ("schedule.boundaries=[-1.0]",), ('schedule.kind="step"',), ("regularization.l2=1e-4",),
    ('regularization.kind="l2"',),
    ("model.constraint_value=2.0",), ("train.seed=-1",), ('train.output_dir=""',),
    ('data.data_dir=""',), ('data.data_dir="a\\u0000b"', "data.data_dir"),
]


def _train_sets(*key_values, tokens) -> tuple:
    """A probe of several ``--set``s that make sense only together; clear if the message names
    one of ``tokens``."""
    argv = ["train", RECIPE]
    for kv in key_values:
        argv += ["--set", kv]
    return (f"train --set {' --set '.join(key_values)}", [*argv, "--print-config"], tokens)


TRAIN_SETS_TOGETHER = [
    (('schedule.kind="step"', "schedule.boundaries=[20.0, 10.0]"), ("schedule.boundaries",)),
    (('schedule.kind="step"', "schedule.boundaries=[5.0, 500.0]"), ("schedule.boundaries",)),
    (('schedule.kind="step"', "schedule.boundaries=[5.0]", "schedule.warmup_epochs=1"),
     ("schedule.warmup_epochs",)),
    (('schedule.kind="step"', "schedule.boundaries=[1.0, 2.0, 3.0]", "schedule.factor=1e19"),
     ("schedule.factor",)),
    (('regularization.kind="l1"', "regularization.l1=1e-4", "regularization.l2=1e-4"),
     ("regularization.l2",)),
    (('schedule.kind="constant"', "schedule.final_fraction=0.5"), ("schedule.final_fraction",)),
    (("optimizer.weight_decay=0", 'optimizer.decay_semantics="schedule"'),
     ("optimizer.decay_semantics",)),
]


def _study(tmp, name, old, new) -> str:
    text = open(STUDY, encoding="utf-8").read()
    assert old in text, old
    path = os.path.join(tmp, name + ".toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(old, new))
    return path


def _entry(tmp, name, model_bytes=None, card_edit=None, card_text=None) -> str:
    entry = os.path.join(tmp, name)
    shutil.copytree(os.path.join(ROOT, "saved_models", "digits_cnn_batch"), entry)
    model_path = os.path.join(entry, "model.keras")
    if model_bytes is not None:
        with open(model_path, "wb") as f:
            f.write(model_bytes)
    card_path = os.path.join(entry, "card.json")
    card = json.load(open(card_path, encoding="utf-8"))
    card["sha256"] = hashlib.sha256(open(model_path, "rb").read()).hexdigest()
    if card_edit:
        card_edit(card)
    with open(card_path, "w", encoding="utf-8") as f:
        f.write(card_text if card_text is not None else json.dumps(card))
    return entry


def _lambda_model_bytes(tmp) -> bytes:
    import keras

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(lambda x: x * 2.0),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    path = os.path.join(tmp, "lambda.keras")
    model.save(path)
    return open(path, "rb").read()


def _crafted_model_bytes(tmp) -> bytes:
    """The shipped model.keras with a layer's class swapped for a function of a module that
    is not Keras' (what safe_mode / the registry must refuse)."""
    src = os.path.join(ROOT, "saved_models", "digits_cnn_batch", "model.keras")
    out = os.path.join(tmp, "crafted.keras")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                cfg = json.loads(data)
                layer = cfg["config"]["layers"][1]
                layer.update(module="os", class_name="system", registered_name="system")
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    return open(out, "rb").read()


def cli_probes(tmp) -> list[tuple]:
    probes = [_train_set(*kv) for kv in TRAIN_SETS]
    probes += [_train_sets(*kvs, tokens=tokens) for kvs, tokens in TRAIN_SETS_TOGETHER]
    a_file = os.path.join(tmp, "a_file")
    with open(a_file, "w") as f:
        f.write("not a folder\n")
    under_file = os.path.join(a_file, "sub")
    probes += [  # folders checked when given, not as an OSError once a run has started
        ("train --set data.data_dir=<a file>",
         ["train", RECIPE, "--set", f'data.data_dir="{a_file}"'], ("data.data_dir",)),
        ("train --set train.output_dir=<under a file>",
         ["train", RECIPE, "--set", f'train.output_dir="{under_file}"'], ("train.output_dir",)),
        ("train --data-dir <a file>", ["train", RECIPE, "--data-dir", a_file], ("data.data_dir",)),
        ('train --data-dir ""', ["train", RECIPE, "--data-dir", ""], ("data.data_dir",)),
        ("evaluate --data-dir <a file>",
         ["evaluate", os.path.join(ROOT, "saved_models", "digits_cnn_batch"), "--data-dir",
          a_file], ("--data-dir",)),
        ("tune --directory <a file>", ["tune", STUDY, "--directory", a_file], ("--directory",)),
        ('tune --directory ""', ["tune", STUDY, "--directory", ""], ("--directory",)),
        ("tune --directory <under a file>", ["tune", STUDY, "--directory", under_file],
         ("--directory",)),
        ("demo --directory <a file>", ["demo", "--directory", a_file], ("--directory",)),
        ("evaluate ..", ["evaluate", ".."], ("name_or_path",)),
    ]
    bad_toml = os.path.join(tmp, "bad.toml")
    with open(bad_toml, "w") as f:
        f.write("name = \n[model\n")
    no_arch = os.path.join(tmp, "no_arch.toml")
    with open(no_arch, "w") as f:
        f.write('name = "x"\n[data]\ndataset = "digits"\n')
    original = open(os.path.join(ROOT, "saved_models", "digits_cnn_batch", "model.keras"),
                    "rb").read()
    probes += [
        ("train --set foo (no =)", ["train", RECIPE, "--set", "foo"], ("foo",)),
        ("train --set .x=1", ["train", RECIPE, "--set", ".x=1"], (".x=1",)),
        ("train missing recipe", ["train", os.path.join(tmp, "nope.toml")], ("nope.toml",)),
        ("train invalid TOML", ["train", bad_toml], ("bad.toml", "invalid TOML")),
        ("train recipe without model.arch", ["train", no_arch], ("model.arch",)),
        ("train --strategy warp", ["train", RECIPE, "--strategy", "warp", "--print-config"],
         ("warp",)),
        ("train --backend theano", ["train", RECIPE, "--backend", "theano"], ("theano",)),
        ("train --fresh --resume", ["train", RECIPE, "--fresh", "--resume"],
         ("--fresh", "--resume")),
        ("unknown command fly", ["fly"], ("fly",)),
        ("list bogus", ["list", "bogus"], ("bogus",)),
        ("evaluate missing entry", ["evaluate", os.path.join(tmp, "nope")], ("nope",)),
        ("evaluate damaged zip, sha256 matches",
         ["evaluate", _entry(tmp, "damaged", original[: len(original) // 2])], ("model.keras",)),
        ("evaluate sha256 mismatch",
         ["evaluate", _entry(tmp, "mismatch", card_edit=lambda c: c.update(sha256="0" * 64))],
         ("sha256",)),
        ("evaluate card.json not JSON", ["evaluate", _entry(tmp, "badcard", card_text="{")],
         ("card.json",)),
        ("evaluate card.json lacks keys",
         ["evaluate", _entry(tmp, "nokeys", card_edit=lambda c: c.pop("metrics"))],
         ("metrics",)),
        ("evaluate Lambda layer (safe_mode)",
         ["evaluate", _entry(tmp, "lambda", _lambda_model_bytes(tmp))], ("model.keras",)),
        ("evaluate crafted config (os.system)",
         ["evaluate", _entry(tmp, "crafted", _crafted_model_bytes(tmp))], ("model.keras",)),
        ("tune missing study", ["tune", os.path.join(tmp, "nope.toml")], ("nope",)),
        ("tune --workers with --role", ["tune", STUDY, "--workers", "2", "--role", "chief"],
         ("workers", "role")),
        ("demo --epochs 0", ["demo", "--epochs", "0"], ("epochs",)),
        ("demo --epochs -1", ["demo", "--epochs", "-1"], ("epochs",)),
        ("demo --epochs x", ["demo", "--epochs", "x"], ("epochs", "'x'")),
    ]
    study_edits = [
        ("lambda = [1e-4, inf]", "space.lambda", "inf"),
        ("lambda = {min = 1e-4, max = inf}", "space.lambda.max", "inf"),
        ("lambda = [nan]", "space.lambda", "nan"),
        ("lambda = [-1e-4]", "space.lambda", "-0.0001"),
        ("lambda = [1e-4, 1e-4]", "space.lambda", "0.0001"),
        ("lambda = {min = 1e-2, max = 1e-4}", "space.lambda", "0.01"),
        ("lambda = inf", "space.lambda", "inf"),
        ('lambda = "big"', "space.lambda", "big"),
        ("lambda = []", "space.lambda", "[]"),
        ("lambda = 0", "space.lambda", "0"),
        ("lambda = {}", "space.lambda", "space.lambda.min"),
        ("lambda = [1e39]", "space.lambda", "float32"),
    ]
    for i, (new, key, value) in enumerate(study_edits):
        path = _study(tmp, f"study{i}", "lambda = [1e-4, 1e-3]", new)
        probes.append((f"tune {new}", ["tune", path, "--directory", os.path.join(tmp, "o")],
                       (key, value)))
    for i, (old, new, key) in enumerate([
        ("learning_rate = 0.05", "learning_rate = [0.05, inf]", "space.learning_rate"),
        ("learning_rate = 0.05", "learning_rate = nan", "space.learning_rate"),
        ('norms = ["none", "batch"]', 'norms = ["none", "groupish"]', "space.norms"),
        ('decay = ["none", "l2", "decoupled", "unit_norm"]', 'decay = ["x"]', "space.decay"),
        ("max_trials = 4", "max_trials = 0", "max_trials"),
        ('kind = "random"', 'kind = "psychic"', "tuner.kind"),
        ('name = "val_accuracy"', 'name = "vibes"', "objective"),
        ("epochs = 1", "epochs = inf", "epochs"),
        ('name = "tiny_digits"', 'name = "../escape"', "name"),
        ('name = "tiny_digits"', 'name = ".."', "name"),
        ('decay = ["none", "l2", "decoupled", "unit_norm"]', 'decay = ["none", "unit_norm"]',
         "space.lambda"),
        ('kind = "constant"', 'kind = "constant"\nwarmup_epochs = 5.0',
         "base.schedule.warmup_epochs"),
    ]):
        path = _study(tmp, f"other{i}", old, new)
        probes.append((f"tune {new}", ["tune", path, "--directory", os.path.join(tmp, "o")],
                       (key,)))
    return probes


def run_cli_inprocess(argv) -> tuple[int, str]:
    import keras_normreg_cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = keras_normreg_cli.main(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # what the console script would print as a traceback
            traceback.print_exc()
            code = 1
    return code, err.getvalue()


def run_cli_subprocess(argv) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "keras_normreg_cli", *argv],
                          capture_output=True, text=True, env=env, timeout=300)
    return proc.returncode, proc.stderr


# ---------------------------------------------------------------- Python API probes

def python_probes() -> list[tuple]:
    import keras

    from keras_normreg import (
        config,
        constraints,
        data,
        layers,
        optimizers,
        regularizers,
        saving,
        train,
        zoo,
    )
    from keras_normreg.tuning import space, spec

    sgd = keras.optimizers.SGD
    recipe = {"name": "x", "model": {"arch": "cnn1d"}, "data": {"dataset": "mnist1d"}}

    def cfg(section, key, value):
        return lambda: config.resolve({**recipe, section: {**recipe.get(section, {}),
                                                             key: value}})

    return [
        ("L1BatchNormalization(momentum=nan)", lambda: layers.L1BatchNormalization(momentum=NAN),
         ("momentum",)),
        ("L1BatchNormalization(momentum=1.5)", lambda: layers.L1BatchNormalization(momentum=1.5),
         ("momentum",)),
        ("L1BatchNormalization(epsilon=0)", lambda: layers.L1BatchNormalization(epsilon=0),
         ("epsilon",)),
        ("L1BatchNormalization(epsilon=inf)", lambda: layers.L1BatchNormalization(epsilon=INF),
         ("epsilon",)),
        ("L1BatchNormalization(axis=1.5)", lambda: layers.L1BatchNormalization(axis=1.5),
         ("axis",)),
        ("L1BatchNormalization(center='yes')",
         lambda: layers.L1BatchNormalization(center="yes"), ("center",)),
        ("TopKBatchNormalization(k=0)", lambda: layers.TopKBatchNormalization(k=0), ("k",)),
        ("TopKBatchNormalization(k=2.5)", lambda: layers.TopKBatchNormalization(k=2.5), ("k",)),
        ("TopKBatchNormalization(momentum=nan)",
         lambda: layers.TopKBatchNormalization(momentum=NAN), ("momentum",)),
        ("TopKBatchNormalization(epsilon=nan)",
         lambda: layers.TopKBatchNormalization(epsilon=NAN), ("epsilon",)),
        ("WeightNormalization(Dense, epsilon=nan)",
         lambda: layers.WeightNormalization(keras.layers.Dense(3), epsilon=NAN), ("epsilon",)),
        ("WeightNormalization(Dense, fixed_g=inf)",
         lambda: layers.WeightNormalization(keras.layers.Dense(3), fixed_g=INF), ("fixed_g",)),
        ("WeightNormalization('x')", lambda: layers.WeightNormalization("x"), ("layer",)),
        ("get_normalization('groupish')", lambda: layers.get_normalization("groupish"),
         ("groupish",)),
        ("DecoupledWeightDecay(SGD, nan)",
         lambda: optimizers.DecoupledWeightDecay(sgd(0.1), NAN), ("weight_decay",)),
        ("DecoupledWeightDecay(SGD, inf)",
         lambda: optimizers.DecoupledWeightDecay(sgd(0.1), INF), ("weight_decay",)),
        ("DecoupledWeightDecay(SGD, -1)",
         lambda: optimizers.DecoupledWeightDecay(sgd(0.1), -1), ("weight_decay",)),
        ("DecoupledWeightDecay(SGD, 1e-4, semantics='x')",
         lambda: optimizers.DecoupledWeightDecay(sgd(0.1), 1e-4, semantics="x"),
         ("semantics",)),
        ("DecoupledWeightDecay(SGD, 1e-4, max_learning_rate=nan)",
         lambda: optimizers.DecoupledWeightDecay(sgd(0.1), 1e-4, max_learning_rate=NAN),
         ("max_learning_rate",)),
        ("SGDP(-1)", lambda: optimizers.SGDP(-1), ("learning_rate",)),
        ("SGDP(nan)", lambda: optimizers.SGDP(NAN), ("learning_rate",)),
        ("SGDP(momentum=1)", lambda: optimizers.SGDP(0.1, momentum=1), ("momentum",)),
        ("SGDP(delta=0)", lambda: optimizers.SGDP(0.1, delta=0), ("delta",)),
        ("SGDP(weight_decay=inf)", lambda: optimizers.SGDP(0.1, weight_decay=INF),
         ("weight_decay",)),
        ("AdamP(inf)", lambda: optimizers.AdamP(INF), ("learning_rate",)),
        ("AdamP(beta_1=nan)", lambda: optimizers.AdamP(beta_1=NAN), ("beta_1",)),
        ("AdamP(epsilon_placement='x')", lambda: optimizers.AdamP(epsilon_placement="x"),
         ("epsilon_placement",)),
        ("FixedNorm(nan)", lambda: constraints.FixedNorm(NAN), ("value",)),
        ("FixedNorm(inf)", lambda: constraints.FixedNorm(INF), ("value",)),
        ("FixedNorm(0)", lambda: constraints.FixedNorm(0), ("value",)),
        ("MaxNorm(inf)", lambda: constraints.MaxNorm(INF), ("max_value",)),
        ("MaxNorm(-1)", lambda: constraints.MaxNorm(-1), ("max_value",)),
        ("constraints.get('x')", lambda: constraints.get("x"), ("'x'",)),
        ("regularizers.L2(nan)", lambda: regularizers.L2(NAN), ("l2",)),
        ("regularizers.L1(inf)", lambda: regularizers.L1(INF), ("l1",)),
        ("zoo.create('resnet7')", lambda: zoo.create("resnet7"), ("resnet7",)),
        ("zoo.create('cnn1d', bogus=1)", lambda: zoo.create("cnn1d", bogus=1), ("bogus",)),
        ("zoo.create('cnn1d', dropout=nan)", lambda: zoo.create("cnn1d", dropout=NAN),
         ("dropout",)),
        ("data.info('imagenet9')", lambda: data.info("imagenet9"), ("imagenet9",)),
        ("config optimizer.weight_decay=inf", cfg("optimizer", "weight_decay", INF),
         ("optimizer.weight_decay",)),
        ("config optimizer.learning_rate=nan", cfg("optimizer", "learning_rate", NAN),
         ("optimizer.learning_rate",)),
        ("config model.constraint_value=inf", cfg("model", "constraint_value", INF),
         ("model.constraint_value",)),
        ("space lambda=[1e-4, inf]", lambda: space.resolve_space({"lambda": [1e-4, INF]}),
         ("space.lambda",)),
        ("space lambda={min: 1e-4, max: inf}",
         lambda: space.resolve_space({"lambda": {"min": 1e-4, "max": INF}}),
         ("space.lambda",)),
        ("space eta_lambda=[nan] (product)",
         lambda: space.resolve_space({"parametrization": "product", "eta_lambda": [NAN]}),
         ("space.eta_lambda",)),
        ("config name='../../x'", lambda: config.resolve({**recipe, "name": "../../x"}),
         ("name",)),
        ("config name=''", lambda: config.resolve({**recipe, "name": ""}), ("name",)),
        ("config optimizer.learning_rate=1e39", cfg("optimizer", "learning_rate", 1e39),
         ("optimizer.learning_rate",)),
        ("config schedule.boundaries=[3, 1] (step)",
         lambda: config.resolve({**recipe, "schedule": {"kind": "step",
                                                         "boundaries": [3.0, 1.0]}}),
         ("schedule.boundaries",)),
        ("config regularization.l2=1e-4 with kind none", cfg("regularization", "l2", 1e-4),
         ("regularization.l2",)),
        ("config train.output_dir=''", cfg("train", "output_dir", ""), ("train.output_dir",)),
        ("saving.find_entry('..')", lambda: saving.find_entry(".."), ("name_or_path",)),
        ("saving.save_entry(cfg name '../x')",
         lambda: saving.save_entry(None, {"name": "../x"}, {}, 0.0, None, "unused"),
         ("name",)),
        ("saving.save_entry(out_dir='')",
         lambda: saving.save_entry(None, {"name": "x"}, {}, 0.0, None, ""), ("out_dir",)),
        ("train.check_paths(run_dir=<NUL>)",
         lambda: train.check_paths(config.resolve(recipe), "a\x00b"), ("run_dir",)),
        ("tuning spec name='..'",
         lambda: spec.resolve_study({"name": "..", "base": {"model": {"arch": "cnn_digits"},
                                                            "data": {"dataset": "digits"}}}),
         ("name",)),
        ("tuning spec space.lambda=[] ",
         lambda: spec.resolve_study({"name": "s", "space": {"lambda": []},
                                     "base": {"model": {"arch": "cnn_digits"},
                                              "data": {"dataset": "digits"}}}),
         ("space.lambda",)),
    ]


def run_python(make) -> tuple[str, bool, str]:
    """(outcome, ValueError/TypeError (subclasses included)?, message)."""
    try:
        make()
    except (ValueError, TypeError) as e:
        return type(e).__name__, True, str(e)
    except Exception as e:  # noqa: BLE001 - another type is what the probe reports
        return type(e).__name__, False, f"(unexpected type) {e}"
    return "accepted", False, ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subprocess", action="store_true",
                   help="run every command-line probe in a fresh process (slower)")
    args = p.parse_args(argv)
    print(f"command: python bench/probe_bad_inputs.py{' --subprocess' if args.subprocess else ''}")
    rows = []
    t0 = time.perf_counter()
    if not args.subprocess:  # start Keras as the console script does (its start-up lines filtered)
        import keras_normreg_cli

        keras_normreg_cli._import_quietly("keras_normreg.cli")
    with tempfile.TemporaryDirectory() as tmp:
        run = run_cli_subprocess if args.subprocess else run_cli_inprocess
        for label, cli_argv, tokens in cli_probes(tmp):
            code, err = run(cli_argv)
            err_text = err.replace(tmp, "<tmp>")
            named = any(t in err for t in tokens)
            clear = code != 0 and "Traceback" not in err and named
            last = (err_text.strip().splitlines() or [""])[-1]
            rows.append(("cli", label, f"exit {code}, {len(err.splitlines())} line(s)", clear,
                         last))
        for label, make, tokens in python_probes():
            kind, right_type, message = run_python(make)
            clear = right_type and any(t in message for t in tokens)
            rows.append(("python", label, kind, clear, message.splitlines()[0] if message else ""))
    width = max(len(r[1]) for r in rows)
    print(f"| kind | probe{' ' * (width - 5)} | outcome | clear | message (last line) |")
    print(f"|---|{'-' * (width + 2)}|---|---|---|")
    for kind, label, outcome, clear, message in rows:
        short = message if len(message) <= 110 else message[:107] + "..."
        print(f"| {kind} | {label:<{width}} | {outcome} | {'yes' if clear else 'NO'} | {short} |")
    clear_n = sum(r[3] for r in rows)
    print(f"\ntried {len(rows)}, clear {clear_n} ({time.perf_counter() - t0:.0f} s)")
    unclear = [r for r in rows if not r[3]]
    if unclear:
        print("unclear:")
        for kind, label, outcome, _, message in unclear:
            print(f"  [{kind}] {label}: {outcome}: {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
