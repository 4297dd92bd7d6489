"""``auto`` config values (vissl_lite/autoconf.py): today's values on CPU, the fast ones on a GPU."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vissl_lite.autoconf import AUTO_KEYS, DeviceInfo, describe_auto, resolve_auto
from vissl_lite.config import ConfigError, default_config, load_config

REPO = Path(__file__).resolve().parents[1]
CPU = DeviceInfo("cpu", host_bytes=16 << 30, cpu_count=2)
H100 = DeviceInfo("cuda", bf16=True, free_bytes=80 << 30, host_bytes=128 << 30, cpu_count=16)
OLD_GPU = DeviceInfo("cuda", bf16=False, free_bytes=8 << 30, host_bytes=32 << 30, cpu_count=8)
ALL_AUTO = [f"{k}=auto" for k in AUTO_KEYS]


def auto_config(method="simclr", *extra):
    return default_config(method, [*ALL_AUTO, "data.name=cifar10", *extra])


def values(cfg):
    return {k: OmegaConf.select(cfg, k) for k in AUTO_KEYS}


def test_cpu_gives_todays_values():
    out = resolve_auto(auto_config(), CPU)
    assert values(out) == {"train.precision": "fp32", "train.channels_last": False,
                           "train.compile": False, "augment.path": "cpu", "data.num_workers": 2,
                           "train.reuse_host_memory": True}


def test_a_gpu_gives_the_fast_values():
    out = resolve_auto(auto_config(), H100)
    assert values(out) == {"train.precision": "bf16", "train.channels_last": True,
                           "train.compile": True, "augment.path": "gpu", "data.num_workers": 12,
                           "train.reuse_host_memory": False}
    vit = resolve_auto(auto_config("mae", "backbone.name=vit_tiny_patch4"), H100)
    assert vit.train.channels_last is False and vit.train.compile is True  # channels_last: convnets


def test_gpu_without_bf16_or_memory_or_known_size_falls_back():
    out = resolve_auto(auto_config(), OLD_GPU)
    assert out.train.precision == "fp32" and out.augment.path == "gpu"  # 150 MB fits in 2 GB
    big = resolve_auto(auto_config("simclr", "data.image_size=224", "data.name=imagefolder",
                                   "data.subset=1000000"), OLD_GPU)
    assert big.augment.path == "cpu"                                   # 150 GB does not
    unknown = resolve_auto(auto_config("simclr", "data.name=imagefolder"), H100)
    assert unknown.augment.path == "cpu"                               # a folder: size unknown
    assert resolve_auto(auto_config("simclr", "data.name=imagefolder"), H100,
                        num_images=50_000).augment.path == "gpu"
    assert resolve_auto(auto_config(), H100, custom_data=True).augment.path == "cpu"
    two_ranks = DeviceInfo(**{**H100.__dict__, "local_world_size": 8})
    assert resolve_auto(auto_config(), two_ranks).data.num_workers == 2


def test_explicit_values_are_kept_and_the_input_is_not_modified():
    cfg = default_config("simclr", ["train.precision=fp16", "train.channels_last=false",
                                    "train.compile=true", "augment.path=cpu",
                                    "data.num_workers=3", "train.reuse_host_memory=false"])
    out = resolve_auto(cfg, H100)
    assert values(out) == values(cfg) and describe_auto(cfg, out) == ""
    auto = auto_config()
    resolved = resolve_auto(auto, H100)
    assert auto.train.precision == "auto" and OmegaConf.is_readonly(resolved)
    line = describe_auto(auto, resolved)
    assert line.startswith("auto: ") and "train.precision=bf16" in line and "augment.path=gpu" in line


def test_base_presets_say_auto_and_bad_values_are_refused():
    cfg = load_config(REPO / "configs/simclr/cifar10_resnet18.yaml", require=())
    assert all(OmegaConf.select(cfg, k) == "auto" for k in AUTO_KEYS)
    for key, bad in (("train.precision", "fast"), ("train.channels_last", "maybe"),
                     ("data.num_workers", "many"), ("augment.path", "tpu"),
                       ("train.reuse_host_memory", "sometimes")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            default_config("simclr", [f"{key}={bad}"])
    assert default_config("simclr", ["train.compile=true"]).train.compile is True
