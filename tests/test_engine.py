"""The Trainer on a toy method: exact resume, outputs, schedules in the log, failure handling."""
from __future__ import annotations

import json

import pytest
import torch

import _toy
from vissl_lite.config import ConfigError
from vissl_lite.engine import CheckpointError, NonFiniteLossError, load_checkpoint
from vissl_lite.engine.runtime import micro_batch_size
from vissl_lite.schedules import warmup_cosine_schedule


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_n_steps_equal_half_resume_half_bitwise(tmp_path):
    common = ["train.epochs=3", "checkpoint.every_steps=3", "checkpoint.keep_last=10",
              "method.dropout=0.2", "optim.name=lars"]
    _toy.run(tmp_path / "straight", *common)
    half = tmp_path / "straight" / "checkpoints" / "step_0000006.pt"   # mid-epoch (4 steps/epoch)
    assert load_checkpoint(half)["batch_in_epoch"] == 2
    result = _toy.run(tmp_path / "resumed", *common, f"resume={half}")

    straight, resumed = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert result["step"] == straight["step"] == resumed["step"] == 12
    assert _same_tensors(straight["model"], resumed["model"])          # incl. EMA target, buffer
    assert int(resumed["model"]["steps_done"]) == 12
    assert not _same_tensors(straight["model"], load_checkpoint(half)["model"])
    mu = lambda c: [s["mu"] for s in c["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(mu(straight), mu(resumed)))


def test_run_folder_metrics_and_logged_schedule(tmp_path):
    result = _toy.run(tmp_path, "logger.plot=true", "optim.min_lr=0.001")
    assert (tmp_path / "config.yaml").is_file()
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(1, 9)) and [r["epoch"] for r in epochs] == [1, 2]
    for r in steps:  # 8 steps in all, warmup 0.5 epoch = 2 steps, lr 0.1 -> 0.001
        assert r["lr"] == pytest.approx(warmup_cosine_schedule(r["step"] - 1, 8, 2, 0.1, 0.001))
        assert r["img_per_s"] > 0 and r["loss"] > 0 and "z_std" in r
    assert epochs[-1]["epoch_loss"] == pytest.approx(sum(r["loss"] for r in steps[4:]) / 4)
    assert result["step"] == 8 and result["loss"] == pytest.approx(epochs[-1]["epoch_loss"])
    assert not (tmp_path / "checkpoints" / "best.pt").exists()    # best.pt follows a monitor metric


def test_non_finite_loss_stops_with_step_and_last_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError) as err:
        _toy.run(tmp_path, "method.nan_at_step=5", "checkpoint.every_steps=2")
    message = str(err.value)
    assert "non-finite loss=nan at step 6" in message
    assert str(tmp_path / "checkpoints" / "last.pt") in message
    assert "optim.lr" in message and "train.skip_nonfinite=true" in message
    assert load_checkpoint(tmp_path)["step"] == 4


def test_skip_non_finite_steps_when_asked(tmp_path):
    result = _toy.run(tmp_path, "method.nan_at_step=5", "train.skip_nonfinite=true")
    assert result["skipped_steps"] == 1 and result["step"] == 8
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path)["model"].values()
               if v.is_floating_point())


def test_batch_size_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="needs at least 4 samples per loss computation"):
        _toy.run(tmp_path, "train.batch_size=6", "train.accumulate=2")
    with pytest.raises(ConfigError, match="must split evenly over 1 rank.*multiple of 4"):
        _toy.run(tmp_path, "train.batch_size=10", "train.accumulate=4")
    cfg = _toy.toy_config(tmp_path, "method.batch_norm=true")
    with pytest.raises(ConfigError, match="batch norm needs >= 2 samples per rank.*16 rank"):
        micro_batch_size(cfg, _toy.build_toy(cfg), world=16)


def test_resume_refuses_another_backbone(tmp_path):
    _toy.run(tmp_path, "train.max_steps=1")
    with pytest.raises(CheckpointError, match="backbone=toy, but this run uses .*backbone=toy_wide"):
        _toy.run(tmp_path, "backbone.name=toy_wide", "resume=auto")


def test_accumulation_bf16_and_sgd_run(tmp_path):
    result = _toy.run(tmp_path, "train.accumulate=2", "train.precision=bf16", "train.max_steps=3",
                      "train.grad_clip=1.0", "method.batch_norm=true")
    assert result["step"] == 3 and result["epoch"] == 0
    ckpt = load_checkpoint(tmp_path)
    # 3 steps x 2 micro-batches x 2 views (one backbone pass each)
    assert ckpt["batch_in_epoch"] == 3 and ckpt["model"]["backbone.norm.num_batches_tracked"] == 12


def test_default_wandb_offline_run_keeps_its_id_on_resume(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    _toy.run(tmp_path, "logger.wandb.mode=offline", "train.max_steps=2")
    run_id = (tmp_path / "wandb" / "run_id").read_text().strip()
    first = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(first) == 1 and list(first[0].glob("run-*.wandb"))
    _toy.run(tmp_path, "logger.wandb.mode=offline", "train.max_steps=4", "resume=auto")
    assert (tmp_path / "wandb" / "run_id").read_text().strip() == run_id
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))) == 2
    assert load_checkpoint(tmp_path)["step"] == 4


def test_non_finite_loss_found_between_log_steps_is_caught_before_a_save(tmp_path):
    """With log_every=4 the loss is read back at the checkpoint after step 6, not after each step:
    the run still names step 6 (1-based, as in metrics.jsonl) and never writes a checkpoint with the NaN weights."""
    with pytest.raises(NonFiniteLossError, match="non-finite loss=nan at step 6"):
        _toy.run(tmp_path, "method.nan_at_step=5", "checkpoint.every_steps=2", "train.log_every=4")
    last = load_checkpoint(tmp_path)
    assert last["step"] == 4
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "step"] == [4]
