"""kNN classifier: both backends agree, the weighted vote equals its formula, known answers."""
from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

import _helpers

from vissl_lite.eval import EvalError, knn_classify, knn_predict
from vissl_lite.registry import EVALUATORS


gaussian_clusters = partial(_helpers.gaussian_clusters, num_classes=10, dim=32, center_seed=123, center_scale=3.0)


def test_faiss_and_torch_backends_give_the_same_predictions():
    xtr, ytr = gaussian_clusters(1500, spread=8.0, seed=1)   # overlapping: far from 100%
    xte, yte = gaussian_clusters(400, spread=8.0, seed=2)
    a = knn_predict(xtr, ytr, xte, k=(20, 200), backend="faiss")
    b = knn_predict(xtr, ytr, xte, k=(20, 200), backend="torch", chunk=64)
    for k in (20, 200):
        assert torch.equal(a[k].argmax(1), b[k].argmax(1))
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=0)
    ra = knn_classify(xtr, ytr, xte, yte, backend="faiss")
    rb = knn_classify(xtr, ytr, xte, yte, backend="torch")
    assert ra == rb
    assert 30 < ra["knn_top1@20"] < 99


def test_weighted_vote_equals_formula():
    xtr, ytr = torch.randn(50, 8), torch.randint(0, 4, (50,))
    xte = torch.randn(7, 8)
    k, t = 5, 0.1
    scores = knn_predict(xtr, ytr, xte, k=k, temperature=t, backend="torch")[k]
    bank, q = F.normalize(xtr, dim=1), F.normalize(xte, dim=1)
    for i in range(len(xte)):
        sims = [(float(q[i] @ bank[j]), int(ytr[j])) for j in range(len(bank))]
        sims.sort(reverse=True)
        expected = [0.0] * 4
        for s, y in sims[:k]:
            expected[y] += math.exp(s / t)
        torch.testing.assert_close(scores[i], torch.tensor(expected), rtol=1e-4, atol=1e-6)


def test_separable_clusters_give_100_and_random_labels_give_chance():
    xtr, ytr = gaussian_clusters(2000, seed=3)
    xte, yte = gaussian_clusters(500, seed=4)
    res = knn_classify(xtr, ytr, xte, yte, k=(20, 200))
    assert res["knn_top1@20"] == 100.0 and res["knn_top1@200"] == 100.0
    g = torch.Generator().manual_seed(5)
    rand = knn_classify(xtr, torch.randint(0, 10, (2000,), generator=g), xte,
                        torch.randint(0, 10, (500,), generator=g), k=20)
    assert 5.0 < rand["knn_top1@20"] < 16.0          # chance is 10%; 500 samples: sd 1.3
    assert 40.0 < rand["knn_top5@20"] < 60.0         # chance is 50%


def test_k_is_clipped_to_the_bank_and_errors_are_clear():
    xtr, ytr = gaussian_clusters(30, num_classes=3)
    res = knn_classify(xtr, ytr, xtr, ytr, k=(20, 200), backend="torch")
    assert set(res) == {"knn_top1@20", "knn_top5@20", "knn_top1@30", "knn_top5@30"}
    with pytest.raises(EvalError, match="differ in length"):
        knn_classify(xtr, ytr[:-1], xtr, ytr)
    with pytest.raises(EvalError, match="unknown kNN backend"):
        knn_classify(xtr, ytr, xtr, ytr, backend="annoy")
    assert EVALUATORS.get("knn").function is knn_classify
