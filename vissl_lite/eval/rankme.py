"""RankMe (Garrido et al., ICML 2023): the effective rank of an embedding matrix, label-free.

With sigma the singular values of the (N, D) embedding matrix,

    p_k = sigma_k / ||sigma||_1 + eps,    RankMe = exp(-sum_k p_k log p_k),

the exponential of the entropy of the normalised spectrum (Roy and Vetterli 2007). It lies in
[1, min(N, D)] and tracks downstream accuracy without labels; a collapsed encoder scores near 1.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from vissl_lite.errors import EvalError
from vissl_lite.eval.evaluator import EvalContext, EvalResult, Evaluator
from vissl_lite.registry import EVALUATORS
from vissl_lite.eval.plots import line_plot

EPS = 1e-7


def singular_values(embeddings: torch.Tensor) -> torch.Tensor:
    """Singular values of ``embeddings`` (N, D) in float64, descending."""
    if embeddings.ndim != 2 or min(embeddings.shape) < 1:
        raise EvalError(f"RankMe needs an (N, D) embedding matrix, got shape {tuple(embeddings.shape)}")
    return torch.linalg.svdvals(embeddings.detach().double())


def rankme(embeddings: torch.Tensor, eps: float = EPS) -> float:
    """Effective rank of ``embeddings`` (N, D), computed in float64 (see module docstring)."""
    sigma = singular_values(embeddings)
    p = sigma / sigma.sum() + eps
    return float(torch.exp(-torch.special.xlogy(p, p).sum()))  # 0 log 0 = 0 when eps = 0


def rankme_evaluate(train_features: torch.Tensor, train_labels: Optional[torch.Tensor] = None,
                    test_features: Optional[torch.Tensor] = None,
                    test_labels: Optional[torch.Tensor] = None, eps: float = EPS) -> Dict[str, float]:
    """RankMe of the train features (and of the test features when given), with the dimension."""
    out = {"rankme_train": rankme(train_features, eps), "feature_dim": float(train_features.shape[1])}
    if test_features is not None:
        out["rankme_test"] = rankme(test_features, eps)
    return out


@EVALUATORS.register("rankme", help="RankMe: effective rank of the embeddings, singular-value "
                                    "spectrum (label-free)")
class RankMeEvaluator(Evaluator):
    """RankMe of the train (and test) features, and their normalised singular-value spectrum (PNG)."""

    function = staticmethod(rankme_evaluate)

    def run(self, ctx: EvalContext) -> EvalResult:
        xtr = ctx.features("train")[0]
        xte = ctx.features("test")[0] if ctx.has_split("test") else None
        out = EvalResult(rankme_evaluate(xtr, test_features=xte))
        path = ctx.figure_path("spectrum.png")
        if path is not None:
            sigma = singular_values(xtr)
            out.figures["singular values of the train features (normalised to sum 1), log scale"] = \
                line_plot(path, range(1, len(sigma) + 1), {"train": (sigma / sigma.sum()).tolist()},
                          "index", "sigma_k / sum(sigma)",
                          f"spectrum (RankMe {out.metrics['rankme_train']:.1f} of {len(sigma)})",
                          logy=True)
        return out
