"""End-to-end fine-tuning (``vissl-lite eval finetune``): the whole encoder plus a linear head.

The encoder (any encoder spec: our checkpoint or run folder, ``timm:``, ``torchvision:``,
``random:``) and a new linear head are trained together on the labelled train split with a
recipe (``finetune_recipe.py``: MAE's ViT-B recipe, SimCLR's ResNet one, a tiny CIFAR one) by the
project's ``Trainer``, which drives ``FinetuneModel`` (``finetune_model.py``) as it drives a
pretraining method: AMP, DDP under torchrun, checkpoints in ``--run-dir`` and exact resume
(``--resume``), clean stops on signals, progress and ``metrics.jsonl``. Then top-1/top-5 on the
test split (center crop, the encoder's card) of the fine-tuned model and of its EMA when the
recipe keeps one, and the top-1 on up to ``--train-eval-size`` training images (same transform).

The trainer is reached by name at run time (``importlib``), as ``backbones/specs.py`` reaches the
checkpoint loader: the evaluators sit below the engine in the package's layers.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import time
from pathlib import Path
from typing import Dict, Optional

import torch
from torch.utils.data import Dataset, Subset

from vissl_lite import distributed as dist
from vissl_lite.backbones.card import Card
from vissl_lite.eval.evaluator import EvalContext, EvalResult, Evaluator
from vissl_lite.eval.features import extract_features, random_subset
from vissl_lite.eval.finetune_model import FinetuneModel
from vissl_lite.eval.finetune_recipe import (FinetuneRecipe, load_recipe, recipe_names,
                                             train_transform, trainer_config)
from vissl_lite.eval.metrics import topk_accuracy
from vissl_lite.registry import EVALUATORS

AUTO_RECIPE = {"vit": "mae_vit_base"}   # any other family: simclr_resnet50
DEFAULT_RECIPE = "simclr_resnet50"


def as_is(image):
    """The identity transform: the trainer's loader applies the training transform itself."""
    return image


def add_finetune_arguments(parser: argparse.ArgumentParser, default_recipe: str) -> None:
    """The options ``finetune`` and ``semisup`` share."""
    g = parser.add_argument_group("fine-tuning")
    g.add_argument("--recipe", default=default_recipe,
                   help=f"a recipe of configs/eval/finetune ({', '.join(recipe_names())}) or a "
                        f"YAML file; auto: mae_vit_base for ViTs, simclr_resnet50 otherwise "
                        f"(default: {default_recipe})")
    g.add_argument("--set", dest="recipe_overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override recipe values, e.g. epochs=10 batch_size=256 mixup=0")
    g.add_argument("--run-dir", default=None,
                   help="the training run's folder (checkpoints, metrics.jsonl, train.log; "
                        "default: beside --out, else runs/<evaluator>_<recipe>)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir (semisup: a finished subset is only evaluated)")
    g.add_argument("--overwrite", action="store_true",
                   help="delete the run files already in --run-dir first")
    g.add_argument("--train-eval-size", type=int, default=10000, metavar="N",
                   help="training images (fixed, random) the final train top-1 is measured on "
                        "(semisup: the whole labelled subset)")


def recipe_name(ctx: EvalContext) -> str:
    name = ctx.args.recipe
    if name == "auto":
        family = getattr(ctx.encoder, "family", None)
        return AUTO_RECIPE.get(family, DEFAULT_RECIPE)
    return name


def default_run_dir(ctx: EvalContext, evaluator: str, recipe: str) -> Path:
    if ctx.args.run_dir:
        return Path(ctx.args.run_dir)
    out = getattr(ctx.args, "out", None)
    if out:
        return Path(out).with_name(f"{Path(out).stem}_{evaluator}")
    return Path("runs") / f"{evaluator}_{Path(recipe).stem}"


