"""vissl_lite: self-supervised visual representation learning on PyTorch.

Methods (SimCLR, Barlow Twins, DINO, MAE, I-JEPA) are plugins on one trainer, one backbone zoo,
one augmentation pipeline and one evaluation suite. See README.md and docs/architecture.md.

``vissl_lite.load_backbone(CHECKPOINT)`` returns a pretrained encoder ready for downstream code
(loaded on first use: ``import vissl_lite`` stays light).
"""
from vissl_lite._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {"load_backbone": "vissl_lite.export", "export_backbone": "vissl_lite.export"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
