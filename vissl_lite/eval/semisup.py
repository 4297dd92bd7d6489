"""Semi-supervised fine-tuning (``vissl-lite eval semisup``): fine-tuning on 1% and 10% of the labels.

SimCLR's protocol (Chen et al. 2020, App. B.5; google-research/simclr README) by default: for each
fraction a fixed, class-balanced subset of the train split (``fraction_subset``: in every class
``round(fraction * class size)`` images, at least one, drawn with ``--seed``), then the whole
encoder and a new head fine-tuned on it with the ``simclr_resnet50`` recipe (LARS, lr 0.005 x
sqrt(batch), no weight decay, crop + flip, zero-init head) for 60 epochs on 1% and 30 on 10%,
and top-1 on the test split (``--subset-test`` applies; ``--subset-train`` does not: the
fractions are of the whole train split). ``eval/finetune.py`` does the training, on the trainer.

Each subset is written beside the results (``<out>_subset_1pct.txt``, or in ``--run-dir``), one
image per line as its path relative to the split (``class/file``; a data set without files: its
index), like SimCLR's ``imagenet_subsets/1percent.txt``; ``--subset-files`` reads such files
instead (lines matched by relative path or by file name, so SimCLR's ImageNet lists work as
they are), so that runs compare on the same images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset, Subset

from vissl_lite import distributed as dist
from vissl_lite.data.subsets import targets_of
from vissl_lite.errors import EvalError
from vissl_lite.eval.evaluator import EvalContext, EvalResult, Evaluator
from vissl_lite.eval.finetune import (add_finetune_arguments, as_is, default_run_dir, recipe_name,
                                      run_finetune)
from vissl_lite.eval.finetune_recipe import load_recipe
from vissl_lite.registry import EVALUATORS

DEFAULT_FRACTIONS = (1.0, 10.0)   # percent of the training labels
#: SimCLR App. B.5: 60 epochs on 1% of the labels, 30 on 10% (the default recipe's epochs only)
SIMCLR_EPOCHS = ((1.0, 60), (100.0, 30))
TABLE = "semi-supervised fine-tuning (top-1 %)"


def fraction_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of ``round(fraction * n_c)`` (at least 1) images of every class c, drawn
    with ``seed``; the same seed gives the same subset."""
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        keep = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=g)[:keep]])
    return torch.cat(chosen).sort().values


