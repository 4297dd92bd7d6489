"""Label-free geometry of the features: k-means clustering, alignment and uniformity.

- Clustering: k-means (FAISS) on L2-normalised features with as many clusters as classes, scored
  against the labels by adjusted mutual information and adjusted Rand index (scikit-learn's).
- Alignment and uniformity (Wang and Isola, ICML 2020) of normalised features f:

      alignment  = E_{(x, y) positive pair} ||f(x) - f(y)||_2^alpha          (alpha = 2)
      uniformity = log E_{x, y i.i.d.} exp(-t ||f(x) - f(y)||_2^2)            (t = 2)

  lower is better for both; uniformity is taken over all distinct pairs of a sample.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from vissl_lite.errors import EvalError
from vissl_lite.registry import EVALUATORS


def kmeans(features: torch.Tensor, num_clusters: int, niter: int = 50, nredo: int = 5,
           seed: int = 0) -> torch.Tensor:
    """Cluster assignment (N,) of FAISS k-means on ``features`` (GPU when faiss has it)."""
    import faiss

    from vissl_lite.eval.knn import faiss_has_gpu

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


@EVALUATORS.register("cluster", help="k-means (FAISS) AMI/ARI vs. labels, and uniformity")
def cluster_evaluate(train_features: Optional[torch.Tensor], train_labels: Optional[torch.Tensor],
                     test_features: torch.Tensor, test_labels: torch.Tensor,
                     num_clusters: Optional[int] = None, niter: int = 50, nredo: int = 5,
                     seed: int = 0, t: float = 2.0) -> Dict[str, float]:
    """Clustering metrics and uniformity of the test features (alignment needs view pairs)."""
    out = cluster_metrics(test_features, test_labels, num_clusters, niter, nredo, seed)
    out["uniformity"] = uniformity(test_features, t)
    return out
