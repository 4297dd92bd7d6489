"""What a run does when the world around it goes wrong: another run already in the folder, a
folder that cannot be written, a disk that fills up, config values that cannot work, and a loss
that never becomes finite again."""
from __future__ import annotations

import errno
import os

import pytest
import torch

import _toy
from vissl_lite.config import ConfigError
from vissl_lite.engine import CheckpointError, NonFiniteLossError, Trainer, load_checkpoint
from vissl_lite.engine import checkpoint as ckpt_mod
from vissl_lite.methods.base import StepOutput


def test_a_new_run_refuses_a_folder_that_holds_another_run(tmp_path):
    _toy.run(tmp_path, "train.max_steps=2")
    first = load_checkpoint(tmp_path)
    with pytest.raises(ConfigError) as err:
        _toy.run(tmp_path, "train.max_steps=3")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message
    assert "resume=auto" in message and "output_dir" in message and "overwrite=true" in message
    assert torch.equal(load_checkpoint(tmp_path)["model"]["steps_done"], first["model"]["steps_done"])

    assert _toy.run(tmp_path, "train.max_steps=3", "resume=auto")["step"] == 3
    (tmp_path / "notes.txt").write_text("mine")
    result = _toy.run(tmp_path, "train.max_steps=1", "overwrite=true")
    assert result["step"] == 1 and load_checkpoint(tmp_path)["step"] == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt",
                                                                           "step_0000001.pt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"      # only the run's own files go


def test_an_output_dir_under_a_file_is_named_before_training(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"output_dir=.*file/run cannot be written.*writable"):
        _toy.run(tmp_path / "file" / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_dir_is_named_before_training(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="cannot be written"):
            _toy.run(tmp_path / "run")
    finally:
        tmp_path.chmod(0o755)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    real_save = torch.save
    saves = []

    def fills_the_disk(obj, f, *args, **kwargs):
        saves.append(obj["step"])
        if len(saves) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod.torch, "save", fills_the_disk)
    with pytest.raises(CheckpointError) as err:
        _toy.run(tmp_path, "checkpoint.every_steps=2")
    message = str(err.value)
    assert "\n" not in message and "No space left on device" in message
    assert str(tmp_path / "checkpoints" / "step_0000004.pt") in message
    assert "output_dir" in message and "resume=auto" in message
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt",
                                                                           "step_0000002.pt"]
    assert load_checkpoint(tmp_path)["step"] == 2


@pytest.mark.parametrize("override", ["optim.lr=-0.1", "optim.weight_decay=-0.01",
                                      "data.num_workers=-1", "train.epochs=0",
                                      "train.max_steps=0", "data.image_size=0"])
def test_values_of_the_right_type_but_out_of_range_are_refused_at_load(tmp_path, override):
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=rf"invalid value {key}={value}: it must be >= "):
        _toy.toy_config(tmp_path, override)


def test_best_metric_must_be_a_monitor_metric(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint.best_metric='loss': choose one of knn_top1"):
        _toy.toy_config(tmp_path, "checkpoint.best_metric=loss")


class AlwaysNaN(_toy.ToyContrastive):
    def training_step(self, batch) -> StepOutput:
        out = super().training_step(batch)
        return StepOutput(out.loss * float("nan"), out.metrics)


def test_skipping_non_finite_steps_gives_up_after_a_run_of_them(tmp_path):
    cfg = _toy.toy_config(tmp_path, "train.skip_nonfinite=true", "train.max_consecutive_skips=3",
                          "train.epochs=4")
    method = AlwaysNaN(_toy.ToyEncoder(), cfg.method)
    with pytest.raises(NonFiniteLossError) as err:
        Trainer(cfg, method=method, dataset=_toy.ToyImages(), transform=_toy.toy_views).fit()
    message = str(err.value)
    assert message.startswith("3 steps in a row were skipped (train.max_consecutive_skips=3)")
    assert "non-finite loss=nan at step 3 " in message
