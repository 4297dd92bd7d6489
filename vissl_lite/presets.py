"""Preset discovery: ``configs/<method>/<dataset>_<backbone>.yaml`` files, found, not listed.

A preset is named by its path relative to a preset root without the suffix, e.g.
``simclr/cifar10_resnet18``; ``vissl-lite pretrain simclr/cifar10_resnet18`` and
``vissl-lite pretrain configs/simclr/cifar10_resnet18.yaml`` are the same run. The roots are,
in order: the folders in ``$VISSL_LITE_CONFIGS`` (``os.pathsep``-separated, for one's own
presets; ``--configs DIR`` and a config's ``configs:`` key add to it), the ``configs/`` folder of a source checkout, and the presets installed inside the
package (``vissl_lite/configs``). ``configs/base/`` holds shared defaults, not runnable presets.
Each preset opens with a recipe card naming its source (``vissl_lite/recipe_cards.py``).
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Dict, List, Optional

from vissl_lite.errors import ConfigError

CONFIGS_ENV = "VISSL_LITE_CONFIGS"
_PACKAGE = Path(__file__).resolve().parent


def preset_roots() -> List[Path]:
    extra = [Path(p).expanduser() for p in os.environ.get(CONFIGS_ENV, "").split(os.pathsep) if p]
    candidates = [*extra, _PACKAGE.parent / "configs", _PACKAGE / "configs"]
    roots: List[Path] = []
    for root in candidates:
        if root.is_dir() and root.resolve() not in [r.resolve() for r in roots]:
            roots.append(root)
    return roots


def add_preset_roots(paths: List[str]) -> None:
    """Put preset folders (``--configs DIR``, a config's ``configs:``) before those of
    ``$VISSL_LITE_CONFIGS``, in this process and the ones it starts."""
    old = [p for p in os.environ.get(CONFIGS_ENV, "").split(os.pathsep) if p]
    new = [*dict.fromkeys([*(str(Path(p).expanduser().resolve()) for p in paths), *old])]
    if new != old:
        os.environ[CONFIGS_ENV] = os.pathsep.join(new)


def list_presets(method: Optional[str] = None) -> Dict[str, Path]:
    """``{"simclr/cifar10_resnet18": path, ...}``; the first root that has a name wins."""
    found: Dict[str, Path] = {}
    for root in preset_roots():
        for path in sorted(root.glob("*/*.yaml")):
            if path.parent.name == "base" or (method and path.parent.name != method):
                continue
            found.setdefault(f"{path.parent.name}/{path.stem}", path)
    return dict(sorted(found.items()))


def resolve_preset(name_or_path: str | os.PathLike) -> Path:
    """A config path as given, or the file of a preset name (``simclr/cifar10_resnet18``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path).removeprefix("configs/").removesuffix(".yaml")
    presets = list_presets()
    if name in presets:
        return presets[name]
    close = difflib.get_close_matches(name, list(presets), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"config file not found: {name_or_path}.{hint} Give a path to a YAML file or "
                      f"a preset name from `vissl-lite list presets`.")
