"""RankMe, k-means clustering scores, alignment and uniformity against their definitions."""
from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

from vissl_lite.eval.rankme import rankme
from vissl_lite.eval import (alignment, alignment_uniformity, cluster_metrics, kmeans,
                             uniformity)
from vissl_lite.registry import EVALUATORS


def test_rankme_equals_its_formula():
    z = torch.randn(200, 32) @ torch.randn(32, 32)
    s = np.linalg.svd(z.double().numpy(), compute_uv=False)
    p = s / np.abs(s).sum() + 1e-7
    assert math.isclose(rankme(z), math.exp(-(p * np.log(p)).sum()), rel_tol=1e-9)


def test_rankme_of_known_spectra():
    q, _ = torch.linalg.qr(torch.randn(100, 100))
    flat_rank_8 = q[:, :8] @ torch.eye(8, 16) * 3.0     # 8 equal singular values, 8 zeros
    assert math.isclose(rankme(flat_rank_8, eps=0.0), 8.0, rel_tol=1e-6)
    collapsed = torch.randn(100, 1) @ torch.randn(1, 16)
    assert rankme(collapsed) < 1.01


def blobs(n, k=4, dim=8, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=1)
    labels = torch.arange(n) % k
    return centers[labels] + spread * torch.randn(n, dim, generator=g), labels


def test_cluster_metrics_equal_sklearn_on_the_assignment():
    x, y = blobs(400, spread=0.6, seed=1)               # overlapping: imperfect clustering
    res = cluster_metrics(x, y, seed=0)
    assign = kmeans(torch.nn.functional.normalize(x, dim=1), 4, seed=0).numpy()
    assert res["cluster_ami"] == adjusted_mutual_info_score(y.numpy(), assign)
    assert res["cluster_ari"] == adjusted_rand_score(y.numpy(), assign)
    assert 0.05 < res["cluster_ami"] < 0.95


def test_separated_clusters_are_recovered_like_sklearn_kmeans():
    x, y = blobs(400, seed=2)
    res = cluster_metrics(x, y)
    assert res["cluster_ami"] > 0.99 and res["cluster_ari"] > 0.99
    sk = KMeans(4, n_init=4, random_state=0).fit_predict(torch.nn.functional.normalize(x, dim=1).numpy())
    assert adjusted_rand_score(y.numpy(), sk) > 0.99
    random_labels = torch.randint(0, 4, (400,), generator=torch.Generator().manual_seed(3))
    assert abs(cluster_metrics(x, random_labels)["cluster_ami"]) < 0.05


def test_alignment_and_uniformity_match_pairwise_loops():
    x, y = torch.randn(30, 5), torch.randn(30, 5)
    xn, yn = (v / v.norm(dim=1, keepdim=True) for v in (x.double(), y.double()))
    align = sum(float((xn[i] - yn[i]).norm() ** 2) for i in range(30)) / 30
    pairs = [float(torch.exp(-2 * (xn[i] - xn[j]).norm() ** 2)) for i in range(30) for j in range(i + 1, 30)]
    assert math.isclose(alignment(x, y), align, rel_tol=1e-9)
    assert math.isclose(uniformity(x), math.log(sum(pairs) / len(pairs)), rel_tol=1e-9)
    both = alignment_uniformity(x, x)
    assert both["alignment"] == 0.0
    assert {"cluster", "knn", "linear", "rankme", "report", "risk", "sslmem", "umap_cluster"} <= set(EVALUATORS.names())
