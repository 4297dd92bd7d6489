"""``vissl-lite pretrain PRESET`` end to end for every CIFAR-10 preset, on the real CIFAR-10 images.

Each preset runs as shipped (backbone, heads, optimizer, augmentation recipe) with overrides that
make it a short job: 2 optimizer steps on 32 images in batches of 16 (one epoch), so the epoch end,
the checkpoint and the plots are all reached. The run folder must hold what docs/interfaces.md
promises: config.yaml, metrics.jsonl with step and epoch records, checkpoints/last.pt that
``load_checkpoint`` reads and ``load_pretrained`` rebuilds as the same method and backbone, and
curves.png. One run has the online monitor (kNN + RankMe) on, one goes through the installed
console script in a subprocess and reads the .tar.gz archive directly. Then ``resume=auto`` on a
finished run and a checkpoint handed to another method's preset.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vissl_lite.cli import main
from vissl_lite.config import load_config
from vissl_lite.engine import CheckpointError, Trainer, load_checkpoint
from vissl_lite.engine.checkpoint import load_pretrained

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

PRESETS = {
    "simclr": ("configs/simclr/cifar10_resnet18.yaml", "resnet18"),
    "barlow_twins": ("configs/barlow_twins/cifar10_resnet18.yaml", "resnet18"),
    "dino": ("configs/dino/cifar10_resnet18.yaml", "resnet18"),
    "mae": ("configs/mae/cifar10_vit_tiny.yaml", "vit_tiny_patch4"),
    "ijepa": ("configs/ijepa/cifar10_vit_tiny.yaml", "vit_tiny_patch4"),
}

STEPS = 2
SHORT = ["train.device=cpu", "train.batch_size=16", f"train.max_steps={STEPS}", "train.log_every=1",
         "data.subset=32", "data.num_workers=0", "logger.wandb.mode=disabled",
         "logger.progress=false", "monitor.every_epochs=0"]


def preset(method: str) -> str:
    return str(REPO / PRESETS[method][0])


def pretrain(method: str, data_root, output_dir, *extra: str) -> int:
    return main(["pretrain", preset(method), *SHORT, f"data.root={data_root}",
                 f"output_dir={output_dir}", *extra])


def read_records(run: Path):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def check_run_folder(run: Path, method: str, steps: int = STEPS) -> dict:
    """The run folder's files, as docs/interfaces.md lists them; returns the last checkpoint."""
    backbone = PRESETS[method][1]
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.method.name == method and saved.backbone.name == backbone
    assert Path(saved.output_dir) == run

    records = read_records(run)
    step_records = [r for r in records if r["type"] == "step"]
    assert [r["step"] for r in step_records] == list(range(1, steps + 1))
    for r in step_records:
        assert torch.isfinite(torch.tensor(r["loss"])) and r["lr"] >= 0 and r["img_per_s"] > 0
    assert any(r["type"] == "epoch" and r["epoch"] == 1 for r in records)

    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (ckpt["method"], ckpt["backbone"], ckpt["step"]) == (method, backbone, steps)
    assert ckpt["config"]["method"]["name"] == method
    model, cfg = load_pretrained(run / "checkpoints" / "last.pt")
    assert type(model).__name__.lower().replace("_", "") == method.replace("_", "")
    assert cfg.backbone.name == backbone
    for name, value in model.state_dict().items():
        assert torch.equal(value, ckpt["model"][name]), name

    assert (run / "curves.png").read_bytes()[:8] == PNG_MAGIC
    return ckpt


@pytest.fixture(scope="module")
def simclr_run(cifar_root, tmp_path_factory) -> Path:
    """One finished 2-step SimCLR run; tests that change it work on a copy."""
    run = tmp_path_factory.mktemp("simclr") / "run"
    assert pretrain("simclr", cifar_root, run) == 0
    return run


