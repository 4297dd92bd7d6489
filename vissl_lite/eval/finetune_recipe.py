"""Fine-tuning recipes: the hyper-parameters of ``vissl-lite eval finetune`` and ``semisup``.

A recipe is a YAML file in ``configs/eval/finetune/`` (or any path) validated against
``FinetuneRecipe``; like the pretraining presets it opens with a recipe card (``source:`` and
``deviation:`` lines, ``vissl_lite/recipe_cards.py``) saying which published recipe it is:

- ``mae_vit_base``: MAE's ViT-B fine-tuning (facebookresearch/mae FINETUNE.md, main_finetune.py):
  AdamW, blr 5e-4 x batch/256, layer decay 0.65, weight decay 0.05, drop path 0.1, Mixup 0.8 /
  CutMix 1.0, label smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25.
- ``simclr_resnet50``: SimCLR's fine-tuning of the whole ResNet (google-research/simclr README):
  LARS, lr 0.005 x sqrt(batch), no weight decay, no warm-up, crop + flip only, zero-init head,
  global BatchNorm; the default of ``semisup`` (60 epochs on 1%, 30 on 10% of the labels).
- ``cifar_tiny``: a few epochs on 32 px images on a CPU, for checks, not for numbers.

The training transform is timm's ``create_transform`` (RandAugment, random erasing) and the
recipe becomes the trainer's experiment config (``trainer_config``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from timm.data import create_transform

from vissl_lite.backbones.card import Card
from vissl_lite.config import ExperimentConfig
from vissl_lite.errors import EvalError
from vissl_lite.presets import preset_roots

RECIPE_FOLDER = Path("eval") / "finetune"
LR_SCALINGS = ("linear", "sqrt", "none")


@dataclass
class FinetuneRecipe:
    epochs: int = 100
    max_steps: Optional[int] = None   # stop after this many optimizer steps (quick runs, tests)
    batch_size: int = 1024            # global
    optimizer: str = "adamw"          # adamw | lars | sgd (the trainer's optimizers)
    lr: float = 5e-4                  # base lr, scaled by lr_scaling
    lr_scaling: str = "linear"        # linear: lr * batch / 256 | sqrt: lr * sqrt(batch) | none
    min_lr: float = 1e-6
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9
    layer_decay: Optional[float] = None  # layer-wise lr decay (ViTs; timm param_groups_layer_decay)
    grad_clip: Optional[float] = None
    drop_path: float = 0.0            # stochastic depth of the encoder's blocks (max rate)
    mixup: float = 0.0                # timm Mixup alpha (0: off)
    cutmix: float = 0.0               # timm CutMix alpha (0: off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.0            # label smoothing
    auto_augment: Optional[str] = None  # timm policy, e.g. rand-m9-mstd0.5-inc1
    color_jitter: Optional[float] = None
    reprob: float = 0.0               # random erasing probability (pixel mode)
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    interpolation: str = "bicubic"
    ema_decay: Optional[float] = None  # model EMA (timm ModelEmaV3); null: none
    head_init_std: float = 2e-5       # 0: a zero-initialised head (SimCLR)
    sync_bn: bool = False             # global BatchNorm across ranks


def recipe_path(name: str) -> Path:
    """The YAML of recipe ``name`` (a preset in ``configs/eval/finetune/`` or a path)."""
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise EvalError(f"finetune recipe not found: {name} (give a YAML file or one of "
                            f"{', '.join(recipe_names())})")
        return path
    for root in preset_roots():
        candidate = root / RECIPE_FOLDER / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    raise EvalError(f"unknown finetune recipe {name!r}: choose one of "
                    f"{', '.join(recipe_names())} or give a YAML file")


def recipe_names() -> List[str]:
    return sorted({p.stem for root in preset_roots() for p in (root / RECIPE_FOLDER).glob("*.yaml")})


def load_recipe(name: str, overrides: Sequence[str] = ()) -> FinetuneRecipe:
    """The recipe ``name`` with ``key=value`` overrides, validated (one line naming a bad key)."""
    path = recipe_path(name)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(FinetuneRecipe), OmegaConf.load(path),
                                 OmegaConf.from_dotlist(list(overrides)))
        recipe = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise EvalError(f"finetune recipe {path} (with --set {' '.join(overrides) or '-'}): "
                        f"{key}: {str(e).splitlines()[0]}") from None
    check_recipe(recipe)
    return recipe


def check_recipe(r: FinetuneRecipe) -> None:
    if r.lr_scaling not in LR_SCALINGS:
        raise EvalError(f"finetune recipe: lr_scaling={r.lr_scaling!r}; choose one of "
                        f"{', '.join(LR_SCALINGS)}")
    if r.optimizer not in ("adamw", "lars", "sgd"):
        raise EvalError(f"finetune recipe: optimizer={r.optimizer!r}; choose adamw, lars or sgd")
    if (r.mixup > 0 or r.cutmix > 0) and r.batch_size % 2:
        raise EvalError(f"finetune recipe: Mixup/CutMix mix a batch with its reverse and need an "
                        f"even batch_size, got {r.batch_size}")


def scaled_lr(r: FinetuneRecipe) -> float:
    """The absolute lr: MAE's ``blr * batch / 256`` or SimCLR's ``lr * sqrt(batch)``."""
    if r.lr_scaling == "linear":
        return r.lr * r.batch_size / 256
    if r.lr_scaling == "sqrt":
        return r.lr * math.sqrt(r.batch_size)
    return r.lr


class NumpySeeded:
    """Runs ``transform`` with NumPy's global RNG seeded from torch's: timm's RandAugment draws its
    ops with ``np.random``, which the trainer's loader does not seed per sample (it seeds torch
    and ``random``), so without this the ops would depend on the worker and break exact resume.
    The caller's NumPy state is restored afterwards."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        state = np.random.get_state()
        np.random.seed(int(torch.randint(2 ** 31, ())))
        try:
            return [self.transform(image)]
        finally:
            np.random.set_state(state)

    def __repr__(self) -> str:
        return f"NumpySeeded({self.transform!r})"


