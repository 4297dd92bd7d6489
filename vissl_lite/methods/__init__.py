"""Method plugins, one file each, found by discovery.

Every public module of this package is imported the first time ``vissl_lite.registry.METHODS`` is
used; a module that defines a ``Method`` subclass decorated with ``@METHODS.register("name")`` is
a method, and ``configs/<name>/*.yaml`` are its presets. Nothing else lists methods by hand:
``from vissl_lite.methods import SimCLR`` looks the class up among the registered ones.
"""
from __future__ import annotations

from typing import List

from torch import nn

from vissl_lite.backbones.specs import build_backbone_for_run
from vissl_lite.augment import default_mean_std
from vissl_lite.config import global_view_size
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput, check_backbone_family
from vissl_lite.registry import METHODS, add_plugins


def build_method(cfg) -> Method:
    """Build backbone + method from a full experiment config (``vissl_lite.config.load_config``);
    the plugin folders it records are searched (a checkpoint of a plugin method loads anywhere)."""
    add_plugins(list(cfg.get("plugins") or []))
    cls = METHODS.get(cfg.method.name)
    image_size = global_view_size(cfg)
    backbone = build_backbone_for_run(cfg.backbone, image_size=image_size)
    check_backbone_family(cls, backbone, cfg.backbone.name)
    method = cls(backbone, cfg.method)
    _check_local_crops(method, backbone, cfg, image_size)
    if hasattr(method, "input_mean_std"):  # a method that re-normalises the views (distill)
        method.input_mean_std = view_mean_std(cfg, image_size)
    return method


def view_mean_std(cfg, image_size: int):
    """The normalisation of the views the loader gives a method: ``augment.mean/std``, else the
    pipeline's defaults for the view size (the loader passes no data set name)."""
    mean, std = default_mean_std(None, image_size)
    augment = cfg.get("augment") or {}
    return (tuple(float(v) for v in (augment.get("mean") or mean)),
            tuple(float(v) for v in (augment.get("std") or std)))


def _check_local_crops(method: Method, backbone: nn.Module, cfg, image_size: int) -> None:
    same_size = cfg.augment.local_size is not None and cfg.augment.local_size == image_size
    if method.views.num_local and not same_size and getattr(backbone, "any_img_size", True) is False:
        raise ConfigError(f"method '{cfg.method.name}' feeds {method.views.num_local} local crops of "
                          f"another size than the global ones, but backbone {cfg.backbone.name} "
                          f"takes one input size; set backbone.dynamic_img_size=true (or "
                          f"method.num_local_crops=0)")


def method_classes() -> List[type]:
    """Every registered method class, sorted by registered name."""
    return [cls for _, cls in METHODS.items()]


def __getattr__(name: str):
    for cls in method_classes():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted([*globals(), *(cls.__name__ for cls in method_classes())])
