"""Clustering of unseen data with frozen embeddings (Lowe et al. 2024, arXiv 2406.02465).

The recipe the paper recommends after comparing encoders, reducers and clusterers:

1. embed the images with the frozen encoder (no fine-tuning);
2. reduce with UMAP: ``n_neighbors=30, min_dist=0, n_components=50``, Euclidean metric;
3. cluster the reduced embeddings with agglomerative clustering (Ward linkage), with K clusters
   when K is known (the number of classes), else with the distance threshold (equivalently the
   cut of the Ward tree) that maximises the silhouette score in the reduced space; or HDBSCAN
   (``sklearn.cluster.HDBSCAN``), which finds K itself and marks outliers as noise (-1);
4. score: adjusted mutual information (AMI) against the labels when they exist, and the
   silhouette score (Euclidean) in the raw and in the UMAP space, the label-free proxy the paper
   finds highly correlated with AMI. HDBSCAN's noise points count as one more cluster for AMI (as
   scikit-learn scores any label) and are left out of the silhouette scores.

umap-learn is an optional dependency: ``pip install vissl_lite[cluster]`` (or ``umap-learn``).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from vissl_lite.errors import EvalError
from vissl_lite.eval.evaluator import EvalContext, EvalResult, Evaluator
from vissl_lite.registry import EVALUATORS
from vissl_lite.eval.plots import scatter_2d

UMAP_MISSING = ("umap_cluster needs umap-learn, an optional dependency: pip install umap-learn "
                "(or pip install 'vissl_lite[cluster]')")
ALGORITHMS = ("agglomerative", "hdbscan")


def _umap():
    try:
        import umap
    except ImportError:
        raise EvalError(UMAP_MISSING) from None
    return umap


def umap_reduce(features: torch.Tensor | np.ndarray, n_components: int = 50, n_neighbors: int = 30,
                min_dist: float = 0.0, seed: int = 0) -> np.ndarray:
    """UMAP of ``features`` (N, D) to ``n_components`` dimensions (at most N - 2, as UMAP's
    spectral initialisation needs), Euclidean metric; float32 (N, n_components)."""
    umap = _umap()
    x = np.asarray(features.float().numpy() if isinstance(features, torch.Tensor) else features,
                   dtype=np.float32)
    if len(x) < 4:
        raise EvalError(f"UMAP needs at least 4 samples, got {len(x)}")
    n_components = max(1, min(n_components, len(x) - 2))
    reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(x) - 1), n_components=n_components,
                        min_dist=min_dist, metric="euclidean", random_state=seed,
                        transform_seed=seed, n_jobs=1)
    return reducer.fit_transform(x).astype(np.float32)


def silhouette(x: np.ndarray, assign: np.ndarray, max_samples: int = 10000, seed: int = 0) -> float:
    """Euclidean silhouette of ``assign`` on ``x`` without noise points (-1); NaN if < 2 clusters."""
    from sklearn.metrics import silhouette_score

    keep = assign >= 0
    x, assign = x[keep], assign[keep]
    if len(np.unique(assign)) < 2 or len(np.unique(assign)) >= len(x):
        return float("nan")
    size = min(max_samples, len(x)) if len(x) > max_samples else None
    return float(silhouette_score(x, assign, metric="euclidean", sample_size=size, random_state=seed))


def ward_clusters(x: np.ndarray, num_clusters: Optional[int] = None,
                  candidates: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, Dict[str, float]]:
    """Ward agglomerative clustering of ``x``: K = ``num_clusters``, or the cut of the Ward tree
    (a distance threshold) with the best silhouette among ``candidates`` K (default 2..50)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    if len(x) < 3:
        raise EvalError(f"agglomerative clustering needs at least 3 samples, got {len(x)}")
    tree = linkage(x.astype(np.float64), method="ward")
    if num_clusters:
        if not 1 <= num_clusters <= len(x):
            raise EvalError(f"num_clusters={num_clusters} must be between 1 and {len(x)}")
        return fcluster(tree, num_clusters, criterion="maxclust") - 1, {"num_clusters": num_clusters}
    ks = [k for k in (candidates or range(2, 51)) if 2 <= k < len(x)]
    best: Tuple[float, int, np.ndarray] = (-2.0, 0, np.zeros(len(x), dtype=np.int64))
    for k in ks:
        assign = fcluster(tree, k, criterion="maxclust") - 1
        score = silhouette(x, assign)
        if score > best[0]:
            best = (score, k, assign)
    score, k, assign = best
    # the threshold: any height between the merges that leave k and k - 1 clusters cuts the tree at k
    heights = tree[:, 2]
    threshold = float((heights[-k] + heights[-k + 1]) / 2) if k >= 2 else float(heights[-1])
    return assign, {"num_clusters": k, "distance_threshold": threshold}


