"""Few-shot linear evaluation: k labelled images per class, several random draws, mean and 95% CI.

For each k (1, 5, 10, 25 by default) and each seed, ``k`` training images of every class are
drawn (class-balanced; the draw depends only on the seed, and a seed's k-shot set contains its
smaller-k sets), a logistic-regression probe (``linear.fit_logistic_regression``, the fast
probe's objective) is fit on their cached features with a fixed weight decay (there is no
held-out data to sweep it on with one image per class) and top-1 accuracy is measured on the
whole test split. Features are standardised with the mean and std of all training features
(labels unused). The interval is Student's t over the seeds:

    mean +- t_{0.975, n-1} * sd / sqrt(n)          (n seeds, sd the sample standard deviation)

as in the few-shot tables of SimCLR v2 / DINOv2-style linear evaluation of frozen features.
Everything runs on features: seconds on a CPU.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from vissl_lite.errors import EvalError
from vissl_lite.eval.evaluator import EvalContext, EvalResult, Evaluator
from vissl_lite.eval.linear import _standardize, fit_logistic_regression
from vissl_lite.eval.metrics import check_features, topk_accuracy
from vissl_lite.eval.plots import line_plot
from vissl_lite.registry import EVALUATORS

DEFAULT_SHOTS = (1, 5, 10, 25)
TABLE = "few-shot linear probe (top-1 %, mean and 95% interval over seeds)"


def balanced_subset(labels: torch.Tensor, shots: int, seed: int,
                    num_classes: Optional[int] = None) -> torch.Tensor:
    """Indices of ``shots`` images of every class, drawn with ``seed`` (sorted)."""
    num_classes = num_classes or int(labels.max()) + 1
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        if len(members) < shots:
            raise EvalError(f"few-shot: {shots} shots need {shots} training images of every "
                            f"class, and class {c} has {len(members)}; lower --shots or use more "
                            f"training images (--subset-train)")
        chosen.append(members[torch.randperm(len(members), generator=g)[:shots]])
    return torch.cat(chosen).sort().values


def mean_ci95(values: Sequence[float]) -> Tuple[float, float]:
    """(mean, half-width of the 95% Student-t interval of the mean)."""
    from scipy.stats import t  # scipy comes with scikit-learn, a dependency

    n = len(values)
    if n < 2:
        raise EvalError("few-shot: an interval needs at least 2 seeds (--seeds)")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def fewshot_linear(train_features: torch.Tensor, train_labels: torch.Tensor,
                   test_features: torch.Tensor, test_labels: torch.Tensor,
                   shots: Sequence[int] = DEFAULT_SHOTS, seeds: int = 5,
                   weight_decay: float = 1e-3, max_iter: int = 200, seed: int = 0,
                   num_classes: Optional[int] = None, device=None
                   ) -> Tuple[Dict[str, float], List[Dict[str, Any]]]:
    """``fewshot_<k>shot_top1`` (mean %) and ``fewshot_<k>shot_ci95`` (half-width) for each k,
    and one table row per k with every seed's accuracy (module docstring)."""
    check_features(train_features, train_labels, test_features, test_labels)
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    dev = torch.device(device) if device is not None else torch.device("cpu")
    x, x_test = _standardize(train_features.float().to(dev), test_features.float().to(dev))
    y, y_test = train_labels.long().to(dev), test_labels.long().to(dev)
    metrics: Dict[str, float] = {}
    rows: List[Dict[str, Any]] = []
    for k in sorted(set(int(s) for s in shots)):
        accs = []
        for s in range(seed, seed + seeds):
            idx = balanced_subset(train_labels, k, s, num_classes).to(dev)
            probe = fit_logistic_regression(x[idx], y[idx], num_classes, weight_decay,
                                            max_iter=max_iter, seed=s)
            with torch.no_grad():
                accs.append(topk_accuracy(probe(x_test), y_test, (1,))[1])
        mean, half = mean_ci95(accs)
        metrics[f"fewshot_{k}shot_top1"], metrics[f"fewshot_{k}shot_ci95"] = mean, half
        rows.append({"shots": k, "top1": mean, "ci95": half, "low": mean - half,
                     "high": mean + half, "per_seed": " ".join(f"{a:.1f}" for a in accs)})
    return metrics, rows


@EVALUATORS.register("fewshot", help="few-shot linear probe: k labelled images per class, "
                                     "several seeds, mean and 95-percent interval (cached features)")
class FewShotEvaluator(Evaluator):
    """``fewshot_linear`` on the train and test features, with the accuracy-vs-k curve."""

    needs_labels = needs_test = True
    function = staticmethod(fewshot_linear)

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("fewshot")
        g.add_argument("--shots", type=int, nargs="+", default=list(DEFAULT_SHOTS),
                       help="labelled images per class")
        g.add_argument("--seeds", type=int, default=5, help="random draws per k (at least 2)")
        g.add_argument("--fewshot-weight-decay", type=float, default=1e-3,
                       help="the probe's weight decay (fixed: no held-out data to sweep it on)")

    def run(self, ctx: EvalContext) -> EvalResult:
        xtr, ytr, xte, yte = ctx.labelled_features()
        a = ctx.args
        num_classes = ctx.num_classes()
        smallest = int(torch.bincount(ytr, minlength=num_classes).min())
        shots = [k for k in a.shots if k <= smallest]
        if not shots:
            raise EvalError(f"few-shot: the smallest class has {smallest} training images, fewer "
                            f"than any of --shots {' '.join(map(str, a.shots))}")
        metrics, rows = fewshot_linear(xtr, ytr, xte, yte, shots=shots, seeds=a.seeds,
                                       weight_decay=a.fewshot_weight_decay, seed=a.seed,
                                       num_classes=num_classes, device=ctx.device)
        notes = [f"{k} shots left out: the smallest class has {smallest} training images"
                 for k in a.shots if k > smallest]
        out = EvalResult(metrics, tables={TABLE: rows}, notes=notes)
        path = ctx.figure_path("fewshot.png")
        if path is not None and len(rows) > 1:
            ks = [r["shots"] for r in rows]
            out.figures["few-shot top-1 (%) vs labelled images per class, 95% interval"] = line_plot(
                path, ks, {"mean": [r["top1"] for r in rows], "95% low": [r["low"] for r in rows],
                           "95% high": [r["high"] for r in rows]},
                "images per class", "top-1 (%)", f"few-shot linear ({a.seeds} seeds)", logx=True)
        return out
