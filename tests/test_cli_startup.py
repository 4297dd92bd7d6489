"""The commands that do not train import no torch (issue 22: `vissl-lite --version` took 6-8 s).

Timing is benchmarks/cli_startup.py's job; this checks the structure that makes it fast: in a
fresh interpreter, ``--version``, ``--help``, ``list``, ``config`` and config errors (from
``config`` and ``pretrain``) leave ``torch`` out of ``sys.modules``.
"""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [["--version"], ["--help"], ["list"], ["list", "methods", "--markdown"],
            ["config", "simclr/cifar10_resnet18"], ["config", "mae/cifar10_vit_tiny", "method.mask_ratio=0.6"],
            ["config", "simclr/cifar10_resnet18", "optim.lrr=0.3"],
            ["config", "simclr/cifar10_resnet18", "method.temperatur=0.3"],
            ["pretrain", "simclr/cifar10_resnet18", "optim.lrr=0.3"],
            ["pretrain", "mae/cifar10_vit_tiny", "backbone.name=resnet18"],
            ["pretrain", "simclr/cifar10_resnet18", "method.name=simclrr"]]
PROBE = """
import contextlib, io, json, sys
from vissl_lite.cli import main
seen = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    seen.append([argv, code, 'torch' in sys.modules])
print(json.dumps(seen))
"""


def test_commands_that_do_not_train_import_no_torch():
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(COMMANDS)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert [code for _, code, _ in seen] == [0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2]
    assert [argv for argv, _, torch in seen if torch] == []


def test_the_lazy_exports_the_commands_use_resolve():
    """The trainer, the evaluators' options, shards and export load on use."""
    import vissl_lite
    from vissl_lite import data, engine
    from vissl_lite import eval as evaluation

    assert [engine.Trainer.__name__, evaluation.add_eval_arguments.__name__,
            evaluation.run_eval_cli.__name__, data.write_shards.__name__,
            vissl_lite.export_backbone.__name__] == \
        ["Trainer", "add_eval_arguments", "run_eval_cli", "write_shards", "export_backbone"]
