"""View pipelines for self-supervised methods (see DESIGN.md and docs/interfaces.md).

- ``ViewSpec`` (spec.py): what a method asks for: a recipe and its numbers of global/local views.
- ``resolve_views`` (recipes.py): the recipe's published defaults, overridden by the config.
- ``build_cpu_views`` (cpu.py): PIL ops on uint8 images, one image at a time, in DataLoader workers.
- ``build_gpu_views`` (gpu.py): whole uint8 batches on the device, per-sample random parameters
  (crop boxes: boxes.py; colour ops: color.py; label-preserving crops: crops.py).
- ``random_patch_mask`` / ``block_masks`` / ``BlockMaskSampler`` (masks.py): MAE and I-JEPA
  patch masks, fixed shapes per run, sampled on the device.
"""
from vissl_lite.augment.cpu import CPUViews, build_cpu_views
from vissl_lite.augment.gpu import GPUViews, build_gpu_views, sample_crop_boxes
from vissl_lite.augment.masks import (BlockMasks, BlockMaskSampler, MaskError, PatchMask,
                                      block_masks, random_patch_mask)
from vissl_lite.augment.recipes import (AugmentConfigError, ViewParams, default_mean_std,
                                        resolve_views)
from vissl_lite.augment.spec import RECIPES, ViewSpec

__all__ = [
    "ViewSpec", "RECIPES", "ViewParams", "resolve_views", "default_mean_std", "AugmentConfigError",
    "build_cpu_views", "CPUViews", "build_gpu_views", "GPUViews", "sample_crop_boxes",
    "random_patch_mask", "block_masks", "BlockMaskSampler", "PatchMask", "BlockMasks",
    "MaskError",
]
