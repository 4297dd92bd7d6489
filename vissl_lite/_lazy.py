"""Lazy package exports (PEP 562): ``from vissl_lite.engine import Trainer`` works, while importing
``vissl_lite.engine.config`` (a schema, needed by ``vissl_lite.config``) loads no trainer code."""
from __future__ import annotations

import importlib
from typing import Callable, Dict, List, Tuple


def lazy_exports(package: str, exports: Dict[str, str]) -> Tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``, resolving ``name`` from module ``exports[name]``."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> List[str]:
        return sorted(exports)

    return __getattr__, __dir__
