"""One small registry that maps a name in a config to a constructor (as timm's ``create_model``).

Methods, backbones, datasets and evaluators each own one ``Registry``; ``vissl-lite list`` prints
them all. An unknown name fails with the list of known names, so a typo in a YAML file is fixed
from the error message alone.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Iterator, List, Optional, TypeVar

T = TypeVar("T")

ALL_REGISTRIES: Dict[str, "Registry"] = {}


class RegistryError(KeyError):
    """An unknown or duplicated name; the message says which names exist."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class Registry:
    """A named mapping ``name -> constructor`` filled with the ``@registry.register(name)`` decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable] = {}
        self._help: Dict[str, str] = {}
        ALL_REGISTRIES[kind] = self

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
        if key not in self._entries:
            close = difflib.get_close_matches(key, self._entries, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RegistryError(f"unknown {self.kind} '{name}'.{hint} Known {self.kind}s: "
                                f"{', '.join(sorted(self._entries)) or '(none)'}.")
        return self._entries[key]

    def build(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def names(self) -> List[str]:
        return sorted(self._entries)

    def describe(self, name: str) -> str:
        return self._help.get(name.lower(), "")

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self.names())})"


METHODS = Registry("method")
BACKBONES = Registry("backbone")
DATASETS = Registry("dataset")
EVALUATORS = Registry("evaluator")
