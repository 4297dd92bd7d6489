"""``auto`` config values, resolved once for the device a run actually uses: fast by default.

    resolve_auto(cfg, device) -> cfg with every ``auto`` replaced by a concrete value

===========================  ==============================================  =======================
key                          on CUDA                                         on CPU (today's values)
===========================  ==============================================  =======================
``train.precision``          ``bf16`` where the GPU supports it, else fp32   ``fp32``
``train.channels_last``      ``true`` for convolutional backbones (ResNet)   ``false``
``train.compile``            ``true`` when the method's ``compile_ok`` is    ``false``
                             set (its step compiles as one graph; tests/
                             test_step_hygiene.py checks every method)
``augment.path``             ``gpu`` when the training split as uint8         ``cpu``
                             (N x 3 x H x W bytes) fits in a quarter of the
                             free GPU memory and half the host memory; else
                             ``cpu``. N is ``data.subset``, the known size of
                             a torchvision data set, or ``num_images``; an
                             unknown size (a folder) stays on ``cpu``.
``data.num_workers``         cores per local rank, at most 12                cores, at most 4
``train.reuse_host_memory``  ``false`` (the step does not run on host      ``true`` (glibc: the
                             memory)                                         memory a step frees is
                                                                             reused; vissl_lite/
                                                                             host_memory.py)
===========================  ==============================================  =======================

A custom data set or transform handed to the Trainer (``custom_data=True``) keeps the CPU path.
The function is pure given a :class:`DeviceInfo` (tests pass a fake one); ``device_info`` reads
the real device once. Layer: imports only the config layer, the registry and torch.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from vissl_lite.config import data_image_size
from vissl_lite.registry import BACKBONES, METHODS

AUTO = "auto"
#: the keys that may be ``auto``
AUTO_KEYS = ("train.precision", "train.channels_last", "train.compile", "augment.path",
             "data.num_workers", "train.reuse_host_memory")
#: training-split sizes of the data sets whose size the config alone tells
KNOWN_TRAIN_SIZES = {("cifar10", "train"): 50_000, ("cifar100", "train"): 50_000,
                     ("stl10", "train"): 5_000, ("stl10", "unlabeled"): 100_000,
                     ("stl10", "train+unlabeled"): 105_000}
GPU_DATA_FRACTION = 0.25     # of free GPU memory the uint8 split may take (the rest: the model)
HOST_DATA_FRACTION = 0.5     # of host memory (the split is decoded on the host first)


@dataclass(frozen=True)
class DeviceInfo:
    """What the resolution needs to know about the machine."""

    type: str = "cpu"                 # cpu | cuda
    bf16: bool = False                # the GPU computes in bfloat16 natively (Ampere or later)
    free_bytes: int = 0               # free GPU memory
    host_bytes: int = 0               # host memory
    cpu_count: int = 1
    local_world_size: int = 1         # processes per node (torchrun)


def _host_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def device_info(device: torch.device | str) -> DeviceInfo:
    """Probe ``device`` (once per run, before training: these calls may synchronise)."""
    device = torch.device(device)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type != "cuda":
        return DeviceInfo("cpu", host_bytes=_host_bytes(), cpu_count=cpus or 1,
                          local_world_size=local_world)
    free, _ = torch.cuda.mem_get_info(device)
    return DeviceInfo("cuda", bf16=torch.cuda.is_bf16_supported(), free_bytes=int(free),
                      host_bytes=_host_bytes(), cpu_count=cpus or 1, local_world_size=local_world)


def train_split_size(cfg: Any) -> Optional[int]:
    """Images in the training split as far as the config tells (None: unknown without reading)."""
    data = cfg.data
    if data.get("subset"):
        return int(data.subset)
    return KNOWN_TRAIN_SIZES.get((str(data.name), str(data.train_split)))


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.lower() == AUTO


def _backbone_family(name: str) -> Optional[str]:
    try:
        return getattr(BACKBONES.get(name), "family", None)
    except Exception:  # an unknown name fails later with the registry's own message
        return None


def _method_compiles(name: str) -> bool:
    try:
        return bool(getattr(METHODS.get(name), "compile_ok", False))
    except Exception:
        return False


def resolve_auto(cfg: DictConfig, device: torch.device | str | DeviceInfo, *,
                 num_images: Optional[int] = None, custom_data: bool = False) -> DictConfig:
    """A copy of ``cfg`` with every ``auto`` of ``AUTO_KEYS`` resolved for ``device`` (a torch
    device, probed with ``device_info``, or a ``DeviceInfo``). Values other than ``auto`` are
    kept; ``cfg`` itself is not modified. ``num_images`` overrides the split size the config
    tells; ``custom_data`` (a data set or transform passed in Python) keeps the CPU path."""
    info = device if isinstance(device, DeviceInfo) else device_info(device)
    cuda = info.type == "cuda"
    values: Dict[str, Any] = {}
    get = lambda key: OmegaConf.select(cfg, key)  # noqa: E731

    if _is_auto(get("train.precision")):
        values["train.precision"] = "bf16" if cuda and info.bf16 else "fp32"
    if _is_auto(get("train.channels_last")):
        values["train.channels_last"] = cuda and _backbone_family(cfg.backbone.name) == "resnet"
    if _is_auto(get("train.compile")):
        values["train.compile"] = cuda and _method_compiles(cfg.method.name)
    if _is_auto(get("augment.path")):
        n = num_images if num_images is not None else train_split_size(cfg)
        size = data_image_size(cfg)
        need = None if n is None else n * 3 * size * size
        fits = (need is not None and need <= GPU_DATA_FRACTION * info.free_bytes
                and (not info.host_bytes or need <= HOST_DATA_FRACTION * info.host_bytes))
        values["augment.path"] = "gpu" if cuda and fits and not custom_data else "cpu"
    if _is_auto(get("data.num_workers")):
        per_rank = max(1, info.cpu_count // max(1, info.local_world_size))
        values["data.num_workers"] = min(per_rank, 12 if cuda else 4)
    if _is_auto(get("train.reuse_host_memory")):
        values["train.reuse_host_memory"] = not cuda

    return with_values(cfg, values)


def with_values(cfg: DictConfig, values: Dict[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with ``values`` (dotted keys) set; ``cfg`` itself when there are none."""
    if not values:
        return cfg
    out = copy.deepcopy(cfg)
    readonly = OmegaConf.is_readonly(cfg)
    OmegaConf.set_readonly(out, False)
    for key, value in values.items():
        OmegaConf.update(out, key, value, merge=False)
    OmegaConf.set_readonly(out, readonly)
    return out


def describe_auto(before: DictConfig, after: DictConfig) -> str:
    """One line naming what ``auto`` resolved to, e.g. ``auto: train.precision=bf16, ...``."""
    parts = [f"{key}={OmegaConf.select(after, key)}" for key in AUTO_KEYS
             if _is_auto(OmegaConf.select(before, key))]
    return "auto: " + ", ".join(parts) if parts else ""