def copy_run(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def test_simclr_preset_writes_the_run_folder(simclr_run):
    check_run_folder(simclr_run, "simclr")


@pytest.mark.parametrize("method", ["barlow_twins", "mae", "ijepa"])
def test_preset_pretrains_end_to_end(method, cifar_root, tmp_path):
    run = tmp_path / "run"
    assert pretrain(method, cifar_root, run) == 0
    check_run_folder(run, method)


def test_dino_preset_with_the_online_monitor(cifar_root, tmp_path):
    """monitor.every_epochs=1: kNN accuracy and RankMe of the teacher after the epoch, logged."""
    run = tmp_path / "run"
    assert pretrain("dino", cifar_root, run, "monitor.every_epochs=1", "monitor.train_subset=32",
                    "monitor.test_subset=20", "monitor.knn_k=5") == 0
    ckpt = check_run_folder(run, "dino")
    epoch = [r for r in read_records(run) if r["type"] == "epoch"][-1]
    assert 0.0 <= epoch["knn_top1"] <= epoch["knn_top5"] <= 100.0
    assert 1.0 <= epoch["rankme"] <= 32                   # at most min(N = 32, D = 512)
    assert ckpt["metrics"]["knn_top1"] == epoch["knn_top1"]


def test_monitor_at_start_logs_the_baseline_and_leaves_training_unchanged(simclr_run, cifar_root,
                                                                           tmp_path):
    """monitor.at_start=true: the random-init encoder's kNN and RankMe as an epoch-0 record,
    measured without touching the RNG, the weights or the BN statistics the run trains with."""
    run = tmp_path / "run"
    assert pretrain("simclr", cifar_root, run, "monitor.every_epochs=1", "monitor.at_start=true",
                    "monitor.train_subset=32", "monitor.test_subset=20", "monitor.knn_k=5") == 0
    epochs = [r for r in read_records(run) if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1] and epochs[0]["step"] == 0
    assert 0.0 <= epochs[0]["knn_top1"] <= 100.0 and epochs[0]["rankme"] >= 1.0
    before, after = epochs[0]["knn_top1"], epochs[1]["knn_top1"]   # issue 29: the gain, last
    last = (run / "train.log").read_text().strip().splitlines()[-1]
    gain = re.escape(f"kNN top-1 {before:.1f}% -> {after:.1f}% ({after - before:+.1f}) in ")
    assert re.search(gain + r"(\d+ min )?\d+ s; chance is 10%$", last), last
    with_baseline = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    without = load_checkpoint(simclr_run / "checkpoints" / "last.pt")["model"]
    assert with_baseline.keys() == without.keys()
    for name, value in without.items():
        assert torch.equal(with_baseline[name], value), name


def test_console_script_reads_the_archive(cifar_archive, tmp_path):
    """The installed ``vissl-lite`` script in a fresh process, DataLoader workers, .tar.gz data."""
    beside_python = str(Path(sys.executable).parent / "vissl-lite")
    script = shutil.which("vissl-lite") or shutil.which(beside_python)
    if script is None:
        pytest.skip("the vissl-lite console script is not installed (pip install -e .)")
    run = tmp_path / "run"
    args = [script, "pretrain", preset("mae"), *SHORT, "data.num_workers=2",
            f"data.root={cifar_archive}", f"output_dir={run}"]
    res = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    check_run_folder(run, "mae")


def test_resume_auto_on_a_finished_run(simclr_run, cifar_root, tmp_path):
    """Same config: nothing left to do, checkpoint and log unchanged; more steps: it continues."""
    run = copy_run(simclr_run, tmp_path)
    before = load_checkpoint(run / "checkpoints" / "last.pt")
    assert pretrain("simclr", cifar_root, run, "resume=auto") == 0
    after = load_checkpoint(run / "checkpoints" / "last.pt")
    assert after["step"] == before["step"] == STEPS
    assert all(torch.equal(after["model"][k], v) for k, v in before["model"].items())
    assert read_records(run) == read_records(simclr_run)

    assert pretrain("simclr", cifar_root, run, "resume=auto", "train.max_steps=4") == 0
    ckpt = check_run_folder(run, "simclr", steps=4)
    assert ckpt["epoch"] == 2
    assert read_records(run)[:len(read_records(simclr_run))] == read_records(simclr_run)
    assert not all(torch.equal(ckpt["model"][k], v) for k, v in before["model"].items())


def test_another_methods_checkpoint_is_refused(simclr_run, cifar_root, tmp_path, capsys):
    """A SimCLR run folder (resume=auto) or checkpoint (resume=PATH) given to the Barlow Twins
    preset: a CheckpointError naming both methods, before anything is written."""
    run = copy_run(simclr_run, tmp_path)
    cfg = load_config(preset("barlow_twins"), [*SHORT, f"data.root={cifar_root}",
                                               f"output_dir={run}", "resume=auto"])
    with pytest.raises(CheckpointError) as err:
        Trainer(cfg).fit()
    message = str(err.value)
    assert "method=simclr" in message and "method=barlow_twins" in message
    assert str(run / "checkpoints" / "last.pt") in message
    assert OmegaConf.load(run / "config.yaml").method.name == "simclr"
    assert read_records(run) == read_records(simclr_run)

    fresh = tmp_path / "fresh"
    code = pretrain("barlow_twins", cifar_root, fresh,
                    f"resume={simclr_run / 'checkpoints' / 'last.pt'}")
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1                  # one line, no traceback
    assert errors[0].startswith("vissl-lite: error: checkpoint")
    assert "method=simclr" in errors[0] and "method=barlow_twins" in errors[0]
    assert not (fresh / "config.yaml").exists()


def test_the_learning_summary_reads_as_one_line():
    from vissl_lite.engine.console import learning_summary

    assert learning_summary({"knn_top1": 30.8}, {"knn_top1": 45.2}, 292.4, 10) == \
        "kNN top-1 30.8% -> 45.2% (+14.4) in 4 min 52 s; chance is 10%"
    assert learning_summary({"knn_top1": 30.0}, {"knn_top1": 29.5}, 9.0, 100) == \
        "kNN top-1 30.0% -> 29.5% (-0.5) in 9 s; chance is 1%"
    assert learning_summary({}, {"knn_top1": 45.2}, 60.0, 10) == ""        # no baseline (resumed)
    assert learning_summary({"knn_top1": 30.8}, {"loss": 4.2}, 60.0, 10) == ""  # last epoch unmonitored
