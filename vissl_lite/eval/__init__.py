"""Evaluation of frozen encoders: features, kNN, linear probes, RankMe, clustering, transfer, dense
linear segmentation, online monitors.

Each evaluator is one module that registers an ``Evaluator`` class (``eval/evaluator.py``: its
CLI options and ``run(context)``) in ``vissl_lite.registry.EVALUATORS``, found by the registry's
discovery, beside plain functions on features for use from Python (``knn_classify``,
``linear_probe``, ``umap_cluster``, ``sslmem_scores``, ``risk_decomposition``, ...).
``vissl-lite eval`` is in ``eval/cli.py``; ``vissl-lite eval report`` (``eval/report.py``) runs all
that apply. The names below load on first use, so that ``vissl_lite.eval.config`` (the
``monitor`` schema) can be imported by ``vissl_lite.config`` without loading the evaluators.
"""
from vissl_lite._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["alignment", "alignment_uniformity", "cluster_evaluate", "cluster_metrics",
                     "kmeans", "uniformity"], "vissl_lite.eval.cluster"),
    "EvalError": "vissl_lite.errors",
    **dict.fromkeys(["EvalContext", "EvalResult", "Evaluator"], "vissl_lite.eval.evaluator"),
    **dict.fromkeys(["risk_decomposition"], "vissl_lite.eval.risk"),
    **dict.fromkeys(["sslmem_scores"], "vissl_lite.eval.sslmem"),
    **dict.fromkeys(["umap_cluster", "umap_reduce"], "vissl_lite.eval.umap_clustering"),
    **dict.fromkeys(["cache_key", "cached_features", "data_fingerprint", "extract_features"], "vissl_lite.eval.features"),
    **dict.fromkeys(["knn_classify", "knn_predict", "nearest_neighbors"], "vissl_lite.eval.knn"),
    **dict.fromkeys(["linear_probe", "linear_probe_augmented"], "vissl_lite.eval.linear"),
    **dict.fromkeys(["confusion_matrix", "iou_from_confusion", "topk_accuracy"],
                    "vissl_lite.eval.metrics"),
    **dict.fromkeys(["evaluate_seg_head", "train_seg_head"], "vissl_lite.eval.segment"),
    **dict.fromkeys(["BENCHMARKS", "load_benchmark", "per_class_split"],
                    "vissl_lite.eval.transfer_sets"),
    # the `vissl-lite eval` command (vissl_lite.cli reaches it here, loading torch only for eval)
    **dict.fromkeys(["add_eval_arguments", "run_eval_cli"], "vissl_lite.eval.cli"),
    "run_compare": "vissl_lite.eval.compare",
    **dict.fromkeys(["add_encoder_arguments", "load_encoder"], "vissl_lite.eval.cli"),
    "embed_images": "vissl_lite.eval.embed",
    **dict.fromkeys(["OnlineLinearHead", "OnlineMonitor"], "vissl_lite.eval.monitor"),
    # "rankme" is the module vissl_lite.eval.rankme (a package attribute once imported), so the
    # function is only exported from there: from vissl_lite.eval.rankme import rankme
    **dict.fromkeys(["rankme_evaluate", "singular_values"], "vissl_lite.eval.rankme"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
