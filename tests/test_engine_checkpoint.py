"""Checkpoint files: atomic writes, rotation, clear refusals, RNG round trip, load_pretrained."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import _toy
from vissl_lite.engine import checkpoint as ckpt_mod
from vissl_lite.engine import CheckpointError, CheckpointManager, load_checkpoint, load_pretrained
from vissl_lite.rng import rng_state, set_rng_state


def _state(value: float, step: int = 0) -> dict:
    return {"format_version": 1, "method": "toy_contrastive", "backbone": "toy", "step": step,
            "model": {"w": torch.full((1000,), value)}}


def test_interrupted_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    manager.save(_state(1.0, step=10), step=10)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)        # half of the bytes reached the disk ...
        raise KeyboardInterrupt          # ... when the process was interrupted

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        manager.save(_state(2.0, step=20), step=20)
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)

    restored = load_checkpoint(manager.last)
    assert restored["step"] == 10 and torch.equal(restored["model"]["w"], torch.full((1000,), 1.0))
    leftovers = sorted(p.name for p in manager.folder.iterdir())
    assert leftovers == ["last.pt", "step_0000010.pt"]


def test_truncated_or_foreign_file_gives_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    ckpt_mod.atomic_save(_state(1.0), good)
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a vissl_lite checkpoint"):
        load_checkpoint(cut)
    plain = tmp_path / "plain.pt"
    torch.save({"conv.weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a vissl_lite checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_keep_last_and_best(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        manager.save(_state(float(step), step), step, is_best=step == 2)
    assert [p.name for p in manager.step_files()] == ["step_0000002.pt", "step_0000003.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 2
    assert load_checkpoint(tmp_path)["step"] == 3           # a folder holding last.pt


def test_compatibility_check_names_both_runs():
    with pytest.raises(CheckpointError, match=r"method=dino and backbone=vit_small.*"
                                              r"this run uses method=simclr and backbone=resnet18"):
        ckpt_mod.check_compatible({"method": "dino", "backbone": "vit_small"}, "simclr", "resnet18")
    ckpt_mod.check_compatible({"method": "simclr", "backbone": "resnet18"}, "simclr", "resnet18")


def test_find_resume(tmp_path):
    assert ckpt_mod.find_resume(None, tmp_path) is None
    assert ckpt_mod.find_resume("auto", tmp_path) is None      # nothing yet: fresh start
    CheckpointManager(tmp_path / "checkpoints").save(_state(0.0), 0)
    assert ckpt_mod.find_resume("auto", tmp_path) == tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match="resume=/nope.pt: no checkpoint there"):
        ckpt_mod.find_resume("/nope.pt", tmp_path)


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt_mod.atomic_save({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])


def test_load_pretrained_rebuilds_from_the_checkpoint_config(tmp_path, monkeypatch):
    import vissl_lite.methods as methods

    _toy.run(tmp_path / "run", "train.max_steps=2")
    monkeypatch.setattr(methods, "build_backbone_from_config",
                        lambda cfg, image_size=None: _toy.ToyEncoder(), raising=False)
    method, cfg = load_pretrained(tmp_path / "run" / "checkpoints" / "last.pt")
    saved = load_checkpoint(tmp_path / "run")["model"]
    assert cfg.method.name == "toy_contrastive" and not method.training
    assert all(torch.equal(v, saved[k]) for k, v in method.state_dict().items())
    assert int(method.steps_done) == 2
