"""Every preset carries a recipe card (vissl_lite/recipe_cards.py): its source, and each value that
differs from the source with its reason. A preset without one, a deviation naming a key the config
does not have, or a listed value that is no longer the preset's fails here; docs/recipes.md is
the generated table of the cards."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from vissl_lite.cli import main
from vissl_lite.config import load_config
from vissl_lite.errors import ConfigError
from vissl_lite.presets import list_presets
from vissl_lite.recipe_cards import Deviation, read_card, recipes_markdown

REPO = Path(__file__).resolve().parents[1]
PRESETS = {name: path for name, path in list_presets().items()
           if path.resolve().is_relative_to(REPO / "configs")}
#: a repository at a commit or tag (owner/repo@1a2b3c4, owner/repo@v1.5.0), or a paper's table
CITATION = re.compile(r"[\w.-]+/[\w.-]+@([0-9a-f]{7,40}|v?\d+\.\d+[\w.]*)\b|arXiv:\d{4}\.\d{4,5}")
_UNSET = object()


def test_the_presets_are_found():
    assert len(PRESETS) >= 30 and "simclr/cifar10_resnet18" in PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_has_a_recipe_card(name):
    card = read_card(PRESETS[name])
    assert card.source, f"{name}: no '# source:' line at the top of the file"
    assert CITATION.search(card.source), (f"{name}: the source names no repository@commit and no "
                                          f"arXiv paper: {card.source}")
    assert "vissl-lite pretrain" not in card.source


def _same(listed, actual) -> bool:
    if isinstance(listed, bool) or isinstance(actual, bool):
        return listed is actual
    if isinstance(listed, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(listed, actual, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(listed, list) and isinstance(actual, list):
        return len(listed) == len(actual) and all(map(_same, listed, actual))
    return False


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_deviation_names_a_key_of_the_config_and_its_value(name):
    cfg = load_config(PRESETS[name], require=())
    for dev in read_card(PRESETS[name]).deviations:
        actual = OmegaConf.select(cfg, dev.key, default=_UNSET)
        assert actual is not _UNSET, f"{name}: deviation '{dev.key}' is not a key of the config"
        assert dev.reason and dev.source, dev
        try:
            listed = yaml.safe_load(dev.ours)
        except yaml.YAMLError:
            listed = dev.ours
        try:
            listed = float(listed) if isinstance(listed, str) else listed  # PyYAML reads 1e-6 as text
        except ValueError:
            pass
        if isinstance(listed, (int, float, bool, list)) and actual is not None:
            actual = OmegaConf.to_container(actual) if OmegaConf.is_config(actual) else actual
            assert _same(listed, actual), (f"{name}: the card lists {dev.key}: {dev.ours}, the "
                                           f"preset has {actual!r}: update the card")


def test_a_card_is_parsed_with_continuations_and_malformed_lines_are_named(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("# A recipe.\n#   vissl-lite pretrain p\n# source: a/b@1234567 main.py\n"
                    "#   and its README\n# deviation: train.batch_size: 512 vs 4096: one GPU,\n"
                    "#   8x fewer\n# not a field\n#   nor this\ntrain:\n  batch_size: 512\n")
    card = read_card(path)
    assert card.source == "a/b@1234567 main.py and its README"
    assert card.deviations == (Deviation("train.batch_size", "512", "4096", "one GPU, 8x fewer"),)
    path.write_text("# source: a/b@1234567\n# deviation: train.batch_size 512, not 4096\n")
    with pytest.raises(ConfigError, match=r"p.yaml:2: a deviation reads"):
        read_card(path)


def test_list_presets_shows_each_source(capsys, monkeypatch):
    monkeypatch.delenv("VISSL_LITE_CONFIGS", raising=False)
    assert main(["list", "presets"]) == 0
    out = capsys.readouterr().out
    for path in PRESETS.values():
        assert f"source: {read_card(path).source}" in out


def test_docs_recipes_table_is_the_generated_one(monkeypatch):
    """docs/recipes.md holds `vissl-lite list presets --markdown`: a new or edited card needs one
    regenerated paste, and a stale table fails here."""
    monkeypatch.delenv("VISSL_LITE_CONFIGS", raising=False)
    assert recipes_markdown() in (REPO / "docs/recipes.md").read_text(), \
        "regenerate docs/recipes.md's table: vissl-lite list presets --markdown"
