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
                            "constraint_value": 1.0, "dropout": 0.0, "overrides": {}}
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
    cfg = config.load_recipe(p, ["optimizer.learning_rate=0.05", "model.norm=l1_batch",
                                 "train.jit_compile=true", "regularization.targets=['kernel','bias']"])
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
