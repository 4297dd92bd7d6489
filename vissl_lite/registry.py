"""One small registry that maps a name in a config to a constructor (as timm's ``create_model``).

Methods, backbones, datasets and evaluators each own one ``Registry``; ``vissl-lite list`` prints
them all. An unknown name fails with the list of known names, so a typo in a YAML file is fixed
from the error message alone.

Registries fill themselves: on first use a registry imports every module of the package that
holds its plugins (``vissl_lite.methods`` for methods, ...), then the external plugins: the
modules, ``.py`` files and folders of ``.py`` files named in ``$VISSL_LITE_PLUGINS``
(comma-separated; ``--plugins DIR`` and a config's ``plugins:`` key add to it) and the entry
points of the ``vissl_lite.plugins`` group of installed distributions. Dropping a file that calls
``@METHODS.register(...)`` into ``vissl_lite/methods/`` (or a plugin folder) is therefore all it
takes to add a method; this module imports the plugin packages by name at run time, so the import
graph still runs one way (plugins import the registry, never the reverse).

Names, help and a method's ``Config`` are first read from the plugin files' source
(``plugin_scan.py``), so that listing and config checks import no torch; ``get`` imports.
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
from typing import Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

from vissl_lite.errors import RegistryError
from vissl_lite.plugin_scan import Declaration, declarations, light_class, module_path

T = TypeVar("T")

ALL_REGISTRIES: Dict[str, "Registry"] = {}
PLUGINS_ENV = "VISSL_LITE_PLUGINS"
ENTRY_POINT_GROUP = "vissl_lite.plugins"
_loaded_plugins: set = set()


def import_package_modules(package: str, scan: bool = True) -> None:
    """Import ``package`` and, with ``scan``, every public module directly inside it."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(getattr(pkg, "__path__", []) if scan else []):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def plugin_specs() -> List[str]:
    """The entries of ``$VISSL_LITE_PLUGINS``: module names, ``.py`` files, folders."""
    return [s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(",") if s.strip()]


def add_plugins(paths: List[str]) -> None:
    """Put plugin files or folders (``--plugins DIR``, a config's ``plugins:``) before those of
    ``$VISSL_LITE_PLUGINS``, in this process and the ones it starts; registries read them anew."""
    new = [str(Path(p).expanduser().resolve()) for p in paths]
    specs = [*dict.fromkeys([*new, *plugin_specs()])]
    if specs != plugin_specs():
        os.environ[PLUGINS_ENV] = ",".join(specs)
        for registry in ALL_REGISTRIES.values():
            registry._declared = None
            registry._discovered = registry._discovered and registry.package is None


def plugin_sources() -> List[str]:
    """Where plugins are looked for, in words (``vissl-lite list`` prints it)."""
    entry_points = [e.value for e in metadata.entry_points(group=ENTRY_POINT_GROUP)]
    packages = [r.package for r in ALL_REGISTRIES.values() if r.package]
    folders = [str(p.parent) if p else m for m in packages for p in [module_path(m)]]
    external = plugin_specs()
    return [*dict.fromkeys(folders),
            f"${PLUGINS_ENV} / --plugins: {', '.join(external) if external else '(none)'}",
            f"entry points '{ENTRY_POINT_GROUP}': {', '.join(entry_points) or '(none)'}"]


def external_modules() -> List[Tuple[str, Optional[Path]]]:
    """``(module name, source file or None)`` of every external plugin module."""
    found: List[Tuple[str, Optional[Path]]] = []
    for spec in plugin_specs():
        path = Path(spec).expanduser()
        if path.is_dir():
            found += [(f"vissl_lite_plugin_{f.stem}", f.resolve())
                      for f in sorted(path.glob("*.py")) if not f.name.startswith("_")]
        elif spec.endswith(".py"):
            if not path.is_file():
                raise RegistryError(f"{PLUGINS_ENV} names {spec}, which is not a file")
            found.append((f"vissl_lite_plugin_{path.stem}", path.resolve()))
        else:
            if "/" in spec or os.sep in spec:
                raise RegistryError(f"{PLUGINS_ENV} names {spec}, which is not a folder, a .py "
                                    f"file or a module name")
            found.append((spec, module_path(spec)))
    return found


