"""Plugins read from their source (plugin_scan.py) read the same as when imported.

`vissl-lite list` and `config` take names, help, a method's Config and supported_backbones from
the source without importing torch; here every built-in plugin is compared with its import.
"""
import dataclasses
import typing

import pytest
from omegaconf import OmegaConf

from vissl_lite.plugin_scan import declarations, light_class
from vissl_lite.registry import ALL_REGISTRIES, METHODS, Registry


def _static(registry):
    return registry.declared() if registry.package else {}


@pytest.mark.parametrize("kind", sorted(ALL_REGISTRIES))
def test_names_and_help_read_from_source_match_the_import(kind):
    registry = ALL_REGISTRIES[kind]
    if registry.package is None:
        pytest.skip("a registry of a test, without a plugin package")
    static = {name: registry.describe(name) for name in registry.names()}
    registry.discover()
    imported = {name: registry._help[name] for name in registry._entries if name in static}
    assert sorted(imported) == sorted(static)
    assert imported == static


@pytest.mark.parametrize("name", sorted(METHODS.declared()))   # plugin files, not the toy
def test_a_methods_config_read_from_source_matches_the_import(name):  # methods tests register
    d = METHODS.declared()[name]
    stand_in = light_class(d.path, d.module, d.obj_name)
    assert stand_in is not None, f"{d.path} cannot be read without importing it"
    real = METHODS.get(name)
    assert stand_in.supported_backbones == real.supported_backbones
    fields = lambda cls: [(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
                          for f in dataclasses.fields(cls)]
    assert fields(stand_in.Config) == fields(real.Config)
    assert typing.get_type_hints(stand_in.Config) == typing.get_type_hints(real.Config)
    assert OmegaConf.to_yaml(OmegaConf.structured(stand_in.Config)) == \
        OmegaConf.to_yaml(OmegaConf.structured(real.Config))


def test_what_cannot_be_read_without_running_reads_as_none(tmp_path):
    """A computed name gives None (the registry imports the file); literals and constants read."""
    computed = tmp_path / "computed.py"
    computed.write_text("NAME = 'a' + 'b'\n@METHODS.register(NAME.upper())\nclass A: pass\n")
    assert declarations(computed, "computed", "METHODS") is None
    looped = tmp_path / "looped.py"
    looped.write_text("for n in 'ab':\n    METHODS.register(n)(object)\n")
    assert declarations(looped, "looped", "METHODS") is None
    plain = tmp_path / "plain.py"
    plain.write_text('PARTS = ("x", "y")\n@METHODS.register("Toy", help=f"uses {\', \'.join(PARTS)}")\n'
                     'class Toy:\n    """Doc line."""\n@METHODS.register()\nclass Other:\n    """Other doc."""\n')
    found = declarations(plain, "plain", "METHODS")
    assert [(d.name, d.help, d.obj_name) for d in found] == [("toy", "uses x, y", "Toy"),
                                                             ("other", "Other doc.", "Other")]


def test_a_file_the_scan_cannot_read_is_imported(tmp_path, monkeypatch):
    plugin = tmp_path / "computed_widget.py"
    plugin.write_text("from vissl_lite.registry import ALL_REGISTRIES\n"
                      "SCANWIDGETS = ALL_REGISTRIES['scanwidget']\n"
                      "SCANWIDGETS.register('w' + 'x', help='built at run time')(len)\n")
    registry = Registry("scanwidget", "vissl_lite.methods", symbol="SCANWIDGETS")
    monkeypatch.setenv("VISSL_LITE_PLUGINS", str(plugin))
    try:
        assert "wx" in registry.names() and registry.describe("wx") == "built at run time"
    finally:
        ALL_REGISTRIES.pop("scanwidget")
