"""Recipe cards: the comment block at the top of every preset, saying where its numbers come from.

A preset claims to be a published recipe; its card says which one and where it parts from it, in
a form that ``vissl-lite list presets`` shows and that tests check (tests/test_recipe_cards.py):

    # W-MSE 2 (Ermolov et al. 2021) ResNet-50, the reference's ImageNet-100 command.
    #   vissl-lite pretrain wmse/imagenet_resnet50 data.root=/path/to/imagenet100
    # source: htdt/self-supervised@d9662c8 README.md "ImageNet-100" (W-MSE 2 command) and cfg.py's
    #   defaults (batch 512, w_iter 1, projector 1024, Adam weight decay 1e-6, 500 warmup iterations)
    # deviation: backbone.name: resnet50 vs resnet18: the project's ImageNet encoder (cfg.py's --arch
    #   default is resnet18)

``source:`` (exactly one) names a repository file at a commit or tag (``owner/repo@commit path``)
or a paper and its table (``arXiv:NNNN.NNNNN Table 1``). Each ``deviation:`` is
``KEY: OURS vs SOURCE: REASON``, KEY a dotted key of the resolved config (``train.batch_size``)
whose value differs from the source's; OURS, when a number, bool or list, is the preset's value.
A field continues on the next lines that start with ``#`` and two or more spaces; any other line
ends it, so a usage line (``#   vissl-lite pretrain ...``) goes before the fields. The card is the
comment block before the first YAML line, and is only read: comments never change a run (a
``recipe:`` YAML key would be merged through ``defaults:`` into the presets that inherit, and
written into every run's config.yaml). Reading a card parses no YAML: ``list presets`` stays fast.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from vissl_lite.errors import ConfigError
from vissl_lite.presets import list_presets

_FIELD = re.compile(r"^#\s?(source|deviation):\s*(.*)$")
_CONTINUATION = re.compile(r"^#\s{2,}(\S.*)$")
_DEVIATION = re.compile(r"^(?P<key>[A-Za-z_][\w.]*): (?P<ours>.+?) vs (?P<source>.+?): "
                        r"(?P<reason>.+)$")


@dataclass(frozen=True)
class Deviation:
    """One value of the preset that differs from its source, and why."""

    key: str
    ours: str
    source: str
    reason: str


@dataclass(frozen=True)
class RecipeCard:
    source: Optional[str]
    deviations: Tuple[Deviation, ...]


def _header(path: Path) -> List[str]:
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                break
            lines.append(line.rstrip())
    return lines


def _fields(path: Path) -> List[Tuple[str, str, int]]:
    """``(name, text, line number)`` of each field, continuation lines joined with a space."""
    fields: List[Tuple[str, str, int]] = []
    continuing = False
    for number, line in enumerate(_header(path), 1):
        field, more = _FIELD.match(line), _CONTINUATION.match(line)
        if field:
            fields.append((field.group(1), field.group(2).strip(), number))
            continuing = True
        elif continuing and more:
            name, text, start = fields[-1]
            fields[-1] = (name, f"{text} {more.group(1).strip()}", start)
        else:
            continuing = False
    return fields


def read_card(path: Path) -> RecipeCard:
    """The card of the preset at ``path``; a malformed field is a ``ConfigError`` naming its line."""
    sources, deviations = [], []
    for name, text, number in _fields(Path(path)):
        if name == "source":
            sources.append(text)
            continue
        match = _DEVIATION.match(text)
        if not match:
            raise ConfigError(f"{path}:{number}: a deviation reads 'KEY: OURS vs SOURCE: REASON', "
                              f"got '{text}'")
        deviations.append(Deviation(**{k: v.strip() for k, v in match.groupdict().items()}))
    if len(sources) > 1:
        raise ConfigError(f"{path}: {len(sources)} 'source:' lines; a recipe card has one")
    return RecipeCard(sources[0] if sources else None, tuple(deviations))


def preset_cards() -> Dict[str, RecipeCard]:
    """``{preset name: its card}`` for every preset ``list_presets`` finds."""
    return {name: read_card(path) for name, path in list_presets().items()}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def recipes_markdown() -> str:
    """docs/recipes.md's table: each preset, its source and its listed deviations."""
    rows = ["| preset | source | deviations from the source (ours vs source: why) |",
            "|---|---|---|"]
    for name, card in preset_cards().items():
        listed = "<br>".join(f"`{d.key}`: {d.ours} vs {d.source}: {d.reason}"
                             for d in card.deviations) or "none"
        rows.append(f"| `{name}` | {_cell(card.source or 'NO CARD')} | {_cell(listed)} |")
    return "\n".join(rows)
