"""``vissl-lite eval segment ENCODER --seg-data voc2012|folder:PATH``: the dense linear probe.

A linear head on frozen dense features, as DINOv2's linear segmentation (Oquab et al. 2024,
section 7.4; ``dinov2/eval/segmentation``: ``BNHead``, "just a batchnorm", then a 1x1 conv):

    logits = Conv1x1(BatchNorm(F))        F (B, D, h, w): a ViT's patch tokens on their grid, a
                                          ResNet's last feature map (``Encoder.feature_map``)
    loss   = CE(upsample_bilinear(logits, mask size), mask), pixels labelled 255 ignored

trained with AdamW and a cosine schedule. mIoU is the mean over classes of TP / (TP + FP + FN)
accumulated over all test pixels (``metrics.iou_from_confusion``), with each class's IoU and the
pixel accuracy. The images and masks get the encoder card's fixed resize and center crop
(``seg_data.py``), so the features of each image are extracted once and cached on disk (the
training set's with the masks, in float16), and the head trains on them in seconds. DINOv2
measures at full resolution with a sliding window; here the mask is the center crop at the
encoder's input size: numbers comparable between encoders, not with the paper's.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from vissl_lite import distributed as dist
from vissl_lite.errors import EvalError
from vissl_lite.eval.evaluator import EvalContext, EvalResult, Evaluator
from vissl_lite.eval.features import (cache_key, cached_features, extract_features,
                                      random_subset)
from vissl_lite.eval.metrics import confusion_matrix, iou_from_confusion
from vissl_lite.eval.plots import bar_chart
from vissl_lite.eval.seg_data import IGNORE, PairTransform, TransformedPairs, load_pairs
from vissl_lite.eval.transfer_sets import add_root_arguments, data_root
from vissl_lite.registry import EVALUATORS

TABLE = "IoU (%) per class"


class FlatFeatureMap(nn.Module):
    """``encoder.feature_map`` flattened to (B, D*h*w), so ``extract_features`` (batched, sharded,
    bf16 on a GPU) and the feature cache take it as they take pooled features."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.feature_map(images).flatten(1)


class LinearSegHead(nn.Module):
    """BatchNorm2d over the feature channels, then a 1x1 convolution to class logits."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(dim)
        self.conv = nn.Conv2d(dim, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(features))


def upsampled_logits(head: nn.Module, features: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(head(features), size=tuple(size), mode="bilinear", align_corners=False)


def train_seg_head(features: torch.Tensor, masks: torch.Tensor, num_classes: int,
                   epochs: int = 20, batch_size: int = 16, lr: float = 1e-3,
                   weight_decay: float = 1e-4, seed: int = 0, device=None) -> LinearSegHead:
    """Fit ``LinearSegHead`` on dense features (N, D, h, w) against masks (N, H, W) (module
    docstring); both stay on the CPU and move to ``device`` one batch at a time."""
    device = torch.device(device or "cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = LinearSegHead(features.shape[1], num_classes).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(features) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=g)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x, y = features[idx].to(device).float(), masks[idx].to(device).long()
            loss = F.cross_entropy(upsampled_logits(head, x, y.shape[-2:]), y, ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


@torch.no_grad()
def evaluate_seg_head(head: nn.Module, features: torch.Tensor, masks: torch.Tensor,
                      num_classes: int, batch_size: int = 16, device=None) -> Dict[str, object]:
    """Per-class IoU, mIoU and pixel accuracy of ``head`` on (features, masks)."""
    device = torch.device(device or "cpu")
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for i in range(0, len(features), batch_size):
        x, y = features[i:i + batch_size].to(device).float(), masks[i:i + batch_size].long()
        pred = upsampled_logits(head, x, y.shape[-2:]).argmax(1).cpu()
        conf += confusion_matrix(pred, y, num_classes, IGNORE)
    return iou_from_confusion(conf)


def dense_features(ctx: EvalContext, split: str, dataset, data_id: str
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D, h, w) float16, masks (N, S, S) uint8) of ``split``, cached on disk."""
    size = ctx.image_size
    with torch.no_grad():
        shape = ctx.encoder.feature_map(torch.zeros(1, 3, size, size, device=ctx.device)).shape[1:]
    n = ctx.subset_size(split)
    if n:
        dataset = Subset(dataset, random_subset(len(dataset), n, ctx.subset_seed(split)))
    card = ctx.info["card"]
    key = cache_key(ctx.info["model_id"], data_id, split, size, n,
                    extra=f"dense|seed{ctx.subset_seed(split)}|{card}")

    def compute():
        a = ctx.args
        f, m = extract_features(FlatFeatureMap(ctx.encoder), dataset, batch_size=a.batch_size,
                                device=ctx.device, num_workers=a.num_workers,
                                precision=a.precision, progress=dist.is_main())
        return f.half(), m.to(torch.uint8)

    cache_dir = None if ctx.args.no_cache else ctx.args.cache_dir
    (feats, masks), ctx.cache_hits[split] = cached_features(cache_dir, f"dense_{key}", compute)
    return feats.view(len(feats), *shape), masks


