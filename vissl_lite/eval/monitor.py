"""Online monitors: cheap evaluations during pretraining, logged like the loss.

``OnlineMonitor`` runs every ``monitor.every_epochs`` epochs (the trainer calls ``run(epoch)``):
a weighted kNN classifier (``eval.knn``) from a fixed random subset of the train split (the bank)
to a fixed random subset of the test split, and RankMe (``eval.rankme``) of the bank's features.
The subsets are decoded once into uint8 tensors at the evaluation size and normalised on the
device, so a run costs one forward pass over ``train_subset + test_subset`` images.

``OnlineLinearHead`` is solo-learn's online linear classifier: a linear layer with its own SGD
optimizer, trained at every step (the trainer calls ``step`` with ``StepOutput.embedding``, the
detached backbone features of the first global view) on those features and the batch labels. Labels
never reach the SSL loss; the head only reports how linearly separable the features are now.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from vissl_lite import distributed as dist
from vissl_lite.config import global_view_size
from vissl_lite.data import has_labels
from vissl_lite.errors import DataError, EvalError
from vissl_lite.eval.features import extract_features, random_subset, resolve_device
from vissl_lite.eval.knn import knn_classify
from vissl_lite.eval.metrics import topk_accuracy
from vissl_lite.eval.rankme import rankme
from vissl_lite.eval.transforms import resolve_mean_std, uint8_transform
from vissl_lite.data import build_dataset

ImagesLabels = Tuple[torch.Tensor, torch.Tensor]
log = logging.getLogger(__name__)


class OnlineLinearHead(nn.Module):
    """A linear classifier trained on the side on detached features (solo-learn's online probe).

    Call ``update(features, labels)`` once per training step with the backbone's pooled features
    of one view (any dtype; detached here) and the batch labels: it does one SGD step of
    cross-entropy on its own parameters and returns ``{"online_linear_loss", "online_linear_top1"}``
    measured on that batch before the step. Samples with a negative label are ignored. Under DDP
    the gradients are averaged across ranks, so every rank keeps the same head.
    ``evaluate(features, labels)`` gives top-1/top-5 (%) without training.
    """

    def __init__(self, num_features: int, num_classes: int, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(num_features, num_classes)
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=lr, momentum=momentum,
                                         weight_decay=weight_decay)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.detach().float())

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One SGD step; the batch's loss and top-1 (%) before it, as 0-d device tensors.

        Nothing is read back to the host and no shape depends on the data (unlabeled samples are
        masked out of the mean, not removed), so the trainer can call it in every step.
        """
        labels = labels.long()
        keep = (labels >= 0).float()
        count = keep.sum().clamp(min=1.0)
        self.train()
        with torch.enable_grad(), torch.autocast(features.device.type, enabled=False):
            logits = self(features)
            per_sample = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
            loss = (per_sample * keep).sum() / count
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        for p in self.linear.parameters():
            if p.grad is not None:
                dist.all_reduce_mean(p.grad)
        self.optimizer.step()
        correct = ((logits.detach().argmax(dim=1) == labels).float() * keep).sum()
        return {"online_linear_loss": loss.detach(), "online_linear_top1": 100.0 * correct / count}

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
        """``step`` with its numbers as Python floats (top-1 is nan without labelled samples)."""
        out = {k: float(v) for k, v in self.step(features, labels).items()}
        if not bool((labels >= 0).any()):
            out["online_linear_top1"] = float("nan")
        return out

    @torch.no_grad()
    def evaluate(self, features: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
        self.eval()
        acc = topk_accuracy(self(features.to(self.linear.weight.device)), labels.long())
        return {"online_linear_top1": acc[1], "online_linear_top5": acc[5]}


def load_uint8_subset(data_cfg, split: str, size: Optional[int], image_size: int, seed: int = 0,
                      num_workers: int = 0) -> ImagesLabels:
    """A fixed random subset of a split, resized/center-cropped, as (uint8 (N,3,S,S), labels (N,))."""
    dataset = build_dataset(data_cfg, split, transform=uint8_transform(image_size))
    if len(dataset) == 0:
        raise EvalError(f"the {split} split of {data_cfg.root} is empty; the monitor needs images")
    subset = Subset(dataset, random_subset(len(dataset), size, seed))
    images, labels = [], []
    for x, y in DataLoader(subset, batch_size=512, num_workers=num_workers):
        images.append(x.as_subclass(torch.Tensor))
        labels.append(torch.as_tensor(y))
    return torch.cat(images), torch.cat(labels).long()


class OnlineMonitor:
    """kNN accuracy and RankMe of the method's frozen encoder on fixed held-out subsets.

    ``OnlineMonitor(cfg, method, device)`` builds the subsets from ``cfg.data`` once (sizes from
    ``cfg.monitor``, seed from ``cfg.seed``); ``train_data`` / ``test_data`` given as
    (uint8 images, labels) replace them. ``run(epoch)`` returns
    ``{"knn_top1": %, "knn_top5": %, "rankme": float}`` (plus ``online_linear_top1/5`` on the
    test subset when ``monitor.online_linear`` is on and ``linear_head`` is being trained). It is
    called on every rank: feature extraction is sharded and gathered, the numbers are the same.
    """

    def __init__(self, cfg, method: nn.Module, device=None, train_data: Optional[ImagesLabels] = None,
                 test_data: Optional[ImagesLabels] = None):
        self.cfg = cfg.monitor
        self.method = method
        self.device = resolve_device(device)
        logger = cfg.get("logger", None) if hasattr(cfg, "get") else None
        self.progress = bool(logger.progress) if logger is not None else False
        augment = cfg.get("augment", None) if hasattr(cfg, "get") else None
        self.image_size = global_view_size(cfg)
        self.mean, self.std = resolve_mean_std(self.image_size, augment.mean if augment else None,
                                               augment.std if augment else None)
        workers = min(int(cfg.data.num_workers), 4)
        seed = int(cfg.get("seed", 0))
        self.off = None if has_labels(cfg.data) else f"data.name={cfg.data.name} has no labels"
        try:
            self.train_data = train_data or load_uint8_subset(
                cfg.data, "train", self.cfg.train_subset, self.image_size, seed, workers)
            self.test_data = test_data or load_uint8_subset(
                cfg.data, "test", self.cfg.test_subset, self.image_size, seed + 1, workers)
        except DataError as e:  # e.g. a train/ without test/: skip the monitor, keep training
            self.off = self.off or str(e)
        if self.off:
            log.warning(f"online monitor (kNN, RankMe) skipped: {self.off}; set "
                        f"monitor.every_epochs=0 to silence this")
            self.linear_head = None
            return
        self.num_classes = int(max(self.train_data[1].max(), self.test_data[1].max())) + 1
        self.linear_head: Optional[OnlineLinearHead] = None
        if self.cfg.online_linear:
            encoder = method.backbone_for_eval()
            self.linear_head = OnlineLinearHead(int(encoder.num_features), self.num_classes).to(self.device)

    def _features(self, encoder: nn.Module, data: ImagesLabels):
        images, labels = data
        return extract_features(encoder, images, labels=labels, mean=self.mean, std=self.std,
                                device=self.device, batch_size=256, progress=self.progress)

    def run(self, epoch: int) -> Dict[str, float]:
        if self.off:
            return {}
        encoder = self.method.backbone_for_eval()
        bank, bank_labels = self._features(encoder, self.train_data)
        out: Dict[str, float] = {}
        if self.cfg.knn or self.linear_head is not None:
            queries, query_labels = self._features(encoder, self.test_data)
        if self.cfg.knn:
            k = min(int(self.cfg.knn_k), len(bank))
            acc = knn_classify(bank, bank_labels, queries, query_labels, k=k,
                               temperature=float(self.cfg.knn_temperature),
                               num_classes=self.num_classes, backend="torch", device=self.device)
            out["knn_top1"], out["knn_top5"] = acc[f"knn_top1@{k}"], acc[f"knn_top5@{k}"]
        if self.cfg.rankme:
            out["rankme"] = rankme(bank)
        if self.linear_head is not None:
            out.update(self.linear_head.evaluate(queries, query_labels.to(self.device)))
        return out
