"""The augmentation a run uses, written into its config: ``augment.*`` nulls become the recipe's
values for the input size, so ``config.yaml`` and the checkpoint say what the views were drawn
with (SimCLR at 32 px: ``jitter: [0.8, 0.8, 0.8, 0.2]``, ``jitter_strength: 0.5``,
``blur_p: [0.0]``, CIFAR-10's mean and std, ...) instead of ``null``.

Resolving the written values again gives the same views (tested), so a run restarted from its
``config.yaml`` augments as the original did. The sizes and the number of local crops stay null:
they follow ``data.image_size`` and the method's own settings (e.g. ``method.num_local_crops``),
recorded in their sections, and a config reused at another size keeps working. The local views'
keys are written only for a method that has local views; the Gaussian-centred crop's keys only
with such a crop.
"""
from __future__ import annotations

from typing import Any, Dict

from omegaconf import DictConfig

from vissl_lite.augment.recipes import resolve_settings
from vissl_lite.augment.spec import ViewSpec
from vissl_lite.autoconf import with_values
from vissl_lite.config import data_image_size

#: follow other sections (data.image_size, the method's local crops): never written
DERIVED = ("num_local", "global_size", "local_size")
LOCAL_ONLY = ("local_scale", "local_blur_p")


def augment_values(spec: ViewSpec, aug_cfg: Any, image_size: int) -> Dict[str, Any]:
    """The resolved ``augment`` values as config values (lists; one value for a per-view
    probability that is the same for every view)."""
    settings = resolve_settings(spec, aug_cfg, image_size)
    out: Dict[str, Any] = {}
    for key, value in settings.items():
        if key in DERIVED or value is None or (key in LOCAL_ONLY and not settings["num_local"]):
            continue
        if isinstance(value, (tuple, list)):
            value = [float(v) for v in value]
            if key in ("blur_p", "solarize_p") and len(set(value)) == 1:
                value = value[:1]
        out[key] = value
    return out


def with_resolved_augment(cfg: DictConfig, spec: ViewSpec) -> DictConfig:
    """A copy of the experiment config ``cfg`` whose null ``augment`` values hold what the
    training views of a method with ``spec`` use; values the config sets stay as written."""
    values = augment_values(spec, cfg.augment, data_image_size(cfg))
    return with_values(cfg, {f"augment.{k}": v for k, v in values.items()
                             if cfg.augment.get(k) is None})
