"""Plugins read from their source without being imported: registered names, help and classes.

``vissl-lite list``, ``vissl-lite config`` and config errors must answer in well under a second,
but every plugin module imports torch (2.5 s before anything runs). So the registries read their
plugin files with ``ast``: ``declarations`` finds the ``@METHODS.register("name", help="...")``
decorators, and ``light_class`` returns a stand-in of a registered class built by executing a
stripped copy of its module: its imports from the standard library and ``vissl_lite`` (the
``vissl_lite`` modules stripped the same way), its dataclasses whole, and of every other class
only its nested classes, its ``Config``, ``supported_backbones`` and ``min_batch_size``
attributes and its load-time rules (``check_run``, ``check_shape``), its constants (assignments
that call nothing: no side effect runs) and its functions (defined, not run). That is all the config
loader needs of a method: its ``Config`` schema, the backbone families it trains and the shape
rules of ``vissl_lite.shapes``. The torch-free modules in ``REAL_MODULES`` (errors, registry,
shapes, omegaconf) are imported as they are.

A file this cannot read (a name computed at run time, a ``Config`` built from imported objects)
gives ``None`` and the registry imports the module instead: slower, never wrong.
tests/test_plugin_scan.py checks that every built-in plugin reads the same both ways.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

#: class attributes a stand-in keeps (what the config loader reads of a method)
KEPT_ATTRIBUTES = ("Config", "supported_backbones", "min_batch_size")
#: methods a stand-in keeps: the load-time shape rules (``vissl_lite.shapes``)
KEPT_METHODS = ("check_run", "check_shape")
#: modules imported as they are (no torch under them), not stripped
REAL_MODULES = ("vissl_lite.errors", "vissl_lite.registry", "vissl_lite.shapes", "omegaconf")
_LIGHT_PREFIX = "vissl_lite._light."
_light_modules: Dict[Tuple[str, float], Optional[types.ModuleType]] = {}


@dataclass(frozen=True)
class Declaration:
    """One ``@REGISTRY.register(...)`` decoration found in a file."""

    name: str
    help: str
    obj_name: str       # the decorated class or function
    module: str         # the module name it is imported under
    path: Path


def _literal(node: Optional[ast.AST], constants: Dict[str, object]) -> Optional[str]:
    """A string argument: a literal, or an expression of the module's literal constants (an
    f-string naming a tuple of names, say); ``None`` when it needs anything else."""
    if node is None:
        return None
    try:
        code = compile(ast.Expression(node), "<help>", "eval")
        value = eval(code, {"__builtins__": {}}, constants)
    except Exception:  # noqa: BLE001 - not computable from constants: import the module instead
        return None
    return value if isinstance(value, str) else None


def _constants(tree: ast.Module) -> Dict[str, object]:
    found: Dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
    return found


def declarations(path: Path, module: str, symbol: str) -> Optional[List[Declaration]]:
    """Every ``@symbol.register(name, help=...)`` in the file at ``path``; ``None`` when some
    ``symbol.register`` use cannot be read without running the module (then import it)."""
    try:
        text = path.read_text()
        if f"{symbol}.register" not in text:
            return []
        tree = ast.parse(text, str(path))
    except (OSError, SyntaxError, ValueError):
        return None
    found: List[Declaration] = []
    decorators, constants = set(), _constants(tree)
    for node in tree.body:
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            continue
        for deco in node.decorator_list:
            if not _is_register(deco, symbol):
                continue
            decorators.add(id(deco))
            args = {kw.arg: kw.value for kw in deco.keywords}
            name_node = deco.args[0] if deco.args else args.pop("name", None)
            help_node = deco.args[1] if len(deco.args) > 1 else args.pop("help", None)
            name, help_text = _literal(name_node, constants), _literal(help_node, constants)
            unread = (name_node is not None and name is None) or \
                (help_node is not None and help_text is None)
            if unread or args or len(deco.args) > 2:
                return None
            doc = (ast.get_docstring(node) or "").strip().splitlines()
            found.append(Declaration((name or node.name).lower(),
                                     help_text or (doc[0] if doc else ""), node.name, module, path))
    uses = [n for n in ast.walk(tree) if _is_register(n, symbol)]
    return found if all(id(n) in decorators for n in uses) else None


def _is_register(node: ast.AST, symbol: str) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "register" and isinstance(node.func.value, ast.Name)
            and node.func.value.id == symbol)


def module_path(module: str) -> Optional[Path]:
    """The source file of ``module`` without executing it or its parent packages (whose
    ``__init__`` may import torch): the top-level package's folder, walked down."""
    top, *parts = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not parts:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for folder in spec.submodule_search_locations or []:
        base = Path(folder, *parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def light_class(path: Path, module: str, obj_name: str) -> Optional[type]:
    """The stand-in of class ``obj_name`` of the module at ``path`` (see the module docstring),
    or ``None`` when the stripped module cannot define it."""
    light = _light_module(path, module)
    obj = getattr(light, obj_name, None) if light is not None else None
    return obj if isinstance(obj, type) else None


def _light_module(path: Path, module: str) -> Optional[types.ModuleType]:
    try:
        key = (str(path.resolve()), path.stat().st_mtime)
        if key not in _light_modules:
            _light_modules[key] = None  # a cycle of plugin imports reads as unreadable
            _light_modules[key] = _execute(ast.parse(path.read_text(), str(path)), module)
        return _light_modules[key]
    except (OSError, SyntaxError, ValueError):
        return None


def _execute(tree: ast.Module, module: str) -> types.ModuleType:
    light = types.ModuleType(_LIGHT_PREFIX + module)
    sys.modules[light.__name__] = light  # dataclasses and typing resolve annotations through it
    future = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            _bind_imports(node, light)
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef)) or (
                isinstance(node, (ast.Assign, ast.AnnAssign)) and not _calls(node.value)):
            stmt = _strip_class(node, light.__dict__) if isinstance(node, ast.ClassDef) else node
            code = compile(ast.fix_missing_locations(ast.Module([*future, stmt], [])),
                           f"<light {module}>", "exec")
            try:
                exec(code, light.__dict__)
            except Exception:  # noqa: BLE001 - a statement needing what was stripped is left out
                continue
    return light


