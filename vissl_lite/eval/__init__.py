"""Evaluation of frozen encoders: features, kNN, linear probes, RankMe, clustering, online monitors.

Importing this package registers the evaluators ``knn``, ``linear``, ``rankme`` and ``cluster`` in
``vissl_lite.registry.EVALUATORS``; each takes (train_features, train_labels, test_features,
test_labels, **options) and returns a dict of numbers. ``vissl-lite eval`` is in ``eval/cli.py``.
"""
from vissl_lite.eval.cluster import (alignment, alignment_uniformity, cluster_evaluate,  # noqa: F401
                                     cluster_metrics, kmeans, uniformity)
from vissl_lite.eval.errors import EvalError  # noqa: F401
from vissl_lite.eval.features import cache_key, cached_features, extract_features  # noqa: F401
from vissl_lite.eval.knn import knn_classify, knn_predict, nearest_neighbors  # noqa: F401
from vissl_lite.eval.linear import linear_probe, linear_probe_augmented  # noqa: F401
from vissl_lite.eval.metrics import topk_accuracy  # noqa: F401
from vissl_lite.eval.monitor import OnlineLinearHead, OnlineMonitor  # noqa: F401
from vissl_lite.eval.rankme import rankme, rankme_evaluate  # noqa: F401