def hdbscan_clusters(x: np.ndarray, min_cluster_size: int = 5) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    return HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit_predict(x)


def umap_cluster(features: torch.Tensor, labels: Optional[torch.Tensor] = None,
                 num_clusters: Optional[int] = None, algorithm: str = "agglomerative",
                 n_components: int = 50, n_neighbors: int = 30, min_cluster_size: int = 5,
                 seed: int = 0, return_embedding: bool = False):
    """Cluster ``features`` as in the module docstring; returns the metrics (and, with
    ``return_embedding``, also (assignment, UMAP embedding)).

    ``labels`` (N,) with every label >= 0 gives the AMI and, for agglomerative clustering without
    ``num_clusters``, K = the number of classes; ``labels`` None or with -1 entries means no labels,
    and K is chosen by the silhouette in UMAP space.
    """
    from sklearn.metrics import adjusted_mutual_info_score

    if algorithm not in ALGORITHMS:
        raise EvalError(f"clustering algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
    raw = features.float().numpy()
    y = labels.cpu().numpy() if labels is not None else None
    labelled = y is not None and len(y) == len(raw) and bool((y >= 0).all())
    reduced = umap_reduce(raw, n_components, n_neighbors, seed=seed)
    out: Dict[str, float] = {}
    if algorithm == "agglomerative":
        k = num_clusters or (int(len(np.unique(y))) if labelled else None)
        assign, info = ward_clusters(reduced, k)
        out.update({k_: float(v) for k_, v in info.items()})
    else:
        assign = hdbscan_clusters(reduced, min_cluster_size)
        out["num_clusters"] = float(len(np.unique(assign[assign >= 0])))
        out["noise_fraction"] = float((assign < 0).mean())
    if labelled:
        out["ami"] = float(adjusted_mutual_info_score(y, assign))
    out["silhouette_raw"] = silhouette(raw, assign, seed=seed)
    out["silhouette_umap"] = silhouette(reduced, assign, seed=seed)
    out["umap_components"] = float(reduced.shape[1])
    if return_embedding:
        return out, assign, reduced
    return out


@EVALUATORS.register("umap_cluster", help="clustering of unseen data: UMAP + Ward agglomerative or "
                                          "HDBSCAN, AMI and silhouette (label-free proxy), 2-D scatter")
class UMAPClusterEvaluator(Evaluator):
    """``umap_cluster`` on the test split (train when there is none) and a 2-D UMAP scatter (PNG)."""

    function = staticmethod(umap_cluster)

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("umap_cluster")
        g.add_argument("--algorithm", default="agglomerative", choices=ALGORITHMS)
        g.add_argument("--clusters", type=int, default=None,
                       help="K for agglomerative (default: number of classes when labelled, else "
                            "the Ward-tree cut with the best silhouette in UMAP space)")
        g.add_argument("--umap-components", type=int, default=50)
        g.add_argument("--umap-neighbors", type=int, default=30)
        g.add_argument("--min-cluster-size", type=int, default=5, help="HDBSCAN")

    @classmethod
    def unavailable(cls) -> Optional[str]:
        import importlib.util

        return None if importlib.util.find_spec("umap") else UMAP_MISSING

    def run(self, ctx: EvalContext) -> EvalResult:
        a = ctx.args
        split = "test" if ctx.has_split("test") else "train"
        x, y = ctx.features(split)
        labelled = ctx.has_labels(split)
        metrics, assign, reduced = umap_cluster(
            x, y if labelled else None, num_clusters=a.clusters, algorithm=a.algorithm,
            n_components=a.umap_components, n_neighbors=a.umap_neighbors,
            min_cluster_size=a.min_cluster_size, seed=a.seed, return_embedding=True)
        out = EvalResult(metrics, extra={"cluster_split": split})
        if not labelled:
            out.notes.append(f"the {split} split has no labels: no AMI; silhouette is the proxy")
        path = ctx.figure_path("umap.png")
        if path is not None:
            flat = umap_reduce(x, n_components=2, n_neighbors=a.umap_neighbors, seed=a.seed)
            colours, names = (y.numpy(), ctx.classes()) if labelled else (assign, None)
            what = "label" if labelled else f"{a.algorithm} cluster"
            out.figures[f"2-D UMAP of the {split} features, coloured by {what}"] = scatter_2d(
                path, flat, colours, f"UMAP of {len(x)} {split} images ({what})", names)
        return out
