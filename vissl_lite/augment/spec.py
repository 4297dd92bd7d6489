"""``ViewSpec``: what a method asks of the augmentation pipeline.

A method names a recipe (the published augmentation of its paper) and how many global and local
views it needs; the sizes, scales and probabilities come from the ``augment`` section of the
config, whose unset (null) values fall back to the recipe's published defaults for the input size.
"""
from __future__ import annotations

from dataclasses import dataclass

RECIPES = ("simclr", "byol", "dino", "mae", "ijepa")


@dataclass(frozen=True)
class ViewSpec:
    recipe: str = "simclr"
    num_global: int = 2
    num_local: int = 0

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe '{self.recipe}'; known: {', '.join(RECIPES)}")
        if self.num_global < 1 or self.num_local < 0:
            raise ValueError(f"a ViewSpec needs >= 1 global view and >= 0 local views, got {self}")

    @property
    def num_views(self) -> int:
        return self.num_global + self.num_local
