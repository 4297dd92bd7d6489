"""vissl_lite: self-supervised visual representation learning on PyTorch.

Methods (SimCLR, Barlow Twins, DINO, MAE, I-JEPA) are plugins on one trainer, one backbone zoo,
one augmentation pipeline and one evaluation suite. See README.md and shared DESIGN.md.
"""
__version__ = "0.1.0"
