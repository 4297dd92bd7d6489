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


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """(C, C) pixel counts, rows the true class and columns the predicted one; pixels whose
    target is ``ignore_index`` are not counted."""
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).view(num_classes,
                                                                              num_classes)


def iou_from_confusion(conf: torch.Tensor) -> Dict[str, object]:
    """Per-class IoU = TP / (TP + FP + FN) in %, (NaN for a class absent from both target and
    prediction), their mean over the other classes (mIoU) and the pixel accuracy, as mmseg's
    ``mean_iou`` (the protocol of DINOv2's linear segmentation)."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, 100.0 * tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    return {"iou": iou.tolist(), "miou": float(iou.nanmean()),
            "pixel_acc": float(100.0 * tp.sum() / conf.sum().clamp_min(1))}
