"""What a run shows and keeps: plain progress lines when stderr is not a terminal, ``train.log``
(everything the run prints, rank 0), ``curves.png`` with a panel for every logged metric, and
``config.yaml`` with the augmentation values the views were drawn with instead of nulls."""
from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import _toy
from vissl_lite.augment.recipes import resolve_views
from vissl_lite.augment.resolved import augment_values
from vissl_lite.augment.spec import RECIPES, ViewSpec
from vissl_lite.cli import main
from vissl_lite.engine.console import _StderrHandler, log
from vissl_lite.engine.curves import draw_curves, metric_series
from vissl_lite.engine.logger import read_jsonl
from vissl_lite.errors import NonFiniteLossError

REPO = Path(__file__).resolve().parents[1]
PRESET = str(REPO / "configs/simclr/cifar10_resnet18.yaml")
SHORT = ["train.device=cpu", "train.batch_size=8", "train.epochs=1", "train.log_every=1",
         "data.subset=16", "data.num_workers=0", "logger.wandb.mode=disabled",
         "logger.progress=true", "logger.progress_every_s=0", "monitor.every_epochs=1",
         "monitor.train_subset=64", "monitor.test_subset=32", "monitor.online_linear=true",
         "checkpoint.save_best=false"]                      # 2 steps
PROGRESS = re.compile(r"^\[vissl_lite\] step (\d+)/2 \(\d+%\), loss [\d.]+, lr [\d.e-]+, "
                      r"img_s \d+, [\d.e+-]+ steps/s, eta \d+m\d\ds$")


@pytest.fixture(scope="module")
def real_run(cifar_root, tmp_path_factory):
    """A 2-step SimCLR run with the online monitor (kNN, RankMe, online linear head) on, its
    stderr captured (not a terminal), as a batch job's or a ``| tee`` run's would be."""
    out = tmp_path_factory.mktemp("console") / "run"
    capture, err, handler = pytest.MonkeyPatch(), io.StringIO(), _StderrHandler()
    capture.setattr(sys, "stderr", err)
    log.addHandler(handler)   # what setup_console_logging adds outside pytest (whose root logger
    threads = torch.get_num_threads()   # has handlers of its own, so that nothing is added there)
    torch.set_num_threads(1)
    try:
        code = main(["pretrain", PRESET, *SHORT, f"data.root={cifar_root}", f"output_dir={out}"])
    finally:
        torch.set_num_threads(threads)
        log.removeHandler(handler)
        capture.undo()
    assert code == 0, err.getvalue()[-3000:]
    return out, err.getvalue()


def test_without_a_terminal_progress_is_plain_lines(real_run):
    _, err = real_run
    assert "\r" not in err and "\x1b[" not in err          # no bar redraws, no cursor moves
    steps = [int(m.group(1)) for m in map(PROGRESS.match, err.splitlines()) if m]
    assert steps == [1, 2]                                   # progress_every_s=0: every log step
    assert "extracting features" not in err                  # the monitor's bar is off as well


def test_train_log_keeps_everything_the_run_printed(real_run):
    out, err = real_run
    kept = (out / "train.log").read_text().splitlines()
    printed = [line[len("[vissl_lite] "):] for line in err.splitlines()
               if line.startswith("[vissl_lite] ")]
    assert len(printed) >= 5
    for line in printed:                                     # each with a time stamp before it
        assert any(k.endswith(" " + line) for k in kept), line
    assert any("world size 1, batch 8 per rank = 8 global" in k for k in kept)
    assert kept[-1].endswith(f"done: 2 steps; checkpoint {out / 'checkpoints' / 'last.pt'}")


def test_curves_have_a_panel_for_every_logged_metric(real_run):
    out, _ = real_run
    records = read_jsonl(out / "metrics.jsonl")
    logged = {k for r in records for k, v in r.items()
              if k not in ("type", "step", "epoch") and isinstance(v, (int, float))}
    assert {"loss", "grad_norm", "lr", "wd", "img_per_s", "pos_sim", "epoch_loss", "knn_top1",
            "knn_top5", "rankme", "online_linear_top1"} <= logged
    fig = draw_curves(records)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(panels) == logged
    for name, (_, steps, values) in metric_series(records).items():
        line = panels[name].get_lines()[0]
        assert list(line.get_xdata()) == steps and list(line.get_ydata()) == pytest.approx(values)
    knn = [(r["step"], r["knn_top1"]) for r in records if "knn_top1" in r]
    assert metric_series(records)["knn_top1"] == ("epoch", [s for s, _ in knn], [v for _, v in knn])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_yaml_records_the_augmentation_the_views_used(real_run):
    out, _ = real_run
    augment = OmegaConf.load(out / "config.yaml").augment
    # SimCLR at 32 px (augment/recipes.py): jitter (0.8, 0.8, 0.8, 0.2) at strength 0.5 with
    # p 0.8, grayscale 0.2, no blur on small inputs, crop scale (0.08, 1), CIFAR-10 statistics
    assert augment.jitter == [0.8, 0.8, 0.8, 0.2] and augment.jitter_strength == 0.5
    assert augment.jitter_p == 0.8 and augment.grayscale_p == 0.2 and augment.flip_p == 0.5
    assert augment.blur_p == [0.0] and augment.solarize_p == [0.0]
    assert augment.global_scale == [0.08, 1.0] and augment.crop == "rrc"
    assert augment.mean == pytest.approx([0.4914, 0.4822, 0.4465])
    assert augment.std == pytest.approx([0.2470, 0.2435, 0.2616])
    assert augment.global_size is None and augment.num_local is None   # data / method keep these
    assert augment.local_scale is None                                 # SimCLR has no local views


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("size", [32, 96, 224])
def test_the_recorded_augmentation_resolves_to_the_same_views(recipe, size):
    one_view = [ViewSpec(recipe, 1, 0)] if recipe in ("simclr", "mae", "ijepa") else []
    for spec in (ViewSpec(recipe, 2, 0), ViewSpec(recipe, 2, 3), *one_view):
        values = augment_values(spec, None, size)
        assert None not in values.values()
        assert resolve_views(spec, values, size) == resolve_views(spec, None, size)
    chosen = {"jitter_strength": 1.0, "blur_p": [0.3, 0.1], "crop": "gcc", "crop_frac": 0.5,
              "crop_alpha": 0.2}
    spec = ViewSpec(recipe, 2, 2)
    values = augment_values(spec, chosen, size)
    assert values["blur_p"] == [0.3, 0.1] and values["crop_frac"] == 0.5
    assert resolve_views(spec, values, size) == resolve_views(spec, chosen, size)


# ---------------------------------------------------------------- train.log with the toy method
def test_train_log_ends_with_the_error_and_continues_on_resume(tmp_path):
    with pytest.raises(NonFiniteLossError) as stopped:
        _toy.run(tmp_path, "method.nan_at_step=5", "checkpoint.every_steps=2")
    log = (tmp_path / "train.log").read_text()
    assert log.rstrip().splitlines()[-1].endswith(f"error: {stopped.value}")
    _toy.run(tmp_path, "resume=auto", "checkpoint.every_steps=2")
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert lines[:len(log.splitlines())] == log.splitlines()          # appended, not replaced
    assert any("resumed from" in line for line in lines)
    assert lines[-1].endswith(f"done: 8 steps; checkpoint {tmp_path / 'checkpoints' / 'last.pt'}")
