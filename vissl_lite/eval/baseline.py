"""The random-init baseline of a checkpoint: the same backbone (same config section, so the same
architecture, stem and pooling), the same image size and normalisation, untrained.

Every number of a report stands beside the same number for this baseline (the "does pretraining
help at all" column: a random CNN already reaches 30-40% kNN on CIFAR-10), computed by the same
evaluators on the same data and subsets.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from vissl_lite.backbones import build_backbone_from_config
from vissl_lite.eval.evaluator import EvalContext
from vissl_lite.eval.runs import checkpoint_state


def random_init_encoder(backbone: Dict[str, Any], image_size: int, seed: int) -> torch.nn.Module:
    """``backbone`` (a checkpoint's ``backbone`` config section) built at initialisation, with
    ``seed`` (the global RNG is left as it was) and no pretrained weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_backbone_from_config(dict(backbone, pretrained_path=None), image_size=image_size)


def baseline_context(ctx: EvalContext) -> Tuple[Optional[EvalContext], str]:
    """(a context for the random-init twin of ``ctx``'s encoder, "") or (None, why there is none)."""
    path = ctx.info.get("path")
    if not path:
        return None, f"{ctx.checkpoint} is not a vissl-lite checkpoint (it is its own baseline)"
    backbone = checkpoint_state(Path(path))["config"].get("backbone")
    if not backbone:
        return None, f"{path} has no backbone config"
    seed = ctx.args.seed
    digest = hashlib.sha256(json.dumps(backbone, sort_keys=True, default=str).encode()).hexdigest()
    info = {**ctx.info, "model_id": f"random-init:{digest[:16]}+seed{seed}", "path": None}

    def load(_spec: str):
        return random_init_encoder(backbone, ctx.image_size, seed), info

    return ctx.sibling(load, f"random init of {backbone.get('name')} (seed {seed})"), ""