def import_plugin(module: str, path: Optional[Path]) -> None:
    """Import one external plugin module (a ``.py`` file under a ``vissl_lite_plugin_`` name)."""
    if module in sys.modules or module in _loaded_plugins:
        return
    _loaded_plugins.add(module)
    if module.startswith("vissl_lite_plugin_"):
        module_spec = importlib.util.spec_from_file_location(module, path)
        loaded = importlib.util.module_from_spec(module_spec)
        sys.modules[module] = loaded
        module_spec.loader.exec_module(loaded)
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise RegistryError(f"{PLUGINS_ENV} names module '{module}', which cannot be imported "
                            f"({e}); add its folder to PYTHONPATH or give a .py path") from None


def load_external_plugins() -> None:
    """Import the external plugin modules and the installed entry points (each once)."""
    for module, path in external_modules():
        import_plugin(module, path)
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.value not in _loaded_plugins:
            _loaded_plugins.add(entry_point.value)
            entry_point.load()


class Registry:
    """A named mapping ``name -> constructor`` filled by the ``@registry.register(name)``
    decorator."""

    def __init__(self, kind: str, package: Optional[str] = None, scan: bool = True,
                 symbol: Optional[str] = None):
        self.kind = kind
        self.package, self.scan = package, scan
        self.symbol = symbol or f"{kind.upper()}S"
        self._entries: Dict[str, Callable] = {}
        self._help: Dict[str, str] = {}
        self._declared: Optional[Dict[str, Declaration]] = None
        self._discovered = package is None
        ALL_REGISTRIES[kind] = self

    def plugin_modules(self) -> List[Tuple[str, Optional[Path]]]:
        """``(module, source file)`` of the built-in plugin modules, then the external ones."""
        if self.package is None:
            return []
        if not self.scan:
            return [(self.package, module_path(self.package)), *external_modules()]
        spec = importlib.util.find_spec(self.package)
        found = [(f"{self.package}.{info.name}", Path(info.module_finder.path) / f"{info.name}.py")
                 for info in pkgutil.iter_modules(spec.submodule_search_locations or [])
                 if not info.name.startswith("_") and not info.ispkg]
        return [*found, *external_modules()]

    def declared(self) -> Dict[str, Declaration]:
        """The names the plugin files declare, read without importing them; a file that cannot be
        read so is imported (its names then come from ``register``)."""
        if self._declared is None:
            declared: Dict[str, Declaration] = {}
            for module, path in self.plugin_modules():
                found = declarations(path, module, self.symbol) if path else None
                if found is None:
                    self._import(module, path)
                    continue
                for d in found:
                    if d.name in declared and declared[d.name].module != d.module:
                        raise RegistryError(f"{self.kind} '{d.name}' is registered twice "
                                            f"({declared[d.name].path} and {d.path}); pick "
                                            f"another name.")
                    declared[d.name] = d
            self._declared = declared
        return self._declared

    def _import(self, module: str, path: Optional[Path]) -> None:
        external = self.package and not module.startswith(self.package)
        if module.startswith("vissl_lite_plugin_") or external:
            import_plugin(module, path)
        else:
            importlib.import_module(module)

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
        key = str(name).lower()
        if key not in self._entries and key in self:
            self.discover()
        if key not in self._entries:
            known = self.names()
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RegistryError(f"unknown {self.kind} '{name}'.{hint} Known {self.kind}s: "
                                f"{', '.join(known) or '(none)'}.")
        return self._entries[key]

    def light(self, name: str) -> type:
        """The class registered as ``name``, or a stand-in read from its source holding its
        ``Config`` and ``supported_backbones`` (``plugin_scan.py``): no import when it can."""
        key = str(name).lower()
        d = self.declared().get(key) if key not in self._entries else None
        stand_in = light_class(d.path, d.module, d.obj_name) if d else None
        return stand_in if stand_in is not None else self.get(name)

    def build(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def names(self) -> List[str]:
        return sorted({*self.declared(), *self._entries})

    def items(self) -> List[tuple]:
        """``(name, constructor)`` pairs, sorted by name."""
        return [(name, self.get(name)) for name in self.names()]

    def describe(self, name: str) -> str:
        key = name.lower()
        d = self.declared().get(key)
        return self._help.get(key, d.help if d else "")

    def __contains__(self, name: object) -> bool:
        key = str(name).lower()
        return key in self._entries or key in self.declared()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self.names())})"


METHODS = Registry("method", "vissl_lite.methods")
#: the zoo registers its names in a loop (it imports no torch); data sets are read from the source
BACKBONES = Registry("backbone", "vissl_lite.backbones.zoo", scan=False)
DATASETS = Registry("dataset", "vissl_lite.data.datasets", scan=False)
EVALUATORS = Registry("evaluator", "vissl_lite.eval")
