"""Label-free geometry of the features: k-means clustering, alignment and uniformity.

- Clustering: k-means (FAISS) on L2-normalised features with as many clusters as classes, scored
  against the labels by adjusted mutual information and adjusted Rand index (scikit-learn's).
- Alignment and uniformity (Wang and Isola, ICML 2020) of normalised features f:

      alignment  = E_{(x, y) positive pair} ||f(x) - f(y)||_2^alpha          (alpha = 2)
      uniformity = log E_{x, y i.i.d.} exp(-t ||f(x) - f(y)||_2^2)            (t = 2)

  lower is better for both; uniformity is taken over all distinct pairs of a sample.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from vissl_lite.errors import EvalError
from vissl_lite.eval.evaluator import EvalContext, EvalResult, Evaluator
from vissl_lite.registry import EVALUATORS
from vissl_lite.eval.knn import faiss_has_gpu
from vissl_lite.eval.transforms import train_probe_transform
from vissl_lite.augment import build_cpu_views
from vissl_lite.augment.config import AugmentConfig
from vissl_lite.augment.spec import ViewSpec


def kmeans(features: torch.Tensor, num_clusters: int, niter: int = 50, nredo: int = 5,
           seed: int = 0) -> torch.Tensor:
    """Cluster assignment (N,) of FAISS k-means on ``features`` (GPU when faiss has it)."""
    import faiss

    if not 1 <= num_clusters <= len(features):
        raise EvalError(f"k-means needs 1 <= num_clusters <= N, got {num_clusters} clusters for "
                        f"{len(features)} samples")
    x = features.float().cpu().contiguous().numpy()
    km = faiss.Kmeans(x.shape[1], num_clusters, niter=niter, nredo=nredo, seed=seed,
                      gpu=faiss_has_gpu(), max_points_per_centroid=max(256, len(x)), verbose=False)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return torch.from_numpy(assign[:, 0].astype(np.int64))


def cluster_metrics(features: torch.Tensor, labels: torch.Tensor, num_clusters: Optional[int] = None,
                    niter: int = 50, nredo: int = 5, seed: int = 0) -> Dict[str, float]:
    """k-means on normalised features vs. labels: {"cluster_ami", "cluster_ari"} (in [-1, 1])."""
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

    if len(features) != len(labels):
        raise EvalError(f"{len(features)} features but {len(labels)} labels")
    num_clusters = num_clusters or int(labels.unique().numel())
    assign = kmeans(F.normalize(features.float(), dim=1), num_clusters, niter, nredo, seed).numpy()
    y = labels.cpu().numpy()
    return {"cluster_ami": float(adjusted_mutual_info_score(y, assign)),
            "cluster_ari": float(adjusted_rand_score(y, assign)),
            "num_clusters": float(num_clusters)}


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    """E ||f(x) - f(y)||^alpha over positive pairs (rows of ``x`` and ``y``), features normalised."""
    if x.shape != y.shape:
        raise EvalError(f"alignment needs paired features of one shape, got {tuple(x.shape)} "
                        f"and {tuple(y.shape)}")
    x, y = F.normalize(x.double(), dim=1), F.normalize(y.double(), dim=1)
    return float((x - y).norm(dim=1).pow(alpha).mean())


def uniformity(x: torch.Tensor, t: float = 2.0, max_samples: int = 5000, seed: int = 0) -> float:
    """log E exp(-t ||f(x_i) - f(x_j)||^2) over distinct pairs i < j (a random subsample if large)."""
    if len(x) < 2:
        raise EvalError("uniformity needs at least two samples")
    if len(x) > max_samples:
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_samples]
        x = x[idx]
    x = F.normalize(x.double(), dim=1)
    sq_dists = torch.pdist(x).pow(2)
    return float(sq_dists.mul(-t).exp().mean().log())


def alignment_uniformity(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0, t: float = 2.0,
                         max_samples: int = 5000) -> Dict[str, float]:
    """Alignment of the pairs (x_i, y_i) and uniformity of x and y together (Wang and Isola 2020)."""
    return {"alignment": alignment(x, y, alpha),
            "uniformity": uniformity(torch.cat([x, y]), t, max_samples)}


def cluster_evaluate(train_features: Optional[torch.Tensor], train_labels: Optional[torch.Tensor],
                     test_features: torch.Tensor, test_labels: torch.Tensor,
                     num_clusters: Optional[int] = None, niter: int = 50, nredo: int = 5,
                     seed: int = 0, t: float = 2.0) -> Dict[str, float]:
    """Clustering metrics and uniformity of the test features (alignment needs view pairs)."""
    out = cluster_metrics(test_features, test_labels, num_clusters, niter, nredo, seed)
    out["uniformity"] = uniformity(test_features, t)
    return out


def positive_pair_alignment(ctx: EvalContext, count: int) -> Tuple[Dict[str, float], str]:
    """Alignment of two augmented views of ``count`` test images (the pretraining recipe if known)."""
    views, recipe = augmented_views(ctx)
    pairs = ctx.dataset("test", lambda img: torch.stack(views(img)[:2]), subset=count,
                        seed=ctx.args.seed + 2)
    torch.manual_seed(ctx.args.seed)
    x = torch.stack([pairs[i][0] for i in range(len(pairs))])
    f1, _ = ctx.extract(x[:, 0])
    f2, _ = ctx.extract(x[:, 1])
    return {"alignment": alignment(f1, f2)}, recipe


def augmented_views(ctx: EvalContext):
    """(image -> list of >= 2 augmented, normalised views, recipe name): the checkpoint's
    pretraining augmentation (SimCLR two-view recipe with its config) when the augment package is
    there, else random resized crop + flip."""
    try:
        views = build_cpu_views(ViewSpec("simclr", 2, 0), ctx.info["augment"] or AugmentConfig(),
                                ctx.image_size)
        return views, "simclr"
    except ImportError:
        crop = train_probe_transform(ctx.image_size, *ctx.mean_std)
        return (lambda img: [crop(img), crop(img)]), "crop+flip"


@EVALUATORS.register("cluster", help="k-means (FAISS) AMI/ARI vs. labels, uniformity, alignment of "
                                     "augmented pairs")
class ClusterEvaluator(Evaluator):
    """``cluster_evaluate`` on the test features, and alignment of ``--pairs`` augmented pairs."""

    needs_labels = needs_test = True
    function = staticmethod(cluster_evaluate)

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("cluster")
        g.add_argument("--num-clusters", type=int, default=None, help="default: number of classes")
        g.add_argument("--pairs", type=int, default=1000,
                       help="test images whose two augmented views measure alignment (0: skip)")

    def run(self, ctx: EvalContext) -> EvalResult:
        xtr, ytr, xte, yte = ctx.labelled_features()
        out = EvalResult(cluster_evaluate(xtr, ytr, xte, yte, num_clusters=ctx.args.num_clusters,
                                          seed=ctx.args.seed))
        if ctx.args.pairs:
            pair, out.extra["pair_views"] = positive_pair_alignment(ctx, ctx.args.pairs)
            out.metrics.update(pair)
        return out
