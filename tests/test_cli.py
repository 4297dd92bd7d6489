"""The command line: help texts, config printing, one-line user errors with exit status 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vissl_lite.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for sub in ("pretrain", "eval", "config", "list"):
        assert sub in out


@pytest.mark.parametrize("sub", ["pretrain", "eval", "config", "list"])
def test_each_subcommand_explains_itself(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0
    assert len(capsys.readouterr().out.splitlines()) > 3


def test_config_prints_the_resolved_preset(capsys):
    assert main(["config", str(REPO / "configs/simclr/cifar10_resnet18.yaml"), "optim.lr=0.123"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.123" in out and "name: simclr" in out and "${" not in out


def test_user_error_is_one_line_and_exit_2(capsys):
    code = main(["config", str(REPO / "configs/simclr/cifar10_resnet18.yaml"), "optim.lrr=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("vissl-lite: error:") and "optim.lrr" in err and len(err.splitlines()) == 1


def test_list_prints_every_registry_and_the_presets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("methods:", "simclr", "barlow_twins", "dino", "mae", "ijepa", "backbones:",
                 "resnet18", "vit_small_patch16", "datasets:", "cifar10", "imagefolder",
                 "evaluators:", "knn", "presets:", "configs/simclr/cifar10_resnet18.yaml"):
        assert word in out, word


def test_readme_method_table_is_the_generated_one():
    """README's table is `vissl-lite list methods --markdown`: a new method file and preset
    need one regenerated paste, and a stale README fails here. (A fresh process: other tests
    register methods of their own in this one.)"""
    env = {k: v for k, v in os.environ.items() if k not in ("VISSL_LITE_PLUGINS", "VISSL_LITE_CONFIGS")}
    res = subprocess.run([sys.executable, "-m", "vissl_lite.cli", "list", "methods", "--markdown"],
                         capture_output=True, text=True, cwd=REPO, env=env)
    assert res.returncode == 0, res.stderr
    readme = (REPO / "README.md").read_text()
    assert res.stdout.strip() in readme, "regenerate README's method table: vissl-lite list methods --markdown"


def test_console_script_runs_as_a_module():
    res = subprocess.run([sys.executable, "-m", "vissl_lite.cli", "--version"], capture_output=True,
                         text=True, cwd=REPO)
    assert res.returncode == 0 and "vissl_lite" in res.stdout


def test_vit_with_local_crops_needs_dynamic_img_size(capsys):
    args = ["pretrain", str(REPO / "configs/dino/cifar10_resnet18.yaml"), "data.root=/nonexistent",
            "backbone.name=vit_tiny_patch4", "backbone.cifar_stem=false", "method.num_local_crops=2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "backbone.dynamic_img_size=true" in err
