"""One small registry that maps a name in a config to a constructor (as timm's ``create_model``).

Methods, backbones, datasets and evaluators each own one ``Registry``; ``vissl-lite list`` prints
them all. An unknown name fails with the list of known names, so a typo in a YAML file is fixed
from the error message alone.

Registries fill themselves: on first use a registry imports every module of the package that
holds its plugins (``vissl_lite.methods`` for methods, ...), then any external plugin modules named
in ``$VISSL_LITE_PLUGINS`` (comma-separated module names or ``.py`` paths) or declared under the
``vissl_lite.plugins`` entry-point group of an installed distribution. Dropping a file that calls
``@METHODS.register(...)`` into ``vissl_lite/methods/`` is therefore all it takes to add a method;
this module imports the plugin packages by name at run time, so the import graph still runs one
way (plugins import the registry, never the reverse).
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import pkgutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, TypeVar

from vissl_lite.errors import RegistryError

T = TypeVar("T")

ALL_REGISTRIES: Dict[str, "Registry"] = {}
PLUGINS_ENV = "VISSL_LITE_PLUGINS"
ENTRY_POINT_GROUP = "vissl_lite.plugins"
_external_loaded = False


def import_package_modules(package: str, scan: bool = True) -> None:
    """Import ``package`` and, with ``scan``, every public module directly inside it."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(getattr(pkg, "__path__", []) if scan else []):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def _import_plugin(spec: str) -> None:
    if spec.endswith(".py"):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise RegistryError(f"{PLUGINS_ENV} names {spec}, which is not a file")
        name = f"vissl_lite_plugin_{path.stem}"
        if name in sys.modules:
            return
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            importlib.import_module(spec)
        except ModuleNotFoundError as e:
            raise RegistryError(f"{PLUGINS_ENV} names module '{spec}', which cannot be imported "
                                f"({e}); add its folder to PYTHONPATH or give a .py path") from None


def load_external_plugins() -> None:
    """Import the plugin modules of ``$VISSL_LITE_PLUGINS`` and of installed entry points, once."""
    global _external_loaded
    if _external_loaded:
        return
    _external_loaded = True
    for spec in filter(None, (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(","))):
        _import_plugin(spec)
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()


class Registry:
    """A named mapping ``name -> constructor`` filled with the ``@registry.register(name)`` decorator."""

    def __init__(self, kind: str, package: Optional[str] = None, scan: bool = True):
        self.kind = kind
        self.package, self.scan = package, scan
        self._entries: Dict[str, Callable] = {}
        self._help: Dict[str, str] = {}
        self._discovered = package is None
        ALL_REGISTRIES[kind] = self

    def discover(self) -> "Registry":
        """Import the plugin package's modules and external plugins (once); returns ``self``."""
        if not self._discovered:
            self._discovered = True
            import_package_modules(self.package, self.scan)
            load_external_plugins()
        return self

    def register(self, name: Optional[str] = None, help: str = "") -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = (name or obj.__name__).lower()
            if key in self._entries and self._entries[key] is not obj:
                raise RegistryError(f"{self.kind} '{key}' is registered twice "
                                    f"({self._entries[key]!r} and {obj!r}); pick another name.")
            self._entries[key] = obj
            doc = help or (obj.__doc__ or "").strip().splitlines()[0:1]
            self._help[key] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return obj

        return decorator

    def get(self, name: str) -> Callable:
        self.discover()
        key = str(name).lower()
        if key not in self._entries:
            close = difflib.get_close_matches(key, self._entries, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RegistryError(f"unknown {self.kind} '{name}'.{hint} Known {self.kind}s: "
                                f"{', '.join(sorted(self._entries)) or '(none)'}.")
        return self._entries[key]

    def build(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def names(self) -> List[str]:
        self.discover()
        return sorted(self._entries)

    def items(self) -> List[tuple]:
        """``(name, constructor)`` pairs, sorted by name."""
        return [(name, self._entries[name]) for name in self.names()]

    def describe(self, name: str) -> str:
        return self._help.get(name.lower(), "")

    def __contains__(self, name: object) -> bool:
        self.discover()
        return str(name).lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self.names())})"


METHODS = Registry("method", "vissl_lite.methods")
#: these two register their entries in their own ``__init__`` (scanning every module of
#: vissl_lite.backbones would import timm just to list names)
BACKBONES = Registry("backbone", "vissl_lite.backbones", scan=False)
DATASETS = Registry("dataset", "vissl_lite.data", scan=False)
EVALUATORS = Registry("evaluator", "vissl_lite.eval")
