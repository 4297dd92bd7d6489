"""Weighted k-nearest-neighbour classifier on frozen features (Wu et al. 2018, InstDisc; DINO).

Features are L2-normalised; each test sample takes its k most cosine-similar training samples,
and each neighbour votes for its label with weight exp(similarity / T):

    score(c) = sum_{i in topk} exp(s_i / T) * [y_i == c],   prediction = argmax_c score(c)

Two exact backends find the neighbours: FAISS ``IndexFlatIP`` (on the GPU when faiss was built
with GPU support and CUDA is present) and a chunked torch matmul (any device, no extra library).
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from vissl_lite.errors import EvalError
from vissl_lite.eval.evaluator import EvalContext, EvalResult, Evaluator
from vissl_lite.eval.metrics import check_features, topk_accuracy
from vissl_lite.registry import EVALUATORS
from vissl_lite.eval.plots import line_plot

BACKENDS = ("auto", "faiss", "torch")


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def faiss_has_gpu() -> bool:
    faiss = _faiss()
    return bool(faiss is not None and hasattr(faiss, "StandardGpuResources")
                and torch.cuda.is_available() and faiss.get_num_gpus() > 0)


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise EvalError(f"unknown kNN backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "faiss" if _faiss() is not None else "torch"
    if backend == "faiss" and _faiss() is None:
        raise EvalError("backend 'faiss' needs the faiss package: pip install faiss-cpu "
                        "(or faiss-gpu), or use --backend torch")
    return backend


def _search_faiss(bank: torch.Tensor, queries: torch.Tensor, k: int):
    faiss = _faiss()
    bank_np = bank.float().cpu().contiguous().numpy()
    index = faiss.IndexFlatIP(bank_np.shape[1])
    if faiss_has_gpu():
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(bank_np)
    sims, idx = index.search(queries.float().cpu().contiguous().numpy(), k)
    return torch.from_numpy(sims), torch.from_numpy(idx).long()


def _search_torch(bank: torch.Tensor, queries: torch.Tensor, k: int, chunk: int,
                  device: Optional[torch.device]):
    device = device or bank.device
    bank = bank.to(device, torch.float32)
    sims, idx = [], []
    for i in range(0, len(queries), chunk):
        s = queries[i:i + chunk].to(device, torch.float32) @ bank.T
        top = s.topk(k, dim=1)
        sims.append(top.values.cpu())
        idx.append(top.indices.cpu())
    return torch.cat(sims), torch.cat(idx)


def nearest_neighbors(bank: torch.Tensor, queries: torch.Tensor, k: int, backend: str = "auto",
                      chunk: int = 1024, device: Optional[Union[str, torch.device]] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` inner products of ``queries`` against ``bank``: (similarities, indices), (Q, k)."""
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise EvalError(f"feature shapes do not match: bank {tuple(bank.shape)}, queries "
                        f"{tuple(queries.shape)}; both must be (N, D) with the same D")
    if not 1 <= k <= len(bank):
        raise EvalError(f"k={k} must be between 1 and the number of training samples ({len(bank)})")
    if resolve_backend(backend) == "faiss":
        return _search_faiss(bank, queries, k)
    return _search_torch(bank, queries, k, chunk, torch.device(device) if device else None)


def knn_scores(sims: torch.Tensor, neighbor_labels: torch.Tensor, num_classes: int,
               temperature: float) -> torch.Tensor:
    """Temperature-weighted votes (Q, C) from the neighbours' similarities and labels (Q, k)."""
    weights = (sims / temperature).exp()
    votes = F.one_hot(neighbor_labels, num_classes).to(weights.dtype)
    return (votes * weights.unsqueeze(-1)).sum(1)


def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                k: Union[int, Iterable[int]] = 20, temperature: float = 0.07, backend: str = "auto",
                num_classes: Optional[int] = None, chunk: int = 1024, device=None
                ) -> Dict[int, torch.Tensor]:
    """Class scores (Q, C) of the weighted kNN classifier for each ``k`` (one neighbour search)."""
    ks = [k] if isinstance(k, int) else sorted(set(int(x) for x in k))
    num_classes = num_classes or int(train_labels.max()) + 1
    bank = F.normalize(train_features.float(), dim=1)
    queries = F.normalize(test_features.float(), dim=1)
    sims, idx = nearest_neighbors(bank, queries, max(ks), backend, chunk, device)
    neighbor_labels = train_labels.long().cpu()[idx]
    return {kk: knn_scores(sims[:, :kk], neighbor_labels[:, :kk], num_classes, temperature) for kk in ks}


def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, k: Union[int, Iterable[int]] = (20, 200),
                 temperature: float = 0.07, backend: str = "auto", num_classes: Optional[int] = None,
                 chunk: int = 1024, device=None) -> Dict[str, float]:
    """Top-1/top-5 accuracy (%) of the weighted kNN classifier: {"knn_top1@20": ..., "knn_top5@20": ...}.

    A ``k`` larger than the training set is clipped to its size.
    """
    check_features(train_features, train_labels, test_features, test_labels)
    ks = [k] if isinstance(k, int) else list(k)
    ks = sorted(set(min(int(x), len(train_features)) for x in ks))
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_predict(train_features, train_labels, test_features, ks, temperature, backend,
                         num_classes, chunk, device)
    out: Dict[str, float] = {}
    for kk, s in scores.items():
        acc = topk_accuracy(s, test_labels.long().cpu())
        out[f"knn_top1@{kk}"] = acc[1]
        out[f"knn_top5@{kk}"] = acc[5]
    return out


CURVE_KS = (1, 2, 5, 10, 20, 50, 100, 200, 500)


@EVALUATORS.register("knn", help="weighted kNN classifier (cosine, T-weighted votes; DINO/InstDisc), "
                                 "top-1 vs k curve")
class KNNEvaluator(Evaluator):
    """``knn_classify`` on train -> test features, and top-1 accuracy over a range of k (PNG)."""

    needs_labels = needs_test = True
    function = staticmethod(knn_classify)

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("knn")
        g.add_argument("--k", type=int, nargs="+", default=[20, 200], help="k of the table")
        g.add_argument("--k-curve", type=int, nargs="*", default=list(CURVE_KS),
                       help="k of the accuracy-vs-k curve (none: no curve)")
        g.add_argument("--temperature", type=float, default=0.07)
        g.add_argument("--backend", default="auto", choices=BACKENDS)

    def run(self, ctx: EvalContext) -> EvalResult:
        xtr, ytr, xte, yte = ctx.labelled_features()
        a = ctx.args
        curve = sorted(set(min(k, len(xtr)) for k in (a.k_curve or [])))
        res = knn_classify(xtr, ytr, xte, yte, k=sorted(set(a.k) | set(curve)),
                           temperature=a.temperature, backend=a.backend,
                           num_classes=ctx.num_classes(), device=ctx.device)
        shown = {min(k, len(xtr)) for k in a.k}
        table = {name: v for name, v in res.items() if int(name.split("@")[1]) in shown}
        out = EvalResult(table)
        if len(curve) > 1:
            rows = [{"k": k, "top1": res[f"knn_top1@{k}"], "top5": res[f"knn_top5@{k}"]} for k in curve]
            out.tables["kNN accuracy vs k"] = rows
            path = ctx.figure_path("knn_vs_k.png")
            if path is not None:
                out.figures["kNN accuracy (%) vs number of neighbours k"] = line_plot(
                    path, curve, {"top-1": [r["top1"] for r in rows], "top-5": [r["top5"] for r in rows]},
                    "k", "accuracy (%)", f"kNN (T={a.temperature})", logx=True)
        return out
