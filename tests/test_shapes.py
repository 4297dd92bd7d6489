"""Load-time shape rules (vissl_lite/shapes.py): every preset passes them on 1 and 8 ranks, and a
config that breaks one stops in ``load_config`` (before any model or data is built) with one line
naming the key and the fix."""
from __future__ import annotations

import pytest

from vissl_lite.config import global_view_size, load_config
from vissl_lite.errors import ConfigError
from vissl_lite.presets import list_presets
from vissl_lite.shapes import RunShape, check_run_shape

PRESETS = list(list_presets())


@pytest.fixture(autouse=True)
def _one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_passes_the_load_time_checks_on_1_and_8_ranks(preset, tmp_path):
    cfg = load_config(preset, [f"data.root={tmp_path}"])
    for world in (1, 8):
        shape = check_run_shape(cfg, global_view_size(cfg), world=world)
        assert shape.per_rank * world * shape.accumulate == cfg.train.batch_size


def _load_error(preset, *overrides, world: int = 1, monkeypatch=None) -> str:
    if world > 1:
        monkeypatch.setenv("WORLD_SIZE", str(world))
    with pytest.raises(ConfigError) as info:
        load_config(preset, ["data.root=/nonexistent", *overrides])
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_swav_imagenet_queue_that_crashed_at_step_0_now_fails_at_load():
    """3840 rows (480 per rank on 8 ranks) cannot take a per-rank batch of 512; the reference
    truncates the queue to a multiple of the global batch (3840 -> 0 at batch 4096)."""
    message = _load_error("swav/imagenet_resnet50", "method.queue_length=3840")
    assert message == ("method.queue_length=3840 must be 0 or a multiple of the global batch per "
                       "loss, train.batch_size / train.accumulate = 4096; set "
                       "method.queue_length=0")
    assert "method.queue_length=3584 or 0" in _load_error(
        "swav/cifar10_resnet18", "method.queue_length=3840")
    load_config("swav/cifar10_resnet18", ["data.root=/x", "method.queue_length=1024"])


def test_each_method_rule_fails_at_load_with_one_line(monkeypatch):
    assert "method.w_size=128" in _load_error("wmse/cifar10_resnet18", "train.batch_size=320")
    assert "set method.input_size=32" in _load_error("cnnjepa/cifar10_resnet18",
                                                     "method.input_size=224")
    # an add-on reaches the rules of the method it wraps
    assert "method.queue_length=100" in _load_error(
        None, "method.name=essl", "method.base.name=swav", "method.base.queue_length=100")
    # the generic rules: the smallest batch and the split over ranks (WORLD_SIZE from torchrun)
    assert "needs at least 2 samples" in _load_error("simclr/cifar10_resnet18",
                                                     "train.batch_size=2", "train.accumulate=2")
    assert "use a multiple of 8" in _load_error("simclr/cifar10_resnet18", "train.batch_size=100",
                                                world=8, monkeypatch=monkeypatch)


def test_run_shape_splits_the_global_batch():
    shape = RunShape(batch_size=4096, accumulate=2, world=8, global_size=224)
    assert (shape.per_loss, shape.per_rank) == (2048, 256)
    with pytest.raises(ConfigError, match="train.accumulate must be >= 1"):
        RunShape(batch_size=8, accumulate=0, world=1)
