"""What the trainer trains when fine-tuning: the whole encoder plus a linear head, as a ``Method``.

``FinetuneModel`` has the ``Method`` interface (``training_step``, ``on_step_end``,
``param_lr_scale``), so the method-agnostic ``Trainer`` runs fine-tuning with everything it gives
pretraining (AMP, DDP, exact resume, signals, progress, checkpoints) and no second loop. It is not
registered as a pretraining method: it needs labels, and is built by ``eval/finetune.py``.

The recipe's pieces are timm's, as MAE's main_finetune.py and DeiT use them:

    images, targets = Mixup/CutMix(images, labels)      timm.data.Mixup (label smoothing inside)
    loss = SoftTargetCrossEntropy(head(encoder(images)), targets)
           (LabelSmoothingCrossEntropy without Mixup, plain cross-entropy without either)
    after each step: EMA of encoder + head                timm.utils.ModelEmaV3

plus stochastic depth on the encoder's blocks (``set_drop_path``) and layer-wise lr decay for ViTs
(``layer_lr_scales`` on timm's layer groups, handed to the trainer's optimizer through
``param_lr_scale``).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict

import torch
from timm.data import Mixup
from timm.layers import DropPath
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import group_parameters
from timm.utils import ModelEmaV3
from torch import nn

from vissl_lite.errors import EvalError
from vissl_lite.eval.finetune_recipe import FinetuneRecipe
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.rng import preserved_rng

DROP_PATH_SLOTS = ("drop_path", "drop_path1", "drop_path2")


@dataclass
class FinetuneMethodConfig:
    name: str = "finetune"


def set_drop_path(model: nn.Module, rate: float) -> int:
    """Stochastic depth on a built model: each block's drop-path slots (timm's ``drop_path``,
    ``drop_path1``, ``drop_path2``: ``DropPath`` or ``Identity``) get a rate rising linearly with
    depth from 0 to ``rate``, as timm's constructors set ``drop_path_rate``. Returns the number of
    blocks with slots (0 for models without, e.g. torchvision's ResNets)."""
    blocks = [m for m in model.modules()
              if any(isinstance(getattr(m, s, None), (DropPath, nn.Identity)) for s in DROP_PATH_SLOTS)]
    for i, block in enumerate(blocks):
        block_rate = rate * i / max(len(blocks) - 1, 1)
        for slot in DROP_PATH_SLOTS:
            if isinstance(getattr(block, slot, None), (DropPath, nn.Identity)):
                setattr(block, slot, DropPath(block_rate) if block_rate > 0 else nn.Identity())
    return len(blocks)


def layer_lr_scales(encoder: nn.Module, layer_decay: float) -> Dict[int, float]:
    """``id(parameter) -> lr scale`` of layer-wise decay (ELECTRA/BEiT, MAE's util/lr_decay.py):
    the new head alone at the top (scale 1), each encoder layer below it ``layer_decay`` times the
    one above, the patch embedding lowest. The layers are timm's ``group_matcher`` groups (timm
    ViTs: embeddings 0, block i at i + 1, the final norm with the last block; MAE's fine-tuning
    has no final norm there, it pools through a new fc_norm), as timm's
    ``param_groups_layer_decay`` reads them; unlike it, the head is one layer above the last block,
    as in MAE, not in the last block's group."""
    model = getattr(encoder, "model", encoder)
    if not hasattr(model, "group_matcher"):
        raise EvalError(f"layer_decay needs an encoder whose layers timm can order (a timm model "
                        f"with group_matcher, e.g. a ViT); {type(model).__name__} has none: set "
                        f"layer_decay=null")
    layer_of = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    top = max(layer_of.values()) + 1
    return {id(p): layer_decay ** (top - layer_of.get(n, top)) for n, p in model.named_parameters()}


class FinetuneModel(Method):
    """Encoder + linear head trained end to end with recipe ``recipe`` (module docstring)."""

    Config = FinetuneMethodConfig

    def __init__(self, encoder: nn.Module, num_classes: int, recipe: FinetuneRecipe, seed: int = 0):
        with preserved_rng():
            torch.manual_seed(seed)
            head = nn.Linear(int(encoder.num_features), num_classes)
            if recipe.head_init_std > 0:   # MAE: trunc_normal_(head.weight, std=2e-5)
                nn.init.trunc_normal_(head.weight, std=recipe.head_init_std)
            else:                          # SimCLR: zero_init_logits_layer
                nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        super().__init__(nn.Sequential(OrderedDict(encoder=encoder, head=head)), {})
        self.recipe, self.num_classes = recipe, num_classes
        self.drop_path_blocks = set_drop_path(encoder, recipe.drop_path) if recipe.drop_path else 0
        self.mixup = None
        if recipe.mixup > 0 or recipe.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix,
                               prob=recipe.mixup_prob, switch_prob=recipe.mixup_switch_prob,
                               mode="batch", label_smoothing=recipe.smoothing,
                               num_classes=num_classes)
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif recipe.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=recipe.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.ema = None
        if recipe.ema_decay:
            self.ema = ModelEmaV3(self.backbone, decay=recipe.ema_decay).requires_grad_(False)
        scales = layer_lr_scales(encoder, recipe.layer_decay) if recipe.layer_decay else {}
        self._lr_scales = {n: scales.get(id(p), 1.0) for n, p in self.named_parameters()}

    @property
    def classifier(self) -> nn.Module:
        return self.backbone

    def backbone_for_eval(self) -> nn.Module:
        return self.backbone.encoder

    def param_lr_scale(self, name: str) -> float:
        return self._lr_scales.get(name, 1.0)

    @torch.compiler.disable
    def _mix(self, images: torch.Tensor, labels: torch.Tensor):
        """timm's Mixup/CutMix draws lambda and the box with NumPy on the host (no device sync;
        the trainer's checkpoints keep NumPy's state, so a resumed run draws the same)."""
        return self.mixup(images, labels)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        images, labels = batch["views"][0], batch["labels"]
        targets = labels
        if self.mixup is not None:
            images, targets = self._mix(images, labels)
        logits = self.classifier(images)
        loss = self.criterion(logits.float(), targets)
        metrics = {}
        if self.mixup is None:   # with mixed images a batch accuracy means nothing
            metrics["batch_top1"] = (logits.detach().argmax(1) == labels).float().mean() * 100
        return StepOutput(loss, metrics)

    def on_step_end(self, step: int, total_steps: int) -> None:
        if self.ema is not None:
            self.ema.update(self.classifier, step=step)
