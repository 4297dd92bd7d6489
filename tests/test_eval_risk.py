"""Risk decomposition (arXiv 2302.03068): the components sum to the total error, and each one
responds to the error source it is meant to measure."""
from __future__ import annotations

import pytest
import torch

from _helpers import gaussian_clusters, one_thread  # noqa: F401 (fixture)
from vissl_lite.errors import EvalError
from vissl_lite.eval.risk import COMPONENTS, risk_decomposition as _risk_decomposition

pytestmark = pytest.mark.usefixtures("one_thread")


def risk_decomposition(*args, **kw):
    return _risk_decomposition(*args, weight_decays=(1e-4, 1e-2), max_iter=100, **kw)


def test_components_sum_to_the_total_test_error():
    xtr, ytr = gaussian_clusters(600, 4, 8, spread=2.5, seed=0)
    xte, yte = gaussian_clusters(200, 4, 8, spread=2.5, seed=1)
    res = risk_decomposition(xtr, ytr, xte, yte, approximation_error=3.0)
    assert sum(res[c] for c in COMPONENTS) == pytest.approx(res["total_error"], abs=1e-9)
    assert res["total_error"] == pytest.approx(res["err_test"], abs=1e-9)
    assert res["approximation"] == 3.0
    assert res["usability"] == pytest.approx(res["err_train_train"] - 3.0)
    assert res["probe_generalization"] == pytest.approx(res["err_heldout"] - res["err_train_train"])
    assert res["encoder_generalization"] == pytest.approx(res["err_test"] - res["err_heldout"])
    assert 0 < res["err_train_train"] < res["err_test"] < 75            # overlapping classes
    assert res["heldout_size"] == 200


def test_each_component_measures_its_own_error_source():
    # separable train and test from one distribution: nothing to decompose
    xtr, ytr = gaussian_clusters(800, 4, 8, spread=0.3, seed=0)
    xte, yte = gaussian_clusters(200, 4, 8, spread=0.3, seed=1)
    clean = risk_decomposition(xtr, ytr, xte, yte)
    assert all(abs(clean[c]) < 1.0 for c in COMPONENTS)
    # the encoder did not see the test distribution: test features are noisier than train ones
    xte_shift, _ = gaussian_clusters(200, 4, 8, spread=4.0, seed=1)
    shifted = risk_decomposition(xtr, ytr, xte_shift, yte)
    assert shifted["encoder_generalization"] > 20 and abs(shifted["usability"]) < 1.0
    # 2-D features where the classes overlap: even the probe fit on all of train errs
    x2, y2 = gaussian_clusters(800, 4, 2, spread=2.0, seed=0)
    x2te, y2te = gaussian_clusters(200, 4, 2, spread=2.0, seed=1)
    assert risk_decomposition(x2, y2, x2te, y2te)["usability"] > 10


def test_unlabelled_or_tiny_train_split_is_refused():
    x, y = gaussian_clusters(10, 2, 4)
    with pytest.raises(EvalError, match="labels are missing"):
        risk_decomposition(x, torch.full_like(y, -1), x, y)
    with pytest.raises(EvalError, match="does not fit"):
        risk_decomposition(x, y, x, y, holdout=10)
