"""Top-k accuracy and input checks shared by the kNN classifier, the linear probes and the online monitors."""
from __future__ import annotations

from typing import Dict, Iterable

import torch

from vissl_lite.errors import EvalError


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> Dict[int, float]:
    """Percentage of rows of ``scores`` (N, C) whose label is among the ``k`` highest, for each ``k``.

    Ties are broken by class index (stable sort), so two backends with equal scores agree.
    """
    ranked = scores.argsort(dim=1, descending=True, stable=True)
    hits = ranked == labels.to(ranked.device).view(-1, 1)
    return {k: 100.0 * hits[:, :min(k, scores.shape[1])].any(1).double().mean().item() for k in ks}


def check_features(train_features, train_labels, test_features, test_labels):
    if len(train_features) != len(train_labels) or len(test_features) != len(test_labels):
        raise EvalError(f"features and labels differ in length: train {len(train_features)} vs "
                        f"{len(train_labels)}, test {len(test_features)} vs {len(test_labels)}")
    if (train_labels < 0).any():
        raise EvalError("training labels are missing (negative); kNN and linear probes need a "
                        "labelled data set")
