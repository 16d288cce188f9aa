"""Config validation, YAML loading and key=value overrides."""

import pytest

from transferkit.config import FinetuneConfig, apply_overrides, dump_config, load_config
from transferkit.errors import ConfigError


def test_defaults_and_overrides_are_typed():
    cfg = load_config(None, ["train.lr=0.01", "data.shots=10", "seeds=[0,1]", "model.source=a/b"])
    assert isinstance(cfg, FinetuneConfig)
    assert cfg.train.lr == 0.01 and cfg.data.shots == 10 and cfg.seeds == [0, 1]
    assert cfg.model.source == "a/b"
    assert cfg.transfer.exclude == ["head.*"]


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data:\n  dataset: digits\ntrain:\n  epochs: 3\n  lr: 0.5\n")
    cfg = load_config(path, ["train.epochs=7"])
    assert cfg.data.dataset == "digits" and cfg.train.epochs == 7 and cfg.train.lr == 0.5


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["train.strategy=linear_probe", "name=x"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_unknown_keys_are_all_named_at_once(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("trian:\n  epochs: 3\ndata:\n  datset: digits\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.lrr=1"])
    msg = str(info.value)
    assert "unknown key 'trian'" in msg and "unknown key 'data.datset'" in msg
    assert "train.lrr" in msg


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match=r"data\.val_fraction.*got 1\.5"):
        load_config(None, ["data.val_fraction=1.5"])
    with pytest.raises(ConfigError, match="seeds"):
        load_config(None, ["seeds=[]"])
    with pytest.raises(ConfigError, match="train.strategy"):
        load_config(None, ["train.strategy=magic"])


def test_malformed_overrides_and_files(tmp_path):
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="empty key"):
        load_config(None, ["train..lr=1"])
    with pytest.raises(ConfigError, match="holds a value"):
        apply_overrides({"train": 3}, ["train.lr=1"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    bad.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


# ---------------------------------------------------------------------------- method options
def test_method_options_are_checked_when_the_config_is():
    from transferkit.config import AdaptConfig, DistillConfig, build_config

    teacher = {"model": "models/teacher"}
    with pytest.raises(ConfigError) as info:
        build_config({"teacher": teacher, "methods": [{"name": "cross_entropy"},
                                                      {"name": "kd", "temperature": -1, "temprature": 4}]},
                     DistillConfig)
    msg = str(info.value)
    assert msg.startswith("invalid config: methods.1: objective 'kd': temperature=-1: must be > 0")
    assert "does not take 'temprature' (did you mean 'temperature'?)" in msg
    with pytest.raises(ConfigError, match=r"regularizers\.0: objective 'l2sp': alpha=-2: must be >= 0"):
        load_config(None, ["regularizers=[{name: l2sp, alpha: -2}]"])
    with pytest.raises(ConfigError, match=r"regularizers\.0: unknown objective 'l2pp'.*Did you mean 'l2sp'"):
        load_config(None, ["regularizers=[{name: l2pp}]"])
    with pytest.raises(ConfigError, match=r"regularizers\.0: objective .* has no 'name'"):
        load_config(None, ["regularizers=[{alpha: 1}]"])
    with pytest.raises(ConfigError, match=r"methods\.0: method 'kd' does not adapt to target data"):
        build_config({"methods": [{"name": "kd"}]}, AdaptConfig)
    with pytest.raises(ConfigError, match=r"methods\.1: objective 'mcd': trade_off=-1: must be >= 0"):
        build_config({"methods": [{"name": "cdan+e"}, {"name": "mcd", "trade_off": -1}]}, AdaptConfig)
    with pytest.raises(ConfigError, match="methods must list at least one objective"):
        build_config({"teacher": teacher, "methods": []}, DistillConfig)


def test_valid_method_entries_are_kept_as_written():
    from transferkit.config import AdaptConfig, DistillConfig, build_config

    methods = [{"name": "KD", "temperature": 2}, {"name": "hint", "student_layer": "backbone.conv2"}]
    cfg = build_config({"teacher": {"model": "t"}, "methods": methods}, DistillConfig)
    assert cfg.methods == methods  # the recorded config (run.json) is what the user wrote
    assert build_config({"methods": [{"name": "cdan+e"}]}, AdaptConfig).methods == [{"name": "cdan+e"}]
    assert load_config(None, ["regularizers=[{name: l2sp}, {name: bss, k: 2}]"]).regularizers[1] == {
        "name": "bss", "k": 2}


def test_cli_validate_reports_a_bad_method_option(tmp_path):
    from cli_helpers import assert_one_line_error, run

    cfg = tmp_path / "distill.yaml"
    cfg.write_text("teacher:\n  model: models/teacher\nmethods:\n  - {name: cross_entropy}\n"
                   "  - {name: kd, temperature: -1}\n")
    assert_one_line_error(run("validate", cfg), "methods.1", "objective 'kd'", "temperature=-1: must be > 0")
    cfg.write_text("teacher:\n  model: models/teacher\nmethods:\n  - {name: kd, temperature: 2}\n")
    result = run("validate", cfg)
    assert result.exit_code == 0, result.output
    assert "temperature: 2" in result.stdout and "config is valid (DistillConfig)" in result.output