def card_of(ctx: EvalContext) -> Card:
    card = ctx.info.get("card")
    if card is not None:
        return card
    mean, std = ctx.mean_std
    return Card(ctx.image_size, ctx.image_size, "bicubic", tuple(mean), tuple(std), "eval options")


def accuracy(model: torch.nn.Module, dataset: Dataset, ctx: EvalContext) -> Dict[int, float]:
    a = ctx.args
    logits, labels = extract_features(model, dataset, batch_size=a.batch_size, device=ctx.device,
                                      num_workers=a.num_workers, precision=a.precision)
    return topk_accuracy(logits, labels, (1, min(5, logits.shape[1])))


def run_finetune(ctx: EvalContext, recipe: FinetuneRecipe, name: str, run_dir: Path,
                 train_set: Dataset, train_eval: Optional[Dataset]) -> Dict[str, float]:
    """Fine-tune a copy of ``ctx.encoder`` on ``train_set`` ((PIL image, label) pairs) with
    ``recipe`` in ``run_dir``; the numbers of the module docstring (accuracies in %)."""
    a = ctx.args
    encoder = copy.deepcopy(ctx.encoder).cpu().requires_grad_(True)
    model = FinetuneModel(encoder, ctx.num_classes(), recipe, seed=a.seed)
    if recipe.drop_path and not model.drop_path_blocks:
        ctx.warn(f"drop_path={recipe.drop_path} ignored: this encoder has no drop-path slots "
                 f"(timm blocks have them, torchvision's ResNets do not)")
    data = {"name": a.dataset, "root": str(a.data), "image_size": ctx.image_size,
            "num_workers": a.num_workers}
    cfg = trainer_config(recipe, spec=str(ctx.checkpoint), data=data, run_dir=run_dir,
                         resume=a.resume, overwrite=a.overwrite, seed=a.seed, device=a.device,
                         precision=a.precision, progress=dist.is_main(), recipe_name=name)
    trainer = importlib.import_module("vissl_lite.engine.trainer").Trainer
    start = time.time()
    result = trainer(cfg, method=model, dataset=train_set,
                     transform=train_transform(recipe, card_of(ctx))).fit()
    seconds = time.time() - start
    top = accuracy(model.classifier, ctx.dataset("test"), ctx)
    out = {"top1": top[1], "top5": top[max(top)], "train_loss": result.get("loss"),
           "seconds": seconds, "steps": result["step"], "train_images": len(train_set)}
    if model.ema is not None:
        out["ema_top1"] = accuracy(model.ema.module, ctx.dataset("test"), ctx)[1]
    if train_eval is not None:
        out["train_top1"] = accuracy(model.classifier, train_eval, ctx)[1]
    return {k: v for k, v in out.items() if v is not None}


@EVALUATORS.register("finetune", help="end-to-end fine-tuning of the whole encoder and a linear "
                                      "head (timm's Mixup, RandAugment, EMA, layer decay; "
                                      "MAE/SimCLR recipes) on the trainer")
class FinetuneEvaluator(Evaluator):
    """``run_finetune`` on the train split, accuracy on the test split."""

    needs_labels = needs_test = True

    @classmethod
    def add_arguments(cls, parser):
        add_finetune_arguments(parser, "auto")

    def run(self, ctx: EvalContext) -> EvalResult:
        a = ctx.args
        name = recipe_name(ctx)
        recipe = load_recipe(name, a.recipe_overrides)
        run_dir = default_run_dir(ctx, "finetune", name)
        train_set = ctx.dataset("train", transform=as_is)
        train_eval = None
        if a.train_eval_size:
            seen = ctx.dataset("train")
            train_eval = Subset(seen, random_subset(len(seen), a.train_eval_size, a.seed))
        numbers = run_finetune(ctx, recipe, name, run_dir, train_set, train_eval)
        metrics = {f"finetune_{k}": v for k, v in numbers.items()}
        return EvalResult(metrics, notes=[f"recipe {name}; run folder {run_dir}"],
                          extra={"recipe": name, "run_dir": str(run_dir)})
