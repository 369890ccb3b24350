import json
import os

import pytest

from keras_normreg import config
from keras_normreg.config import ConfigError

MINIMAL = """
name = "demo"
[model]
arch = "cnn1d"
[data]
dataset = "mnist1d"
"""


def write(tmp_path, text, name="r.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_filled(tmp_path):
    cfg = config.load_recipe(write(tmp_path, MINIMAL))
    assert cfg["name"] == "demo"
    assert cfg["model"] == {"arch": "cnn1d", "norm": "batch", "constraint": "none",
                            "constraint_value": 1.0, "dropout": 0.0, "overrides": {},
                            "classifier_activation": None}
    assert cfg["data"]["batch_size"] == 128
    assert cfg["data"]["data_dir"] is None
    assert cfg["optimizer"]["exclude"] == ["bias", "normalization"]
    assert cfg["train"]["strategy"] == "auto"


def test_int_accepted_for_float_and_converted(tmp_path):
    cfg = config.load_recipe(write(tmp_path, MINIMAL + "[optimizer]\nlearning_rate = 1\n"))
    assert cfg["optimizer"]["learning_rate"] == 1.0
    assert isinstance(cfg["optimizer"]["learning_rate"], float)


def test_unknown_key_names_path_and_valid_keys(tmp_path):
    p = write(tmp_path, MINIMAL + "[optimizer]\nlerning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"Unknown config key 'optimizer.lerning_rate'.*"
                                          r"learning_rate.*Received: optimizer.lerning_rate=0.1"):
        config.load_recipe(p)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown config key 'modle'"):
        config.load_recipe(write(tmp_path, MINIMAL + "[modle]\narch='x'\n"))


def test_wrong_type_names_path(tmp_path):
    p = write(tmp_path, MINIMAL.replace('[data]', '[data]\nbatch_size = "big"'))
    with pytest.raises(ConfigError, match=r"'data.batch_size' must be an integer\. "
                                          r"Received: data.batch_size='big'"):
        config.load_recipe(p)


def test_bool_is_not_an_int(tmp_path):
    p = write(tmp_path, MINIMAL.replace('[data]', '[data]\nbatch_size = true'))
    with pytest.raises(ConfigError, match="data.batch_size"):
        config.load_recipe(p)


def test_list_item_type(tmp_path):
    p = write(tmp_path, MINIMAL + "[regularization]\ntargets = ['kernel', 3]\n")
    with pytest.raises(ConfigError, match=r"'regularization.targets\[1\]' must be a string"):
        config.load_recipe(p)


def test_choices_and_checks(tmp_path):
    with pytest.raises(ConfigError, match=r"'model.norm' must be one of .*Received: model.norm='bn'"):
        config.load_recipe(write(tmp_path, MINIMAL.replace('arch = "cnn1d"',
                                                           'arch = "cnn1d"\nnorm = "bn"')))
    with pytest.raises(ConfigError, match=r"'optimizer.learning_rate' must be > 0"):
        config.load_recipe(write(tmp_path, MINIMAL + "[optimizer]\nlearning_rate = -1.0\n"))
    with pytest.raises(ConfigError, match=r"'train.strategy' must be one of auto"):
        config.load_recipe(write(tmp_path, MINIMAL + "[train]\nstrategy = 'cpu:0'\n"))
    cfg = config.load_recipe(write(tmp_path, MINIMAL + "[train]\nstrategy = 'cpu:2'\n"))
    assert cfg["train"]["strategy"] == "cpu:2"


def test_missing_required(tmp_path):
    with pytest.raises(ConfigError, match=r"Missing required config key 'model.arch'"):
        config.load_recipe(write(tmp_path, 'name="x"\n[model]\n[data]\ndataset="digits"\n'))


def test_section_must_be_table(tmp_path):
    with pytest.raises(ConfigError, match=r"section 'model' must be a table"):
        config.load_recipe(write(tmp_path, 'name="x"\nmodel = 3\n[data]\ndataset="digits"\n'))


def test_overrides_parse_toml_literals(tmp_path):
    p = write(tmp_path, MINIMAL)
    # (targets need a penalty: with kind "none" they would be ignored, which is an error)
    cfg = config.load_recipe(p, ["optimizer.learning_rate=0.05", "model.norm=l1_batch",
                                 "train.jit_compile=true", "regularization.targets=['kernel','bias']",
                                 "regularization.kind='l2'", "regularization.l2=1e-4"])
    assert cfg["optimizer"]["learning_rate"] == 0.05
    assert cfg["model"]["norm"] == "l1_batch"
    assert cfg["train"]["jit_compile"] is True
    assert cfg["regularization"]["targets"] == ["kernel", "bias"]


def test_jit_compile_auto_by_default(tmp_path):
    p = write(tmp_path, MINIMAL)
    assert config.load_recipe(p)["train"]["jit_compile"] == "auto"
    assert config.load_recipe(p, ["train.jit_compile=auto"])["train"]["jit_compile"] == "auto"
    assert config.load_recipe(p, ["train.jit_compile=false"])["train"]["jit_compile"] is False
    with pytest.raises(ConfigError, match=r"'train.jit_compile' must be true, false or \"auto\". "
                                          r"Received: train.jit_compile='yes'"):
        config.load_recipe(p, ["train.jit_compile=yes"])
    with pytest.raises(ConfigError, match=r"'train.jit_compile' must be a boolean or a string. "
                                          r"Received: train.jit_compile=1"):
        config.load_recipe(p, ["train.jit_compile=1"])


def test_override_errors(tmp_path):
    p = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match=r"section.key=value.*Received: 'nonsense'"):
        config.load_recipe(p, ["nonsense"])
    with pytest.raises(ConfigError, match=r"Unknown config key 'train.epoch'"):
        config.load_recipe(p, ["train.epoch=3"])


