"""Config loading: inheritance, overrides, validation errors that name the key and the source."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vissl_lite.config import ConfigError, default_config, load_config, save_config
from vissl_lite.methods.base import Method
from vissl_lite.registry import METHODS


@dataclass
class ToyCfgConfig:
    name: str = "toy_cfg"
    temperature: float = 0.5
    proj_dim: int = 128


if "toy_cfg" not in METHODS:
    @METHODS.register("toy_cfg")
    class ToyCfgMethod(Method):
        """A method used only to test config validation."""
        Config = ToyCfgConfig


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def presets(tmp_path):
    write(tmp_path / "base" / "data.yaml", "data:\n  root: /data/base\n  image_size: 32\n"
                                            "train:\n  batch_size: 256\n  epochs: 10\n")
    write(tmp_path / "base" / "optim.yaml", "optim:\n  name: lars\n  lr: 0.3\n")
    child = write(tmp_path / "toy" / "run.yaml",
                  "defaults: [../base/data.yaml, ../base/optim]\n"
                  "method:\n  name: toy_cfg\n  temperature: 0.2\n"
                  "train:\n  epochs: 20\n")
    return tmp_path, child


def test_defaults_are_merged_in_order_then_the_file_then_overrides(presets):
    _, child = presets
    cfg = load_config(child, ["optim.lr=0.6", "method.proj_dim=64"])
    assert cfg.data.root == "/data/base" and cfg.data.image_size == 32
    assert cfg.train.batch_size == 256 and cfg.train.epochs == 20          # child wins over base
    assert cfg.optim.name == "lars" and cfg.optim.lr == 0.6                # override wins
    assert cfg.method.temperature == 0.2 and cfg.method.proj_dim == 64
    assert cfg.train.precision == "fp32"                                   # schema default
    assert cfg.output_dir == "runs/toy_cfg_resnet18"                      # interpolation resolved
    assert OmegaConf.is_readonly(cfg)


def test_unknown_key_names_key_file_and_suggestion(presets):
    root, _ = presets
    bad = write(root / "toy" / "bad.yaml", "defaults: [../base/data.yaml]\nmethod:\n  name: toy_cfg\n"
                                          "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    msg = str(e.value)
    assert "optim.lrr" in msg and "bad.yaml" in msg and "optim.lr" in msg
    assert "\n" not in msg


def test_unknown_method_key_is_checked_against_the_method_schema(presets):
    _, child = presets
    with pytest.raises(ConfigError, match=r"command-line override 'method.temprature=0.1'.*"
                                          r"method.temprature.*did you mean 'method.temperature'"):
        load_config(child, ["method.temprature=0.1"])


def test_wrong_type_names_key_and_source(presets):
    root, child = presets
    with pytest.raises(ConfigError, match=r"override 'train.epochs=ten'.*wrong type for 'train.epochs'"):
        load_config(child, ["train.epochs=ten"])
    bad = write(root / "toy" / "badtype.yaml", "method:\n  name: toy_cfg\ndata:\n  root: /x\ntrain:\n  batch_size: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"badtype.yaml.*train.batch_size"):
        load_config(bad)


def test_missing_required_value_says_how_to_set_it(tmp_path):
    cfg_file = write(tmp_path / "nodata.yaml", "method:\n  name: toy_cfg\n")
    with pytest.raises(ConfigError, match=r"missing required value 'data.root'.*data.root="):
        load_config(cfg_file)


def test_unknown_method_lists_known_ones(tmp_path):
    cfg_file = write(tmp_path / "m.yaml", "method:\n  name: simclrr\ndata:\n  root: /x\n")
    with pytest.raises(ConfigError, match=r"unknown method 'simclrr'.*Known methods:.*toy_cfg"):
        load_config(cfg_file)


def test_bad_override_syntax_and_missing_file(presets, tmp_path):
    _, child = presets
    with pytest.raises(ConfigError, match="key=value"):
        load_config(child, ["optim.lr"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_circular_defaults_are_reported(tmp_path):
    write(tmp_path / "a.yaml", "defaults: [b.yaml]\n")
    write(tmp_path / "b.yaml", "defaults: [a.yaml]\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_saved_config_round_trips(presets, tmp_path):
    _, child = presets
    cfg = load_config(child)
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)


def test_default_config_needs_no_file():
    cfg = default_config("toy_cfg", ["train.batch_size=8"])
    assert cfg.method.name == "toy_cfg" and cfg.train.batch_size == 8


def test_value_outside_its_choices_lists_them(presets):
    _, child = presets
    with pytest.raises(ConfigError, match=r"train.precision='fp8'.*fp32, bf16, fp16"):
        load_config(child, ["train.precision=fp8"])
