"""Where a config's values come from: YAML files (with their ``defaults``) and command-line items.

A config file may inherit with ``defaults: [...]``: each entry is a YAML path relative to the
file (``../base/cifar10``) or a name on the preset search path of ``presets.py``
(``simclr/cifar10_resnet18``, or ``base/cifar10`` for the shared defaults); the file relative to
the config is tried first. A file's
``plugins:`` and ``configs:`` entries (folders of one's own plugins and presets) are made absolute
relative to the file and put on the search paths as soon as the file is read, so that its
``defaults`` may name a preset of its own folder.

Command-line items are ``key=value`` (omegaconf dotlist) or ``~key``, which removes ``key`` from
what the files set (Hydra's syntax): the schema's default applies again.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from vissl_lite.errors import ConfigError
from vissl_lite.presets import add_preset_roots, list_presets, preset_roots
from vissl_lite.registry import add_plugins

#: (source name for messages, raw config); a ``~key`` item is (source, None) in ``removals``
Source = Tuple[str, DictConfig]
#: top-level keys naming folders, resolved relative to the file that sets them
FOLDER_KEYS = ("plugins", "configs")


def read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (check the path; presets live in "
                          f"configs/)")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends
        raise ConfigError(yaml_error(path, e)) from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: a config file must hold a mapping of sections, not a list")
    return cfg


def yaml_error(path: Path, e: Exception) -> str:
    """``file:line:column: not valid YAML: <problem> (<context>)`` from a yaml error's marks."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(e, "problem", None)
    if not problem:
        return f"{where}: not valid YAML: {str(e).splitlines()[0]}"
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and start is not None and mark is not None and start.line != mark.line:
        context += f" started at line {start.line + 1}"
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def collect_sources(path: Path, seen: Tuple[Path, ...] = ()) -> List[Source]:
    """Flatten the ``defaults`` inheritance into an ordered list of (source name, raw config)."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"{path}: circular 'defaults' chain: {chain}")
    cfg = read_yaml(path)
    _absolute_folders(cfg, path)
    sources: List[Source] = []
    defaults = cfg.pop("defaults", None) if "defaults" in cfg else None
    if defaults is not None:
        if isinstance(defaults, str):
            defaults = [defaults]
        if not isinstance(defaults, (list, ListConfig)):
            raise ConfigError(f"{path}: 'defaults' must be a list of config paths or preset names")
        for parent in defaults:
            sources += collect_sources(_find_parent(str(parent), path), (*seen, path))
    sources.append((display(path), cfg))
    return sources


def _absolute_folders(cfg: DictConfig, path: Path) -> None:
    for key in FOLDER_KEYS:
        value = cfg.get(key)
        if value is None:
            continue
        entries = [value] if isinstance(value, str) else value
        if not isinstance(entries, (list, ListConfig)):
            raise ConfigError(f"{path}: '{key}' must be a folder or a list of folders")
        cfg[key] = [str((path.parent / Path(str(e)).expanduser()).resolve()) for e in entries]
        (add_plugins if key == "plugins" else add_preset_roots)(list(cfg[key]))


def _find_parent(entry: str, child: Path) -> Path:
    """A ``defaults`` entry: a YAML file relative to ``child`` first, then a preset name."""
    relative = Path(entry).expanduser()
    relative = relative if relative.suffix else relative.with_suffix(".yaml")
    candidate = relative if relative.is_absolute() else child.parent / relative
    if candidate.is_file():
        return candidate
    name = entry.removesuffix(".yaml")
    presets = list_presets()
    if name in presets:
        return presets[name]
    for root in preset_roots():  # shared defaults that are not runnable presets: base/cifar10
        if (root / relative).is_file() and not relative.is_absolute():
            return root / relative
    roots = ", ".join(display(r) for r in preset_roots()) or "(none)"
    raise ConfigError(f"{display(child)}: defaults entry '{entry}' is neither a file "
                      f"({display(candidate)}) nor a preset name in the preset folders ({roots}); "
                      f"fix the path or pick a name from `vissl-lite list presets`")


def display(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def parse_overrides(overrides: Sequence[str]) -> Tuple[List[Source], List[Tuple[int, str, str]]]:
    """``key=value`` items as sources, and the ``~key`` items as (position among the sources,
    key, source name): a removal applies to the sources before it."""
    out: List[Source] = []
    removals: List[Tuple[int, str, str]] = []
    for item in overrides:
        if item.startswith("~"):
            key = item[1:].split("=", 1)[0]
            if not key:
                raise ConfigError(f"override '{item}': give the key to remove, e.g. "
                                  f"~backbone.pos_embed")
            removals.append((len(out), key, f"command-line override '{item}'"))
            continue
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. optim.lr=0.3) "
                              f"or ~key (remove a key the config file sets)")
        out.append((f"command-line override '{item}'", OmegaConf.from_dotlist([item])))
    return out, removals


def remove_key(sources: Sequence[Source], key: str) -> None:
    """Delete ``key`` (dotted) from every source that sets it."""
    *parents, leaf = key.split(".")
    for _, cfg in sources:
        node = OmegaConf.select(cfg, ".".join(parents)) if parents else cfg
        if isinstance(node, DictConfig) and leaf in node:
            node.pop(leaf)