def test_dump_roundtrip(tmp_path):
    cfg = config.load_recipe(write(tmp_path, MINIMAL), ["data.data_dir=/tmp/x"])
    out = tmp_path / "resolved.toml"
    config.dump(cfg, out)
    again = config.load_recipe(out)
    assert again == cfg
    # unset keys (None) are left out of the file and come back as None
    cfg2 = config.load_recipe(write(tmp_path, MINIMAL))
    assert "data_dir" not in config.dumps(cfg2)
    assert config.resolve(config.read_toml(tmp_path / "resolved.toml")) == cfg


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(FileNotFoundError, match="Received: path="):
        config.load_recipe(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        config.load_recipe(write(tmp_path, "name = \n"))


def test_drop_none_nested_and_in_lists():
    d = {"a": None, "b": 1, "c": {"d": None, "e": [{"f": None, "g": 2}, 3, None]}, "h": {}}
    assert config.drop_none(d) == {"b": 1, "c": {"e": [{"g": 2}, 3, None]}, "h": {}}
    assert d["a"] is None and d["c"]["d"] is None  # the input is not modified
    assert config.drop_none(5) == 5 and config.drop_none([None, {"x": None}]) == [None, {}]


def test_field_choices_may_be_a_live_table():
    table = ["a", "b"]
    schema = {"k": config.Field(str, "a", choices=lambda: tuple(table))}
    assert config.resolve({"k": "b"}, schema) == {"k": "b"}
    with pytest.raises(ConfigError, match=r"'k' must be one of \['a', 'b'\]\. Received: k='c'"):
        config.resolve({"k": "c"}, schema)
    table.append("c")  # read at each validation
    assert config.resolve({"k": "c"}, schema) == {"k": "c"}
    assert config.choice_fields(schema) == {"k": ("a", "b", "c")}


def test_choice_fields_of_the_recipe_schema():
    fields = config.choice_fields()
    assert fields["regularization.kind"] == ("none", "l1", "l2", "elastic_net")
    assert fields["train.verbose"] == (0, 1, 2)
    assert "optimizer.learning_rate" not in fields and "train.strategy" not in fields


# -- input checked as a whole: names that become paths, keys checked together, float32 range ---
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = {"name": "x", "model": {"arch": "cnn1d"}, "data": {"dataset": "mnist1d"}}
F32_MAX = 3.4028234663852886e38  # (2 - 2**-23) * 2**127, the largest finite float32
F32_TINY = 2.0 ** -149  # the smallest positive (subnormal) float32, ~1.4e-45


def _resolve(**sections):
    raw = config.merge(BASE, sections)
    return config.resolve(raw)


def _refused(message_part, received, **sections):
    with pytest.raises(ConfigError) as e:
        _resolve(**sections)
    message = str(e.value)
    assert message_part in message, message
    assert message.endswith(f"Received: {received}"), message
    assert "\n" not in message
    return message


BAD_NAMES = ["../../x", "..", ".", "", ".hidden", "a/b", "a\\b", "/abs", "a\x00b", "a\nb", "a b",
             "-x", "_x", "é", "x" * 101]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_name_must_be_one_safe_folder_name(bad):
    with pytest.raises(ConfigError) as e:
        _resolve(name=bad)
    message = str(e.value)
    assert message.startswith("Config key 'name' must be one folder name"), message
    assert message.endswith(f"Received: name={bad!r}") and "\n" not in message


@pytest.mark.parametrize("good", ["a", "9lives", "ok_name-1.2", "a..b", "x" * 100])
def test_name_valid_edges(good):
    assert _resolve(name=good)["name"] == good


def test_every_shipped_name_follows_the_rule():
    names = []
    for folder in ("zoo", "tuning", os.path.join("keras_normreg", "tuning", "specs")):
        for f in sorted(os.listdir(os.path.join(ROOT, folder))):
            if f.endswith(".toml"):
                names.append(config.read_toml(os.path.join(ROOT, folder, f))["name"])
    saved = os.path.join(ROOT, "saved_models")
    for entry in sorted(os.listdir(saved)):
        if os.path.isdir(os.path.join(saved, entry)):
            names.append(entry)
            with open(os.path.join(saved, entry, "card.json"), encoding="utf-8") as f:
                names.append(json.load(f)["name"])
    assert len(names) >= 9 + 2 + 1 + 2 * 9
    assert [n for n in names if config.name_problem(n)] == []


@pytest.mark.parametrize("sections, part, received", [
    ({"schedule": {"kind": "step", "boundaries": [20.0, 10.0]}},
     "'schedule.boundaries' must be strictly increasing", "schedule.boundaries=[20.0, 10.0]"),
    ({"schedule": {"kind": "step", "boundaries": [5.0, 5.0]}},
     "'schedule.boundaries' must be strictly increasing", "schedule.boundaries=[5.0, 5.0]"),
    ({"schedule": {"kind": "step", "boundaries": [-1.0, 3.0]}},
     "'schedule.boundaries' must hold epochs > 0", "schedule.boundaries=[-1.0, 3.0]"),
    ({"schedule": {"kind": "step", "boundaries": [0.0]}},
     "'schedule.boundaries' must hold epochs > 0", "schedule.boundaries=[0.0]"),
    ({"schedule": {"kind": "step", "boundaries": [10.0, 30.0]}},
     "'schedule.boundaries' must be < 'train.epochs'",
     "schedule.boundaries=[10.0, 30.0], train.epochs=30"),
    ({"schedule": {"kind": "step"}}, "'schedule.boundaries' must list at least one epoch",
     "schedule.boundaries=[], schedule.kind='step'"),
    ({"schedule": {"boundaries": [10.0]}}, "'schedule.boundaries' is used only by "
     "schedule.kind='step'", "schedule.boundaries=[10.0], schedule.kind='cosine'"),
    ({"schedule": {"kind": "constant", "factor": 0.5}}, "'schedule.factor' is used only by "
     "schedule.kind='step'", "schedule.factor=0.5, schedule.kind='constant'"),
    ({"schedule": {"kind": "step", "boundaries": [10.0], "warmup_epochs": 2.0}},
     "'schedule.warmup_epochs' is not applied by schedule.kind='step'",
     "schedule.warmup_epochs=2.0, schedule.kind='step'"),
    ({"schedule": {"final_fraction": 1.5}}, "'schedule.final_fraction' must be in [0, 1]",
     "schedule.final_fraction=1.5"),
    ({"schedule": {"kind": "constant", "final_fraction": 0.5}},
     "'schedule.final_fraction' is used only by schedule.kind='cosine'",
     "schedule.final_fraction=0.5, schedule.kind='constant'"),
    ({"schedule": {"warmup_epochs": 31.0}},
     "'schedule.warmup_epochs' must not exceed 'train.epochs'",
     "schedule.warmup_epochs=31.0, train.epochs=30"),
    ({"schedule": {"kind": "constant", "warmup_epochs": 2.5}, "train": {"epochs": 2}},
     "'schedule.warmup_epochs' must not exceed 'train.epochs'",
     "schedule.warmup_epochs=2.5, train.epochs=2"),
])
def test_schedule_keys_checked_together(sections, part, received):
    _refused(part, received, **sections)


def test_schedule_valid_edges():
    # warmup as long as the training; the last boundary just before the end; a cosine that
    # ends at the peak (final fraction 1: constant); the factor given with kind "step"
    assert _resolve(schedule={"warmup_epochs": 30.0})["schedule"]["warmup_epochs"] == 30.0
    cfg = _resolve(schedule={"kind": "step", "boundaries": [0.5, 29.5], "factor": 0.5})
    assert cfg["schedule"]["boundaries"] == [0.5, 29.5]
    assert _resolve(schedule={"final_fraction": 1.0})["schedule"]["final_fraction"] == 1.0
    assert _resolve(schedule={"kind": "constant", "warmup_epochs": 1.0})


@pytest.mark.parametrize("section, key, value", [
    ("optimizer", "learning_rate", 3.5e38),
    ("optimizer", "learning_rate", 1e300),
    ("optimizer", "weight_decay", 1e39),
    ("optimizer", "clipnorm", 1e39),
    ("regularization", "l2", 1e40),
    ("model", "constraint_value", 1e39),
    ("schedule", "warmup_epochs", 1e39),
])
def test_numbers_must_fit_float32(section, key, value):
    with pytest.raises(ConfigError) as e:
        _resolve(**{section: {key: value}})
    message = str(e.value)
    assert message == (f"Config key '{section}.{key}' must be representable in float32, the "
                       f"training dtype (|x| <= 3.4028235e+38). Received: {section}.{key}="
                       f"{value!r}")


def test_numbers_that_round_to_zero_in_float32_are_refused():
    # half the smallest subnormal and below round to 0 (round-to-nearest-even)
    _refused("'optimizer.weight_decay' must be representable in float32",
             "optimizer.weight_decay=1e-46", optimizer={"weight_decay": 1e-46})
    _refused("'regularization.l2' must be representable in float32", "regularization.l2=1e-50",
             regularization={"kind": "l2", "l2": 1e-50})


def test_float32_valid_edges():
    assert _resolve(optimizer={"learning_rate": F32_MAX})["optimizer"]["learning_rate"] == F32_MAX
    assert _resolve(optimizer={"weight_decay": F32_TINY})["optimizer"]["weight_decay"] == F32_TINY
    assert _resolve(optimizer={"weight_decay": 0.0})["optimizer"]["weight_decay"] == 0.0


def test_step_schedule_must_stay_in_float32():
    # 0.1 * (1e19)^3 = 1e56 overflows float32; 0.1 * (1e19)^2 = 1e37 fits
    message = _refused("give a learning rate of lr * factor^3 = ",
                       "optimizer.learning_rate=0.1, schedule.factor=1e+19, "
                       "schedule.boundaries=[1.0, 2.0, 3.0]",
                       schedule={"kind": "step", "boundaries": [1.0, 2.0, 3.0], "factor": 1e19})
    assert "'schedule.factor'" in message and "float32" in message
    assert _resolve(schedule={"kind": "step", "boundaries": [1.0, 2.0], "factor": 1e19})
    # 0.1 * (1e-20)^3 = 1e-61 rounds to 0 in float32; 0.1 * (1e-20)^2 = 1e-41 is a subnormal
    _refused("lr * factor^3", "optimizer.learning_rate=0.1, schedule.factor=1e-20, "
             "schedule.boundaries=[1.0, 2.0, 3.0]",
             schedule={"kind": "step", "boundaries": [1.0, 2.0, 3.0], "factor": 1e-20})
    assert _resolve(schedule={"kind": "step", "boundaries": [1.0, 2.0], "factor": 1e-20})


@pytest.mark.parametrize("sections, part, received", [
    ({"regularization": {"l2": 1e-4}}, "'regularization.l2' is ignored with "
     "regularization.kind='none'", "regularization.l2=0.0001, regularization.kind='none'"),
    ({"regularization": {"l1": 1e-4}}, "'regularization.l1' is ignored with "
     "regularization.kind='none'", "regularization.l1=0.0001, regularization.kind='none'"),
    ({"regularization": {"targets": ["kernel", "bias"]}}, "'regularization.targets' is ignored",
     "regularization.targets=['kernel', 'bias'], regularization.kind='none'"),
    ({"regularization": {"skip_scale_invariant": False}},
     "'regularization.skip_scale_invariant' is ignored",
     "regularization.skip_scale_invariant=False, regularization.kind='none'"),
    ({"regularization": {"kind": "l1", "l1": 1e-4, "l2": 1e-3}},
     "'regularization.l2' is ignored with regularization.kind='l1'",
     "regularization.l2=0.001, regularization.kind='l1'"),
    ({"regularization": {"kind": "l2", "l2": 1e-4, "l1": 1e-3}},
     "'regularization.l1' is ignored with regularization.kind='l2'",
     "regularization.l1=0.001, regularization.kind='l2'"),
    ({"regularization": {"kind": "l2"}}, "'regularization.l2' must be > 0 with "
     "regularization.kind='l2'", "regularization.l2=0.0, regularization.kind='l2'"),
    ({"regularization": {"kind": "elastic_net", "l2": 1e-4}},
     "'regularization.l1' must be > 0 with regularization.kind='elastic_net'",
     "regularization.l1=0.0, regularization.kind='elastic_net'"),
    ({"regularization": {"kind": "l2", "l2": 1e-4, "targets": []}},
     "'regularization.targets' must name at least one",
     "regularization.targets=[], regularization.kind='l2'"),
    ({"optimizer": {"decay_semantics": "schedule"}},
     "'optimizer.decay_semantics' is ignored with optimizer.weight_decay=0",
     "optimizer.decay_semantics='schedule', optimizer.weight_decay=0.0"),
    ({"model": {"constraint_value": 2.0}}, "'model.constraint_value' is ignored with "
     "model.constraint='none'", "model.constraint_value=2.0, model.constraint='none'"),
    ({"model": {"constraint": "unit_norm", "constraint_value": 2.0}},
     "'model.constraint_value' is ignored with model.constraint='unit_norm'",
     "model.constraint_value=2.0, model.constraint='unit_norm'"),
    ({"train": {"seed": -1}}, "'train.seed' must be in [0, 2**32 - 1]", "train.seed=-1"),
    ({"train": {"seed": 2**32}}, "'train.seed' must be in [0, 2**32 - 1]",
     "train.seed=4294967296"),
])
def test_ignored_or_inconsistent_settings_are_refused(sections, part, received):
    _refused(part, received, **sections)


def test_settings_used_together_pass():
    cfg = _resolve(regularization={"kind": "elastic_net", "l1": 1e-5, "l2": 1e-4,
                                   "targets": ["kernel", "bias"], "skip_scale_invariant": False},
                   optimizer={"weight_decay": 5e-4, "decay_semantics": "schedule"},
                   model={"constraint": "max_norm", "constraint_value": 2.0},
                   train={"seed": 2**32 - 1})
    assert cfg["regularization"]["kind"] == "elastic_net" and cfg["train"]["seed"] == 2**32 - 1
    assert _resolve(regularization={"kind": "l1", "l1": 1e-4})["regularization"]["l2"] == 0.0
    assert _resolve(train={"seed": 0})["train"]["seed"] == 0


def test_a_study_base_is_checked_as_a_whole_too():
    from keras_normreg.tuning import spec as nr_spec

    with pytest.raises(ConfigError, match=r"'base.schedule.warmup_epochs' must not exceed "
                                          r"'base.train.epochs'.*Received: base.schedule."
                                          r"warmup_epochs=3.0, base.train.epochs=2$"):
        nr_spec.resolve_study({"name": "s", "base": {
            "model": {"arch": "cnn_digits"}, "data": {"dataset": "digits"},
            "schedule": {"warmup_epochs": 3.0}, "train": {"epochs": 2}}})


@pytest.mark.parametrize("key", ["data.data_dir", "train.output_dir"])
def test_folder_keys_checked_when_given(tmp_path, key):
    section, name = key.split(".")
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [("", 'must not be empty (use "." for the current folder)'),
             (str(tmp_path / "a\x00b"), "must not contain NUL or control characters"),
             (str(tmp_path / "a\nb"), "must not contain NUL or control characters")]
    if key == "data.data_dir":  # a folder that is read: a file in the way is refused now
        cases += [(str(afile), "must be a folder, but it is a file"),
                  (str(afile / "sub" / "deeper"),
                   f"must be a folder, but {str(afile)!r} is a file")]
    for value, problem in cases:
        with pytest.raises(ConfigError) as e:
            _resolve(**{section: {name: value}})
        assert str(e.value) == f"Config key '{key}' {problem}. Received: {key}={value!r}"
    # valid: an existing folder, one to be made (its parents too), the current folder
    for value in (str(tmp_path), str(tmp_path / "new" / "sub"), "."):
        assert _resolve(**{section: {name: value}})[section][name] == value
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_output_dir_under_a_file_is_left_to_the_destination_check(tmp_path):
    """A folder that is written gets its file-in-the-way and writability check, with its own
    message, from saving.check_destination before training starts (not from the schema)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    cfg = _resolve(train={"output_dir": str(afile / "out")})
    assert cfg["train"]["output_dir"] == str(afile / "out")


def test_unset_norm_is_the_zoo_entrys_default(tmp_path):
    """model.norm left out: the zoo entry's default ('batch' for the CNNs; None for the
    transformers, whose builder picks 'layer', or 'none' with nGPT); given: kept."""
    from keras_normreg import zoo

    def norm_of(arch, extra=""):
        path = tmp_path / f"{arch}.toml"
        path.write_text(f'name = "x"\n[model]\narch = "{arch}"\n{extra}[data]\n'
                        'dataset = "digits"\n')
        return config.load_recipe(path)["model"]["norm"]

    assert norm_of("cnn1d") == "batch" == zoo.get_spec("cnn1d").default_norm
    assert norm_of("vit_digits") is None and zoo.get_spec("vit_digits").default_norm is None
    assert norm_of("vit_digits", 'norm = "rms"\n') == "rms"
    assert norm_of("cnn1d", 'norm = "none"\n') == "none"
