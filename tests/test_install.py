"""A non-editable ``pip install .`` ships the presets: ``vissl-lite list`` shows them and
``vissl-lite pretrain <preset name>`` runs from a folder outside the checkout."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "vissl_lite",
           "configs")


@pytest.mark.slow
def test_non_editable_install_lists_and_runs_presets_by_name(tmp_path, cifar_archive):
    src = tmp_path / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copyfile
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (REPO / name).is_dir() else {}))
    venv = tmp_path / "venv"
    # --without-pip: the venv's own bundled setuptools would shadow the installed one (and need
    # the `wheel` package); pip runs from this interpreter against the venv with --python
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-build-isolation", "--no-index", str(src)], check=True,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VISSL_LITE_CONFIGS")}
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args):
        return subprocess.run([str(venv / "bin" / "vissl-lite"), *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=120)

    listed = run("list", "presets")
    assert listed.returncode == 0, listed.stderr
    installed = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages" / "vissl_lite" / "configs"
    assert "simclr/cifar10_resnet18" in listed.stdout and "simclr/quickstart" in listed.stdout
    assert str(installed / "simclr" / "quickstart.yaml") in listed.stdout
    assert "base/" not in listed.stdout

    trained = run("pretrain", "simclr/quickstart", f"data.root={cifar_archive}", "data.subset=16",
                  "data.num_workers=0", "train.batch_size=8", "train.max_steps=2",
                  "train.device=cpu", "monitor.every_epochs=0", "logger.wandb.mode=disabled",
                  "logger.progress=false", "logger.plot=false", f"output_dir={work / 'run'}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (work / "run" / "checkpoints" / "last.pt").is_file()
    assert f"output {work / 'run'}" in trained.stderr
