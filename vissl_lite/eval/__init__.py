"""Evaluation of frozen encoders: features, kNN, linear probes, RankMe, clustering, online monitors.

Each evaluator module registers itself in ``vissl_lite.registry.EVALUATORS`` (found by the
registry's discovery); each takes (train_features, train_labels, test_features, test_labels,
**options) and returns a dict of numbers. ``vissl-lite eval`` is in ``eval/cli.py``. The names
below load on first use, so that ``vissl_lite.eval.config`` (the ``monitor`` schema) can be
imported by ``vissl_lite.config`` without loading the evaluators.
"""
from vissl_lite._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["alignment", "alignment_uniformity", "cluster_evaluate", "cluster_metrics",
                     "kmeans", "uniformity"], "vissl_lite.eval.cluster"),
    "EvalError": "vissl_lite.errors",
    **dict.fromkeys(["cache_key", "cached_features", "extract_features"], "vissl_lite.eval.features"),
    **dict.fromkeys(["knn_classify", "knn_predict", "nearest_neighbors"], "vissl_lite.eval.knn"),
    **dict.fromkeys(["linear_probe", "linear_probe_augmented"], "vissl_lite.eval.linear"),
    "topk_accuracy": "vissl_lite.eval.metrics",
    **dict.fromkeys(["OnlineLinearHead", "OnlineMonitor"], "vissl_lite.eval.monitor"),
    **dict.fromkeys(["rankme", "rankme_evaluate"], "vissl_lite.eval.rankme"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
