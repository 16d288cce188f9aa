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
