"""View pipelines for self-supervised methods (see docs/architecture.md and docs/interfaces.md).

- ``ViewSpec`` (spec.py): what a method asks for: a recipe and its numbers of global/local views.
- ``resolve_views`` (recipes.py): the recipe's published defaults, overridden by the config.
- ``build_cpu_views`` (cpu.py): PIL ops on uint8 images, one image at a time, in DataLoader workers.
- ``build_gpu_views`` (gpu.py): whole uint8 batches on the device, per-sample random parameters
  (crop boxes: boxes.py; colour ops: color.py; label-preserving crops: crops.py).
- ``random_patch_mask`` / ``block_masks`` / ``BlockMaskSampler`` (masks.py): MAE and I-JEPA
  patch masks, fixed shapes per run, sampled on the device.

The names load on first use (PEP 562): ``vissl_lite.config`` imports the schema module
``vissl_lite.augment.config``, and that must not import torch and torchvision with this package.
"""
from vissl_lite._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["CPUViews", "build_cpu_views"], "vissl_lite.augment.cpu"),
    **dict.fromkeys(["GPUViews", "build_gpu_views", "sample_crop_boxes"], "vissl_lite.augment.gpu"),
    **dict.fromkeys(["BlockMasks", "BlockMaskSampler", "MaskError", "PatchMask", "block_masks",
                     "random_patch_mask"], "vissl_lite.augment.masks"),
    **dict.fromkeys(["AugmentConfigError", "ViewParams", "default_mean_std", "resolve_views"],
                    "vissl_lite.augment.recipes"),
    **dict.fromkeys(["RECIPES", "ViewSpec"], "vissl_lite.augment.spec"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
