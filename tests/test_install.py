"""A non-editable ``pip install .`` ships the presets: ``vissl-lite list`` shows them and
``vissl-lite pretrain <preset name>`` runs from a folder outside the checkout; a project folder
of one's own method files and presets works through ``--plugins``/``--configs``."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_architecture import PLUGIN_METHOD

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "vissl_lite",
           "configs")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """One non-editable install in a fresh venv, shared by this module's tests: (venv, env)."""
    tmp_path = tmp_path_factory.mktemp("install")
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
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VISSL_LITE_CONFIGS", "VISSL_LITE_PLUGINS")}
    return venv, env


def _runner(installed, work: Path):
    venv, env = installed

    def run(*args):
        return subprocess.run([str(venv / "bin" / "vissl-lite"), *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=180)
    return run


QUICK = ["data.subset=16", "data.num_workers=0", "train.batch_size=8", "train.max_steps=2",
         "train.device=cpu", "monitor.every_epochs=0", "logger.wandb.mode=disabled",
         "logger.progress=false", "logger.plot=false"]


@pytest.mark.slow
def test_non_editable_install_lists_and_runs_presets_by_name(installed, tmp_path, cifar_archive):
    venv, _ = installed
    work = tmp_path / "elsewhere"
    work.mkdir()
    run = _runner(installed, work)

    listed = run("list", "presets")
    assert listed.returncode == 0, listed.stderr
    installed = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages" / "vissl_lite" / "configs"
    assert "simclr/cifar10_resnet18" in listed.stdout and "simclr/quickstart" in listed.stdout
    assert str(installed / "simclr" / "quickstart.yaml") in listed.stdout
    assert "base/" not in listed.stdout

    trained = run("pretrain", "simclr/quickstart", f"data.root={cifar_archive}", *QUICK,
                  f"output_dir={work / 'run'}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (work / "run" / "checkpoints" / "last.pt").is_file()
    assert f"output {work / 'run'}" in trained.stderr


PRESET = """defaults: [base/cifar10]
method:
  name: my_method
  dim: 8
optim:
  name: sgd
  lr: 0.01
"""


@pytest.mark.slow
def test_a_plugin_folder_outside_the_checkout_is_listed_and_trains(installed, tmp_path, cifar_archive):
    """Issue 22: after `pip install .`, a method file and a preset in the user's own folder were
    invisible. With --plugins/--configs they are listed (with where they were looked for) and
    train, offline, from the installed package."""
    venv, _ = installed
    (tmp_path / "project" / "plugins").mkdir(parents=True)
    (tmp_path / "project" / "plugins" / "my_method.py").write_text(
        textwrap.dedent(PLUGIN_METHOD).format(name="my_method"))
    (tmp_path / "project" / "configs" / "my_method").mkdir(parents=True)
    (tmp_path / "project" / "configs" / "my_method" / "cifar10_resnet18.yaml").write_text(PRESET)
    run = _runner(installed, tmp_path / "project")
    folders = ["--plugins", "plugins", "--configs", "configs"]

    hidden = run("list")
    assert hidden.returncode == 0 and "my_method" not in hidden.stdout
    listed = run("list", *folders)
    assert listed.returncode == 0, listed.stderr
    assert "my_method                a plug-in written by the architecture test" in listed.stdout
    assert "my_method/cifar10_resnet18" in listed.stdout
    project = (tmp_path / "project").resolve()
    assert f"--plugins: {project / 'plugins'}" in listed.stdout
    assert "presets from: configs; " in listed.stdout  # first, shown relative to the cwd

    trained = run("pretrain", "my_method/cifar10_resnet18", *folders, f"data.root={cifar_archive}",
                  *QUICK, "output_dir=run")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (tmp_path / "project" / "run" / "checkpoints" / "last.pt").is_file()
    assert "vissl_lite/cli.py" not in trained.stderr
    # the run records its plugin folder: its checkpoint loads elsewhere without --plugins
    exported = _runner(installed, tmp_path)("export", "project/run", "--format", "safetensors",
                                            "--out", "encoder.safetensors")
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (tmp_path / "encoder.safetensors").is_file()
    imported = subprocess.run([str(venv / "bin" / "python"), "-c", "import vissl_lite; print(vissl_lite.__file__)"],
                              capture_output=True, text=True, env=installed[1], cwd=tmp_path)
    assert str(venv) in imported.stdout  # the installed copy ran, not the checkout
