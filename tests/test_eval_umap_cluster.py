"""UMAP + agglomerative/HDBSCAN clustering of unseen data (arXiv 2406.02465) on blobs with known answers."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from _helpers import one_thread  # noqa: F401 (fixture)

from vissl_lite.errors import EvalError
from vissl_lite.eval.umap_clustering import UMAPClusterEvaluator, umap_cluster, ward_clusters

pytestmark = pytest.mark.usefixtures("one_thread")

pytest.importorskip("umap", reason="umap-learn not installed (the [cluster] extra)")


def blobs(n=240, k=4, dim=24, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, dim, generator=g) * 4
    labels = torch.arange(n) % k
    return centers[labels] + spread * torch.randn(n, dim, generator=g), labels


def test_separated_blobs_give_ami_one_and_permuted_labels_the_same_ami():
    x, y = blobs()
    res = umap_cluster(x, y, n_components=10)
    assert res["ami"] > 0.99 and res["num_clusters"] == 4
    assert res["silhouette_umap"] > 0.5 and res["silhouette_raw"] > 0.5
    perm = torch.tensor([2, 0, 3, 1])
    assert umap_cluster(x, perm[y], n_components=10)["ami"] == res["ami"]
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    assert abs(umap_cluster(x, shuffled, n_components=10)["ami"]) < 0.05


def test_without_labels_k_is_the_silhouette_best_cut_and_hdbscan_finds_the_blobs():
    x, y = blobs(k=3, seed=2)
    res = umap_cluster(x, None, n_components=10)
    assert res["num_clusters"] == 3 and "ami" not in res and res["distance_threshold"] > 0
    unlabelled = torch.full_like(y, -1)                  # unlabelled data sets carry -1
    assert "ami" not in umap_cluster(x, unlabelled, n_components=10)
    hdb = umap_cluster(x, y, algorithm="hdbscan", n_components=10, min_cluster_size=10)
    assert hdb["ami"] > 0.95 and hdb["num_clusters"] == 3


def test_ward_cut_with_the_best_silhouette_on_plain_points():
    g = np.random.default_rng(0)
    x = np.concatenate([g.normal(c, 0.1, (30, 2)) for c in ((0, 0), (5, 0), (0, 5), (5, 5), (10, 10))])
    assign, info = ward_clusters(x)
    assert info["num_clusters"] == 5 and len(np.unique(assign)) == 5
    assert len(np.unique(ward_clusters(x, 2)[0])) == 2


def test_missing_umap_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(EvalError, match="pip install umap-learn"):
        umap_cluster(*blobs())
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert "umap-learn" in UMAPClusterEvaluator.unavailable()
