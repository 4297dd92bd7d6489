"""Ships the presets inside the package: a (non-editable) ``pip install .`` copies ``configs/``
to ``vissl_lite/configs/``, where ``vissl_lite.presets`` finds them, so ``vissl-lite list`` and
``vissl-lite pretrain simclr/cifar10_resnet18`` work from any folder. The repository keeps one
copy, in ``configs/`` (an editable install and a source checkout read it there). Everything else
is in setup.cfg."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithPresets(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "vissl_lite" / "configs"
        for src in sorted((HERE / "configs").rglob("*.yaml")):
            dst = target / src.relative_to(HERE / "configs")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)


setup(cmdclass={"build_py": BuildPyWithPresets})
