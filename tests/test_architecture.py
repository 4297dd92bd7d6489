"""The package's architecture, as tests: imports run one way, no cycles, modules stay small,
and a method is one file plus a preset (discovered, with no other edit).

Layers (a module may import its own layer and the ones below it):

    0  errors, registry, presets, config + the sections' config schemas, schedules, rng, distributed,
       host_memory
    1  backbones, augment, data
    2  methods
    3  eval (evaluators and the online monitor)
    4  engine
    5  eval.cli, cli, export (the command line)
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vissl_lite"
MAX_LINES = 300

LAYERS = [
    ("vissl_lite.cli", 5), ("vissl_lite.eval.cli", 5), ("vissl_lite.export", 5),
    ("vissl_lite.engine", 4),
    ("vissl_lite.eval", 3),
    ("vissl_lite.methods", 2),
    ("vissl_lite.backbones", 1), ("vissl_lite.augment", 1), ("vissl_lite.data", 1),
    ("vissl_lite", 0),
]
#: the sections' config schemas are plain dataclasses at the bottom, whatever package holds them
SCHEMA_SUFFIX = ".config"
#: function-level imports of these are allowed: they load heavy optional dependencies (timm)
LAZY_OK = {"vissl_lite.backbones.vit", "vissl_lite.backbones.resnet"}


def layer_of(module: str) -> int:
    if module.endswith(SCHEMA_SUFFIX) or module == "vissl_lite._lazy":
        return 0
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(module)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> List[Tuple[str, bool]]:
    """``(imported vissl_lite module, at module level?)`` for every import in the file."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    typing_only = {id(n) for node in tree.body if isinstance(node, ast.If)
                   and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = [f"{node.module}.{a.name}" for a in node.names
                          if _is_module(f"{node.module}.{a.name}")]
            names = submodules if len(submodules) == len(node.names) else [node.module, *submodules]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("vissl_lite") and _is_module(name):
                found.append((name, id(node) in top_level))
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


MODULES: Dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_imports_run_one_way():
    upward = [f"{mod} (layer {layer_of(mod)}) imports {dep} (layer {layer_of(dep)})"
              for mod, path in MODULES.items() for dep, _ in imports(path)
              if layer_of(dep) > layer_of(mod)]
    assert not upward, "\n".join(upward)


def test_function_level_imports_only_for_heavy_optional_dependencies():
    lazy = [f"{mod}: {dep}" for mod, path in MODULES.items() for dep, top in imports(path)
            if not top and dep not in LAZY_OK]
    assert not lazy, "\n".join(lazy)


def test_no_import_cycles():
    graph = {mod: {d for d, top in imports(p) if top and d != mod} for mod, p in MODULES.items()}
    state: Dict[str, int] = {}
    cycles: List[str] = []

    def visit(node: str, stack: List[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if dep not in graph or dep == node.rsplit(".", 1)[0]:
                continue  # a package's own __init__ is not an edge back
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]) if dep in stack
                              else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for mod in graph:
        if mod not in state:
            visit(mod, [mod])
    assert not cycles, "\n".join(cycles)


def test_modules_stay_small():
    big = [f"{mod}: {n} lines" for mod, path in MODULES.items()
           if (n := len(path.read_text().splitlines())) > MAX_LINES]
    assert not big, "\n".join(big)


def test_importing_the_config_loads_no_engine_method_or_eval_code():
    code = ("import sys, vissl_lite.config\n"
            "print('\\n'.join(m for m in sys.modules if m.startswith('vissl_lite')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT).stdout.split()
    heavy = [m for m in loaded if m.startswith(("vissl_lite.engine.", "vissl_lite.methods",
                                                "vissl_lite.eval.")) and not m.endswith(".config")]
    assert not heavy, heavy


PLUGIN_METHOD = '''
    """Toy contrastive: a two-view cosine loss with a tiny projector (written by a test)."""
    from dataclasses import dataclass

    import torch.nn.functional as F
    from torch import nn

    from vissl_lite.augment.spec import ViewSpec
    from vissl_lite.methods.base import Method, StepOutput
    from vissl_lite.registry import METHODS


    @dataclass
    class Config:
        name: str = "{name}"
        dim: int = 8


    @METHODS.register("{name}", help="a plug-in written by the architecture test")
    class PluginContrastive(Method):
        Config = Config
        views = ViewSpec("simclr", 2, 0)

        def __init__(self, backbone, cfg=None):
            super().__init__(backbone, cfg)
            self.projector = nn.Linear(backbone.num_features, self.cfg.dim)

        def training_step(self, batch):
            a, b = (F.normalize(self.projector(self.backbone(v)), dim=1) for v in batch["views"])
            return StepOutput(2 - 2 * (a * b).sum(1).mean())
'''

PLUGIN_PRESET = '''
    defaults: [../base/cifar10]
    method:
      name: {name}
      dim: 8
    backbone:
      name: resnet18
      cifar_stem: true
    train:
      epochs: 1
      max_steps: 2
      batch_size: 8
    optim:
      name: sgd
      lr: 0.01
    data:
      subset: 64
      num_workers: 0
    monitor:
      every_epochs: 0
    logger:
      progress: false
      plot: false
      wandb:
        mode: disabled
'''


def _run(args: List[str], cwd: Path, env: Dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vissl_lite.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_new_method_is_one_file_and_one_preset(tmp_path, cifar_archive):
    """Copy the package, drop in methods/<name>.py and configs/<name>/cifar10_resnet18.yaml:
    `vissl-lite list` shows it and `vissl-lite pretrain <name>/cifar10_resnet18` trains 2 steps."""
    name = "plugin_contrastive"
    copy = tmp_path / "checkout"
    shutil.copytree(PACKAGE, copy / "vissl_lite", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "configs", copy / "configs")
    (copy / "vissl_lite" / "methods" / f"{name}.py").write_text(
        textwrap.dedent(PLUGIN_METHOD).format(name=name))
    (copy / "configs" / name).mkdir()
    (copy / "configs" / name / "cifar10_resnet18.yaml").write_text(
        textwrap.dedent(PLUGIN_PRESET).format(name=name))
    env = {**os.environ, "PYTHONPATH": str(copy), "VISSL_LITE_CONFIGS": ""}

    listed = _run(["list"], copy, env)
    assert listed.returncode == 0, listed.stderr
    assert f"{name:<24} a plug-in written by the architecture test" in listed.stdout
    assert f"{name}/cifar10_resnet18" in listed.stdout

    out = tmp_path / "run"
    run = _run(["pretrain", f"{name}/cifar10_resnet18", f"data.root={cifar_archive}",
                f"output_dir={out}"], copy, env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (out / "checkpoints" / "last.pt").exists()
    steps = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    assert steps
