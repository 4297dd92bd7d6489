"""SSL risk decomposition (Dubois, Hashimoto and Liang, ICML 2023, arXiv 2302.03068).

The test error of a linear probe on a frozen SSL encoder is split into four components, each the
difference between the errors of two settings of increasing difficulty. With err(A -> B) the
top-1 error (%) on B of a linear probe trained on A, ``train`` the encoder's pretraining split,
``S`` a held-out part of train of |test| images (at most half of train) and ``train \\ S`` the rest
(the splits of the paper's ``main.py``: ``train-sbst-ntest`` and ``train-cmplmnt-ntest``):

    approximation      = A              the training error of a supervised model with the same
                                        architecture (the paper reads it off a supervised encoder);
                                        given by the caller, 0 when unknown, so that usability then
                                        holds it too
    usability          = err(train -> train) - A
                                        what the best linear probe on the SSL representation misses
                                        with unlimited probe data: its training error (ERM, the
                                        smallest weight decay of the sweep)
    probe generalisation = err(train \\ S -> S) - err(train -> train)
                                        the cost of fitting the probe on finite data: error on
                                        images the encoder was pretrained on but the probe never saw
    encoder generalisation = err(train \\ S -> test) - err(train \\ S -> S)
                                        the cost of the encoder not having seen the test images in
                                        pretraining
    total              = err(train \\ S -> test)

so the components sum to the total error exactly (a telescoping sum). The probe on ``train \\ S``
takes its weight decay from a held-out sweep inside ``train \\ S`` as ``linear_probe`` does; all
probes are ``linear.fit_logistic_regression`` on standardised features.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from vissl_lite.errors import EvalError
from vissl_lite.eval.evaluator import EvalContext, EvalResult, Evaluator
from vissl_lite.eval.linear import (DEFAULT_WEIGHT_DECAYS, _standardize, fit_logistic_regression,
                                    linear_probe)
from vissl_lite.eval.metrics import check_features, topk_accuracy
from vissl_lite.registry import EVALUATORS

COMPONENTS = ("approximation", "usability", "probe_generalization", "encoder_generalization")


def _error(linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 - topk_accuracy(linear(x), y, (1,))[1]


def risk_decomposition(train_features: torch.Tensor, train_labels: torch.Tensor,
                       test_features: torch.Tensor, test_labels: torch.Tensor,
                       approximation_error: float = 0.0,
                       weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
                       holdout: Optional[int] = None, num_classes: Optional[int] = None,
                       max_iter: int = 500, seed: int = 0, device=None) -> Dict[str, float]:
    """The four error components (%) of the module docstring, their sum ``total_error`` and the
    errors they come from (``err_train_train``, ``err_heldout``, ``err_test``)."""
    check_features(train_features, train_labels, test_features, test_labels)
    n = len(train_features)
    holdout = holdout or min(len(test_features), n // 2)
    if not 1 <= holdout < n:
        raise EvalError(f"risk decomposition: a held-out part of {holdout} images does not fit a "
                        f"train split of {n}")
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    dev = torch.device(device) if device is not None else torch.device("cpu")
    x, y = train_features.float().to(dev), train_labels.long().to(dev)
    xte, yte = test_features.float().to(dev), test_labels.long().to(dev)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(dev)
    held, rest = perm[:holdout], perm[holdout:]

    # err(train -> train): ERM on all of train, training error
    x_all, = _standardize(x)
    erm = fit_logistic_regression(x_all, y, num_classes, min(weight_decays), max_iter=max_iter,
                                  seed=seed)
    err_tt = _error(erm, x_all, y)
    # err(train \ S -> S) and err(train \ S -> test): one probe, weight decay from a sweep in train \ S
    wd = linear_probe(x[rest], y[rest], x[held], y[held], weight_decays=weight_decays,
                      max_iter=max_iter, num_classes=num_classes, device=dev,
                      seed=seed)["linear_weight_decay"]
    x_rest, x_held, x_test = _standardize(x[rest], x[held], xte)
    probe = fit_logistic_regression(x_rest, y[rest], num_classes, wd, max_iter=max_iter, seed=seed)
    err_held, err_test = _error(probe, x_held, y[held]), _error(probe, x_test, yte)

    out = {"approximation": float(approximation_error),
           "usability": err_tt - approximation_error,
           "probe_generalization": err_held - err_tt,
           "encoder_generalization": err_test - err_held}
    out["total_error"] = sum(out[c] for c in COMPONENTS)
    out.update(err_train_train=err_tt, err_heldout=err_held, err_test=err_test,
               heldout_size=float(holdout), probe_weight_decay=float(wd))
    return out


@EVALUATORS.register("risk", help="risk decomposition of the linear-probe error: approximation, "
                                  "usability, probe and encoder generalisation (Dubois et al. 2023)")
class RiskEvaluator(Evaluator):
    """``risk_decomposition`` on the train and test features, with the table of components."""

    needs_labels = needs_test = True
    function = staticmethod(risk_decomposition)

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("risk")
        g.add_argument("--approximation-error", type=float, default=0.0,
                       help="training error (%%) of a supervised model of the same architecture "
                            "(default 0: usability then includes it)")
        g.add_argument("--holdout", type=int, default=None,
                       help="held-out train images (default: min(test size, half of train))")

    def run(self, ctx: EvalContext) -> EvalResult:
        xtr, ytr, xte, yte = ctx.labelled_features()
        a = ctx.args
        res = risk_decomposition(xtr, ytr, xte, yte, approximation_error=a.approximation_error,
                                 weight_decays=getattr(a, "weight_decays", DEFAULT_WEIGHT_DECAYS),
                                 holdout=a.holdout, num_classes=ctx.num_classes(), seed=a.seed,
                                 device=ctx.device)
        total = res["total_error"]
        rows = [{"component": c, "error_%": res[c],
                 "share_%": 100.0 * res[c] / total if total else 0.0} for c in COMPONENTS]
        rows.append({"component": "total (sum)", "error_%": total, "share_%": 100.0 if total else 0.0})
        return EvalResult(res, tables={"risk decomposition (top-1 error, %)": rows})