def sample_names(dataset: Dataset) -> List[str]:
    """Each sample's path relative to its split (``class/file``), or its index without files."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return [str(i) for i in range(len(dataset))]
    return ["/".join(Path(str(s[0])).parts[-2:]) for s in samples]


def write_subset(path: Path, names: Sequence[str], indices: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{names[i]}\n" for i in indices.tolist()))


def read_subset(path: Path, names: Sequence[str]) -> torch.Tensor:
    """Indices of the images a subset file lists (by relative path, else by file name)."""
    if not Path(path).is_file():
        raise EvalError(f"subset file not found: {path} (one image per line, e.g. "
                        f"n01440764/n01440764_10026.JPEG or n01440764_10026.JPEG)")
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    by_path = {n: i for i, n in enumerate(names)}
    by_file = {n.rsplit("/", 1)[-1]: i for i, n in enumerate(names)}
    found, missing = [], []
    for line in lines:
        index = by_path.get(line, by_file.get(line.rsplit("/", 1)[-1]))
        (missing if index is None else found).append(line if index is None else index)
    if missing or not found:
        raise EvalError(f"{path}: {len(missing)} of {len(lines)} lines name no image of the train "
                        f"split (first: {missing[0] if missing else '(empty file)'}); give a "
                        f"subset of this data set")
    return torch.tensor(sorted(set(found)))


def subset_label(fraction: Optional[float], path: Optional[Path]) -> str:
    return Path(path).stem if path is not None else f"{fraction:g}pct".replace(".", "_")


def subsets(ctx: EvalContext, base: Dataset) -> List[Tuple[str, float, torch.Tensor]]:
    """(label, percent of the train split, indices) of each fraction or ``--subset-files`` file;
    the drawn subsets are written to ``subset_path`` (rank 0)."""
    a = ctx.args
    names = sample_names(base)
    if a.subset_files:
        out = []
        for path in a.subset_files:
            idx = read_subset(Path(path), names)
            out.append((subset_label(None, path), 100.0 * len(idx) / len(base), idx))
        return out
    labels = torch.as_tensor(targets_of(base))
    out = []
    for percent in a.fractions:
        if not 0 < percent <= 100:
            raise EvalError(f"--fractions are percentages in (0, 100], got {percent:g}")
        idx = fraction_subset(labels, percent / 100, a.seed)
        label = subset_label(percent, None)
        if dist.is_main():
            write_subset(subset_path(ctx, label), names, idx)
        out.append((label, percent, idx))
    return out


def subset_path(ctx: EvalContext, label: str) -> Path:
    out = ctx.args.out
    if out:
        return Path(out).with_name(f"{Path(out).stem}_subset_{label}.txt")
    return default_run_dir(ctx, "semisup", ctx.args.recipe) / f"subset_{label}.txt"


def simclr_epochs(percent: float) -> int:
    return next(epochs for upto, epochs in SIMCLR_EPOCHS if percent <= upto)


@EVALUATORS.register("semisup", help="semi-supervised fine-tuning on 1 and 10 percent of the labels "
                                     "(fixed class-balanced subset files; SimCLR's protocol)")
class SemisupEvaluator(Evaluator):
    """``run_finetune`` on each class-balanced subset of the train split."""

    needs_labels = needs_test = True

    @classmethod
    def add_arguments(cls, parser):
        add_finetune_arguments(parser, "simclr_resnet50")
        g = parser.add_argument_group("semisup")
        g.add_argument("--fractions", type=float, nargs="+", default=list(DEFAULT_FRACTIONS),
                       metavar="PERCENT", help="labelled percentages of the train split")
        g.add_argument("--subset-files", nargs="+", default=None, metavar="FILE",
                       help="use these subsets instead (one image per line, SimCLR's format)")

    def run(self, ctx: EvalContext) -> EvalResult:
        a = ctx.args
        name = recipe_name(ctx)
        train = ctx.dataset("train", transform=as_is, subset=0)
        seen = ctx.dataset("train", subset=0)
        base = train.dataset
        user_epochs = any(o.split("=", 1)[0].strip() == "epochs" for o in a.recipe_overrides)
        metrics: Dict[str, float] = {}
        rows, notes, files = [], [], {}
        for label, percent, idx in subsets(ctx, base):
            overrides = list(a.recipe_overrides)
            if name == "simclr_resnet50" and not user_epochs:
                overrides.append(f"epochs={simclr_epochs(percent)}")
            recipe = load_recipe(name, overrides)
            run_dir = default_run_dir(ctx, "semisup", name) / label
            numbers = run_finetune(ctx, recipe, name, run_dir, Subset(train, idx.tolist()),
                                   Subset(seen, idx.tolist()))
            metrics.update({f"semisup_{label}_{k}": v for k, v in numbers.items()})
            counts = torch.bincount(torch.as_tensor(targets_of(base))[idx])
            counts = counts[counts > 0]
            rows.append({"subset": label, "percent": percent, "images": len(idx),
                         "per_class": f"{int(counts.min())}-{int(counts.max())}",
                         "epochs": recipe.epochs, "top1": numbers["top1"],
                         "train_top1": numbers["train_top1"], "seconds": numbers["seconds"]})
            files[label] = str(subset_path(ctx, label)) if not a.subset_files else None
            notes.append(f"subset {label}: {files[label] or 'from --subset-files'}; run {run_dir}")
        files = {k: v for k, v in files.items() if v}
        return EvalResult(metrics, tables={TABLE: rows}, notes=notes,
                          extra={"recipe": name, "subset_files": files})