@EVALUATORS.register("segment", help="dense linear probe: BatchNorm + 1x1 conv on frozen patch "
                                     "tokens / feature maps, mIoU on Pascal VOC 2012 or "
                                     "folder:PATH of image/mask pairs")
class SegmentEvaluator(Evaluator):
    """``train_seg_head`` and ``evaluate_seg_head`` on cached dense features (module docstring)."""

    needs_data = False

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("segment")
        g.add_argument("--seg-data", default="voc2012",
                       help="voc2012 (torchvision's VOCSegmentation under --data-root), or "
                            "folder:PATH with images/<name>.<ext> and masks/<name>.png (class "
                            "index per pixel, 255 ignored), split in train/ and test/ or 80/20")
        add_root_arguments(g, "Pascal VOC 2012 (VOCdevkit/VOC2012, 2 GB)")
        g.add_argument("--seg-epochs", type=int, default=20)
        g.add_argument("--seg-batch-size", type=int, default=16, help="images per step of the head")
        g.add_argument("--seg-lr", type=float, default=1e-3, help="AdamW learning rate")
        g.add_argument("--seg-weight-decay", type=float, default=1e-4)
        g.add_argument("--num-classes", type=int, default=None,
                       help="default: VOC's 21, classes.txt, or the largest mask label + 1")

    def run(self, ctx: EvalContext) -> EvalResult:
        a = ctx.args
        splits, ids, protocol, classes = load_pairs(a.seg_data, data_root(a), a.download, a.seed)
        transform = PairTransform(ctx.info["card"])
        (xtr, mtr), (xte, mte) = (dense_features(ctx, s, TransformedPairs(splits[s], transform),
                                                 ids[s]) for s in ("train", "test"))
        labelled = torch.cat([mtr[mtr != IGNORE], mte[mte != IGNORE]])
        if len(labelled) == 0:
            raise EvalError(f"{a.seg_data}: every mask pixel is {IGNORE} (ignored)")
        num_classes = a.num_classes or (len(classes) if classes else int(labelled.max()) + 1)
        if int(labelled.max()) >= num_classes:
            raise EvalError(f"mask label {int(labelled.max())} >= {num_classes} classes; fix "
                            f"--num-classes or classes.txt")
        head = train_seg_head(xtr, mtr, num_classes, epochs=a.seg_epochs,
                              batch_size=a.seg_batch_size, lr=a.seg_lr,
                              weight_decay=a.seg_weight_decay, seed=a.seed, device=ctx.device)
        scores = evaluate_seg_head(head, xte, mte, num_classes, a.batch_size, ctx.device)
        names = classes or [str(c) for c in range(num_classes)]
        rows = [{"class": names[c], "iou": iou} for c, iou in enumerate(scores["iou"])]
        metrics = {"miou": scores["miou"], "pixel_acc": scores["pixel_acc"]}
        notes = [f"{a.seg_data}: {protocol}; {len(xtr)} / {len(xte)} images, features "
                 f"{tuple(xtr.shape[1:])}, masks {tuple(mtr.shape[1:])}"]
        result = EvalResult(metrics, tables={TABLE: rows}, notes=notes,
                            extra={"protocol": protocol, "num_classes": num_classes})
        path = ctx.figure_path("segment_iou.png")
        if path is not None:
            result.figures["IoU (%) per class"] = bar_chart(
                path, names, {"IoU": scores["iou"]}, "IoU (%)",
                f"linear segmentation: mIoU {scores['miou']:.1f}")
        return result
