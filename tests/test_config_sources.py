"""Config sources (issue 22): preset names in `defaults:`, `~key` removals, and a method/backbone
mismatch reported before anything else, with fixes that work when typed."""
import re
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vissl_lite.backbones import build_backbone_from_config
from vissl_lite.config import global_view_size, load_config
from vissl_lite.errors import ConfigError
from vissl_lite.methods import build_method

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_a_users_config_inherits_a_preset_by_name(tmp_path):
    mine = _write(tmp_path / "project" / "mine.yaml", """
        defaults: [simclr/cifar10_resnet18]
        optim: {lr: 0.123}
    """)
    cfg = load_config(str(mine), require=())
    preset = load_config("simclr/cifar10_resnet18", require=())
    assert cfg.optim.lr == 0.123
    assert cfg.method == preset.method and cfg.train.epochs == preset.train.epochs


def test_a_file_beside_the_config_wins_over_a_preset_of_the_same_name(tmp_path):
    _write(tmp_path / "simclr" / "cifar10_resnet18.yaml", "defaults: [simclr/quickstart]\ntrain: {epochs: 3}\n")
    mine = _write(tmp_path / "mine.yaml", "defaults: [simclr/cifar10_resnet18]\n")
    cfg = load_config(str(mine), require=())
    assert cfg.train.epochs == 3 and cfg.method.temperature == 0.2  # quickstart's, via the local file


def test_a_defaults_entry_that_is_nowhere_says_where_it_looked(tmp_path):
    mine = _write(tmp_path / "mine.yaml", "defaults: [simclr/cifar10_resnet81]\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(mine), require=())
    msg = str(e.value)
    assert "'simclr/cifar10_resnet81' is neither a file" in msg
    assert "simclr/cifar10_resnet81.yaml" in msg  # the file it tried, beside the config
    assert "configs" in msg and "vissl-lite list presets" in msg and "\n" not in msg


def test_configs_key_adds_a_preset_folder_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("VISSL_LITE_CONFIGS", raising=False)
    _write(tmp_path / "presets" / "simclr" / "tiny.yaml", "defaults: [simclr/quickstart]\ntrain: {epochs: 2}\n")
    mine = _write(tmp_path / "exp" / "mine.yaml", "configs: [../presets]\ndefaults: [simclr/tiny]\n")
    cfg = load_config(str(mine), require=())
    assert cfg.train.epochs == 2 and list(cfg.configs) == [str((tmp_path / "presets").resolve())]


def test_tilde_removes_a_key_the_preset_sets():
    assert load_config("mae/cifar10_vit_tiny", require=()).backbone.pos_embed == "sincos"
    assert load_config("mae/cifar10_vit_tiny", ["~backbone.pos_embed"], require=()).backbone.pos_embed == "learn"
    # a later key=value still applies; a removal applies to what came before it
    cfg = load_config("mae/cifar10_vit_tiny", ["~optim.lr", "optim.lr=0.5"], require=())
    assert cfg.optim.lr == 0.5
    with pytest.raises(ConfigError, match=r"unknown key 'backbone.pos_embd' \(did you mean '~backbone.pos_embed'\?\)"):
        load_config("mae/cifar10_vit_tiny", ["~backbone.pos_embd"], require=())


def _fix(message: str) -> list:
    """The `key=value` / `~key` items an error message suggests."""
    return re.findall(r"(?:e\.g\. |line: )(~?[a-z_.]+(?:=[\w.]+)?)", message)


def test_method_backbone_mismatch_comes_first_and_its_fix_works():
    """Before: 'backbone.pos_embed does not apply ...; remove it' (and neither ~key nor key=null
    could remove it); the real error came only after that."""
    with pytest.raises(ConfigError) as e:
        load_config("mae/cifar10_vit_tiny", ["backbone.name=resnet18"], require=())
    msg = str(e.value)
    assert msg.startswith("method 'mae' needs a vit backbone, got backbone.name=resnet18 (resnet)")
    fix = _fix(msg)
    assert fix == ["backbone.name=vit_tiny_patch4"]
    cfg = load_config("mae/cifar10_vit_tiny", ["backbone.name=resnet18", *fix], require=())
    build_method(cfg)


def test_switching_the_backbone_family_drops_the_presets_options_of_the_old_one():
    cfg = load_config("dino/imagenet_vit_small", ["backbone.name=resnet18"], require=())
    preset = OmegaConf.load(REPO / "configs/dino/imagenet_vit_small.yaml").backbone
    assert "drop_path_rate" in preset or "global_pool" in preset or "pos_embed" in preset
    assert cfg.backbone.name == "resnet18"
    build_backbone_from_config(cfg.backbone, image_size=224)
    cfg = load_config("simclr/cifar10_resnet18", ["backbone.name=vit_tiny_patch4"], require=())
    assert cfg.backbone.cifar_stem is False
    build_backbone_from_config(cfg.backbone, image_size=32)


def test_an_option_set_with_the_new_backbone_is_refused_with_a_tilde_fix_that_works():
    overrides = ["backbone.name=vit_tiny_patch4", "backbone.cifar_stem=true"]
    cfg = load_config("simclr/cifar10_resnet18", overrides, require=())
    with pytest.raises(ConfigError) as e:
        build_backbone_from_config(cfg.backbone, image_size=32)
    fix = _fix(str(e.value))
    assert fix == ["~backbone.cifar_stem"]
    cfg = load_config("simclr/cifar10_resnet18", [*overrides, *fix], require=())
    build_backbone_from_config(cfg.backbone, image_size=32)


def test_local_crops_on_a_fixed_size_vit_suggest_a_fix_that_works():
    overrides = ["backbone.name=vit_tiny_patch4", "method.num_local_crops=2", "method.out_dim=64",
                 "method.hidden_dim=32", "method.bottleneck_dim=16"]
    with pytest.raises(ConfigError) as e:
        build_method(load_config("dino/cifar10_resnet18", overrides, require=()))
    assert "set backbone.dynamic_img_size=true" in str(e.value)
    build_method(load_config("dino/cifar10_resnet18", [*overrides, "backbone.dynamic_img_size=true"],
                             require=()))


def test_a_configs_plugins_key_finds_its_method_without_importing_it(tmp_path, monkeypatch):
    """`plugins:` in a config names a folder of method files, relative to the config; the
    method's Config is read from the file (no import: the module below would raise)."""
    from vissl_lite.registry import ALL_REGISTRIES

    monkeypatch.setenv("VISSL_LITE_PLUGINS", "")
    _write(tmp_path / "plugins" / "side_method.py", """
        from dataclasses import dataclass
        from vissl_lite.registry import METHODS
        raise RuntimeError("imported")


        @dataclass
        class Config:
            name: str = "side_method"
            dim: int = 8


        @METHODS.register("side_method", help="a method read from its source")
        class SideMethod:
            Config = Config
    """)
    mine = _write(tmp_path / "exp" / "mine.yaml", """
        plugins: [../plugins]
        defaults: [base/cifar10]
        method: {name: side_method, dim: 4}
    """)
    try:
        cfg = load_config(str(mine), require=())
        assert cfg.method.dim == 4 and cfg.backbone.cifar_stem is True
        with pytest.raises(ConfigError, match="unknown key 'method.dimm'"):
            load_config(str(mine), ["method.dimm=3"], require=())
    finally:
        monkeypatch.undo()
        for registry in ALL_REGISTRIES.values():
            registry._declared = None