def train_transform(r: FinetuneRecipe, card: Card) -> NumpySeeded:
    """timm's training transform at the encoder's size and normalisation (one view per image)."""
    return NumpySeeded(create_transform(
        card.image_size, is_training=True, scale=tuple(r.crop_scale), color_jitter=r.color_jitter,
        auto_augment=r.auto_augment, interpolation=r.interpolation, mean=tuple(card.mean),
        std=tuple(card.std), re_prob=r.reprob, re_mode="pixel", re_count=1))


def trainer_config(r: FinetuneRecipe, *, spec: str, data: Dict[str, Any], run_dir: Path,
                   resume: bool, overwrite: bool, seed: int, device: str, precision: str,
                   progress: bool, recipe_name: str):
    """The trainer's experiment config of fine-tuning with recipe ``r`` (the recipe recorded as
    the ``method`` section, so a resumed run's config.yaml shows what changed)."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if precision == "auto":
        precision = "bf16" if cuda else "fp32"
    method = {"name": "finetune", "recipe": recipe_name, **OmegaConf.to_container(
        OmegaConf.structured(r))}
    values = {
        "method": method, "seed": seed, "output_dir": str(run_dir),
        "resume": "auto" if resume else None, "overwrite": overwrite,
        "backbone": {"name": spec, "drop_path_rate": r.drop_path},
        "data": data, "augment": {"path": "cpu"},
        "optim": {"name": r.optimizer, "lr": scaled_lr(r), "scale_lr": False, "min_lr": r.min_lr,
                  "warmup_epochs": r.warmup_epochs, "weight_decay": r.weight_decay,
                  "momentum": r.momentum, "betas": list(r.betas)},
        "train": {"epochs": r.epochs, "max_steps": r.max_steps, "batch_size": r.batch_size,
                  "precision": precision, "channels_last": False, "compile": False,
                  "grad_clip": r.grad_clip, "sync_bn": r.sync_bn,
                  "device": "cuda" if cuda else "cpu", "log_every": 10},
        "checkpoint": {"every_epochs": 1, "keep_last": 1, "save_best": False},
        "logger": {"progress": progress, "plot": False, "wandb": {"mode": "disabled"}},
        "monitor": {"every_epochs": 0},
    }
    cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), values)
    OmegaConf.set_readonly(cfg, True)
    return cfg
