"""Linear probes: a linear classifier on top of the frozen encoder.

Two protocols:

- ``linear_probe`` (fast): on cached features. Features are standardised with the training
  statistics, then multinomial logistic regression minimises

      mean_i CE(W x_i + b, y_i) + wd / 2 * ||W||^2

  by full-batch L-BFGS (or mini-batch SGD for large sets), for each weight decay of a small sweep;
  the one with the best accuracy on a held-out part of train is refit on all of train. This is
  scikit-learn's ``LogisticRegression`` objective with ``C = 1 / (wd * N)``, written in torch so it
  runs on the GPU and on 10^6 x 2048 features in seconds.
- ``linear_probe_augmented`` (standard, as in SimCLR/DINO/MAE): images pass through random resized
  crop + flip and the frozen encoder every epoch; a BatchNorm (no affine, as in MAE) + linear head
  is trained by SGD with momentum and a cosine schedule; top-1/top-5 on the center-cropped test set.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vissl_lite.errors import EvalError
from vissl_lite.eval.evaluator import EvalContext, EvalResult, Evaluator
from vissl_lite.eval.features import extract_features, resolve_device
from vissl_lite.eval.metrics import check_features, topk_accuracy
from vissl_lite.registry import EVALUATORS
from vissl_lite import distributed as dist
from vissl_lite.eval.transforms import train_probe_transform

DEFAULT_WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def _standardize(fit: torch.Tensor, *others: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    mean, std = fit.mean(0), fit.std(0).clamp_min(1e-6)
    return tuple((x - mean) / std for x in (fit, *others))


def _loss(linear: nn.Linear, x: torch.Tensor, y: torch.Tensor, wd: float) -> torch.Tensor:
    return F.cross_entropy(linear(x), y) + 0.5 * wd * linear.weight.pow(2).sum()


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                            optimizer: str = "lbfgs", max_iter: int = 500, epochs: int = 100,
                            lr: float = 0.1, batch_size: int = 1024, seed: int = 0) -> nn.Linear:
    """Minimise mean cross-entropy + wd/2 ||W||^2 of a linear layer on (x, y); returns the layer."""
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(x.shape[1], num_classes).to(x.device)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g).mul_(0.01))
        linear.bias.zero_()
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                tolerance_grad=1e-6, tolerance_change=1e-10,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = _loss(linear, x, y, weight_decay)
            loss.backward()
            return loss

        opt.step(closure)
    elif optimizer == "sgd":
        steps_per_epoch = math.ceil(len(x) / batch_size)
        opt = torch.optim.SGD(linear.parameters(), lr=lr, momentum=0.9, nesterov=True)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g).to(x.device)
            for i in range(0, len(x), batch_size):
                idx = perm[i:i + batch_size]
                opt.zero_grad()
                _loss(linear, x[idx], y[idx], weight_decay).backward()
                opt.step()
                sched.step()
    else:
        raise EvalError(f"linear probe optimizer must be 'lbfgs' or 'sgd', not {optimizer!r}")
    return linear


def linear_probe(*args, **kw) -> Dict[str, float]:
    """Fast linear probe on features (see module docstring); accuracies in %.

    Returns ``linear_top1``, ``linear_top5`` (test), ``linear_train_top1`` (the probe's accuracy
    on its own training features), ``linear_weight_decay`` (chosen) and, when several weight
    decays are swept, ``linear_val_top1`` (the held-out accuracy that chose it). The arguments are
    those of ``linear_probe_sweep``.
    """
    return linear_probe_sweep(*args, **kw)[0]


def linear_probe_sweep(train_features: torch.Tensor, train_labels: torch.Tensor,
                       test_features: torch.Tensor, test_labels: torch.Tensor,
                       weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
                       val_fraction: float = 0.1, optimizer: str = "lbfgs", max_iter: int = 500,
                       epochs: int = 100, lr: float = 0.1, batch_size: int = 1024,
                       num_classes: Optional[int] = None, device=None, seed: int = 0
                       ) -> Tuple[Dict[str, float], List[Dict[str, Any]]]:
    """``linear_probe``'s numbers and its weight-decay sweep: one row per weight decay with the
    held-out top-1 (%) and whether it was chosen (no rows when only one weight decay is given)."""
    check_features(train_features, train_labels, test_features, test_labels)
    weight_decays = sorted(float(w) for w in weight_decays)
    if not weight_decays:
        raise EvalError("linear probe: give at least one weight decay")
    device = resolve_device(device)
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    x, y = train_features.float().to(device), train_labels.long().to(device)
    fit_kw = dict(optimizer=optimizer, max_iter=max_iter, epochs=epochs, lr=lr,
                  batch_size=batch_size, seed=seed)
    out: Dict[str, float] = {}
    sweep: List[Dict[str, Any]] = []
    best_wd = weight_decays[0]
    if len(weight_decays) > 1:
        n_val = int(round(val_fraction * len(x)))
        if not 0 < n_val < len(x):
            raise EvalError(f"linear probe: val_fraction={val_fraction} leaves no held-out or no "
                            f"training samples out of {len(x)}")
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(device)
        fit_idx, val_idx = perm[n_val:], perm[:n_val]
        x_fit, x_val = _standardize(x[fit_idx], x[val_idx])
        best_acc = -1.0
        for wd in weight_decays:
            linear = fit_logistic_regression(x_fit, y[fit_idx], num_classes, wd, **fit_kw)
            with torch.no_grad():
                acc = topk_accuracy(linear(x_val), y[val_idx], (1,))[1]
            sweep.append({"weight_decay": wd, "val_top1": acc})
            if acc >= best_acc:  # ties go to the stronger regularisation (sweep is ascending)
                best_acc, best_wd = acc, wd
        out["linear_val_top1"] = best_acc
        for row in sweep:
            row["chosen"] = "yes" if row["weight_decay"] == best_wd else ""
    x_train, x_test = _standardize(x, test_features.float().to(device))
    linear = fit_logistic_regression(x_train, y, num_classes, best_wd, **fit_kw)
    with torch.no_grad():
        acc = topk_accuracy(linear(x_test), test_labels.long().to(device))
        train_acc = topk_accuracy(linear(x_train), y, (1,))[1]
    out.update(linear_top1=acc[1], linear_top5=acc[5], linear_train_top1=train_acc,
               linear_weight_decay=float(best_wd))
    return out, sweep


class ProbeHead(nn.Module):
    """BatchNorm without affine parameters (a running standardisation, as in MAE) + linear layer."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(num_features, affine=False, eps=1e-6)
        self.linear = nn.Linear(num_features, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


def linear_probe_augmented(encoder: nn.Module, train_dataset: Dataset, test_dataset: Dataset,
                           num_classes: int, epochs: int = 100, batch_size: int = 256,
                           lr: float = 0.1, weight_decay: float = 0.0, momentum: float = 0.9,
                           device=None, num_workers: int = 4, precision: str = "auto",
                           seed: int = 0, progress: bool = False) -> Dict[str, float]:
    """Standard linear evaluation through the frozen encoder with augmentation (module docstring).

    ``train_dataset`` must apply the training augmentation (``transforms.train_probe_transform``)
    and ``test_dataset`` the evaluation transform; both yield (image tensor, label). The learning
    rate is scaled linearly with the batch size (``lr * batch_size / 256``).
    """
    device = resolve_device(device)
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    encoder = encoder.to(device).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    num_features = getattr(encoder, "num_features", None)
    if num_features is None:
        with torch.no_grad():
            num_features = encoder(train_dataset[0][0].unsqueeze(0).to(device)).shape[1]
    head = ProbeHead(num_features, num_classes).to(device)
    loader = DataLoader(train_dataset, batch_size=batch_size, shuffle=True, drop_last=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed),
                        persistent_workers=num_workers > 0)
    if len(loader) == 0:
        raise EvalError("linear probe: the training set is empty")
    opt = torch.optim.SGD(head.parameters(), lr=lr * batch_size / 256, momentum=momentum,
                          weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    epoch_iter = range(epochs)
    if progress:
        from tqdm.auto import tqdm
        epoch_iter = tqdm(epoch_iter, desc="linear probe", leave=False, disable=None)  # tty only
    loss = torch.tensor(float("nan"))
    for _ in epoch_iter:
        head.train()
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
                feats = encoder(images)
            loss = F.cross_entropy(head(feats.float()), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    test_feats, test_labels = extract_features(encoder, test_dataset, batch_size=batch_size,
                                               device=device, num_workers=num_workers,
                                               precision=precision)
    with torch.no_grad():
        acc = topk_accuracy(head(test_feats.to(device)), test_labels.to(device))
    return {"linear_top1": acc[1], "linear_top5": acc[5], "linear_train_loss": float(loss.detach())}


SWEEP_TITLE = "weight-decay sweep (top-1 % on the held-out 10% of train)"


def shared_probe(ctx: EvalContext) -> Tuple[Dict[str, float], List[Dict[str, Any]]]:
    """The fast probe of ``ctx`` (``linear_probe_sweep`` with the ``linear`` options), fitted
    once per context: the ``linear`` and ``risk`` evaluators report the same probe."""
    if "linear_probe" not in ctx.memo:
        a = ctx.args
        xtr, ytr, xte, yte = ctx.labelled_features()
        ctx.memo["linear_probe"] = linear_probe_sweep(
            xtr, ytr, xte, yte, weight_decays=getattr(a, "weight_decays", DEFAULT_WEIGHT_DECAYS),
            optimizer=getattr(a, "optimizer", "lbfgs"), epochs=getattr(a, "epochs", 100),
            lr=getattr(a, "lr", 0.1), num_classes=ctx.num_classes(), device=ctx.device,
            seed=a.seed)
    return ctx.memo["linear_probe"]


@EVALUATORS.register("linear", help="linear probe: logistic regression on frozen features with a "
                                    "weight-decay sweep, or the augmented SGD protocol")
class LinearEvaluator(Evaluator):
    """``linear_probe`` on cached features (fast) or ``linear_probe_augmented`` (standard)."""

    needs_labels = needs_test = True
    function = staticmethod(linear_probe)

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("linear")
        g.add_argument("--mode", default="fast", choices=["fast", "standard"],
                       help="fast: logistic regression on cached features with a weight-decay sweep; "
                            "standard: crop+flip through the encoder for --epochs")
        g.add_argument("--weight-decays", type=float, nargs="+", default=list(DEFAULT_WEIGHT_DECAYS))
        g.add_argument("--optimizer", default="lbfgs", choices=["lbfgs", "sgd"], help="fast mode")
        g.add_argument("--epochs", type=int, default=100, help="standard mode, or fast mode with sgd")
        g.add_argument("--lr", type=float, default=0.1, help="SGD lr (standard mode: per 256 images)")

    def run(self, ctx: EvalContext) -> EvalResult:
        a = ctx.args
        if a.mode == "fast":
            metrics, sweep = shared_probe(ctx)
            return EvalResult(dict(metrics), tables={SWEEP_TITLE: sweep} if sweep else {})
        num_classes = ctx.num_classes()
        aug_train = ctx.dataset("train", train_probe_transform(ctx.image_size, *ctx.mean_std))
        return EvalResult(linear_probe_augmented(
            ctx.encoder, aug_train, ctx.dataset("test"), num_classes, epochs=a.epochs,
            batch_size=a.batch_size, lr=a.lr, device=ctx.device, num_workers=a.num_workers,
            precision=a.precision, seed=a.seed, progress=dist.is_main()))