def _bind_imports(node: ast.stmt, light: types.ModuleType) -> None:
    """Standard-library imports run; ``vissl_lite`` names come from stripped copies; the rest
    (torch, timm, ...) is left out."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if _stdlib(alias.name):
                top = alias.name.split(".")[0]
                light.__dict__[alias.asname or top] = \
                    importlib.import_module(alias.name if alias.asname else top)
        return
    if node.level or not node.module:
        return
    if _stdlib(node.module) or node.module.split(".")[0] in REAL_MODULES \
            or node.module in REAL_MODULES:
        source = importlib.import_module(node.module)
    elif node.module.startswith("vissl_lite.") and (path := module_path(node.module)):
        source = _light_module(path, node.module)
    else:
        return
    for alias in node.names:
        if source is not None and hasattr(source, alias.name):
            light.__dict__[alias.asname or alias.name] = getattr(source, alias.name)


def _calls(node: Optional[ast.AST]) -> bool:
    """Whether an assigned value calls anything (not run: ``METHODS = Registry(...)`` and the
    like)."""
    return node is not None and any(isinstance(n, ast.Call) for n in ast.walk(node))


def _stdlib(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names


def _is_dataclass_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return (isinstance(target, ast.Name) and target.id == "dataclass") or \
        (isinstance(target, ast.Attribute) and target.attr == "dataclass")


def _strip_class(node: ast.ClassDef, defined: dict) -> ast.ClassDef:
    """A dataclass whole (less other decorators); any other class as a stand-in whose bases are
    those of its bases that the stripped module defines (``nn.Module`` is not)."""
    decorators = [d for d in node.decorator_list if _is_dataclass_decorator(d)]
    if decorators:
        return ast.ClassDef(node.name, node.bases, node.keywords, node.body, decorators,
                            **_type_params(node))
    body: List[ast.stmt] = []
    for stmt in node.body:
        if isinstance(stmt, ast.ClassDef):
            body.append(_strip_class(stmt, defined))
        elif isinstance(stmt, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in KEPT_ATTRIBUTES for t in stmt.targets):
            body.append(stmt)
        elif isinstance(stmt, ast.FunctionDef) and stmt.name in KEPT_METHODS:
            body.append(stmt)
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) \
                and stmt.target.id in KEPT_ATTRIBUTES and stmt.value is not None:
            body.append(ast.Assign([stmt.target], stmt.value))
    bases = [b for b in node.bases if ast.unparse(b).split(".")[0] in defined]
    return ast.ClassDef(node.name, bases, [], body or [ast.Pass()], [], **_type_params(node))


def _type_params(node: ast.ClassDef) -> dict:
    return {"type_params": node.type_params} if sys.version_info >= (3, 12) else {}
