"""The backbone zoo: torchvision ResNets and timm ViTs behind one ``build_backbone`` call.

Every backbone has ``num_features``, ``family`` ("resnet" | "vit") and ``forward(x) -> (B,
num_features)`` pooled features; ViTs add the token-level calls of ``vissl_lite.backbones.vit``.
The names are registered in ``vissl_lite.registry.BACKBONES`` by ``zoo.py``, which imports no
torch; the names below load on first use (PEP 562), so that the schema module
``vissl_lite.backbones.config`` (imported by ``vissl_lite.config``) stays light.
"""
from vissl_lite._lazy import lazy_exports

_EXPORTS = {
    "BackboneError": "vissl_lite.errors",
    "build_backbone": "vissl_lite.backbones.build",
    "build_backbone_from_config": "vissl_lite.backbones.build",
    "load_pretrained_weights": "vissl_lite.backbones.weights",
    "sincos_2d_pos_embed": "vissl_lite.backbones.pos_embed",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
