"""SSL risk decomposition (Dubois, Hashimoto and Liang, ICML 2023, arXiv 2302.03068).

The test error of the linear probe on a frozen SSL encoder is split into four components, each
the difference between the errors of two settings of increasing difficulty. With err(A -> B) the
top-1 error (%) on B of a linear probe trained on A, ``train`` the encoder's pretraining split and
``S`` a held-out part of train of |test| images (at most half of train), ``train \\ S`` the rest
(the paper's ``main.py`` splits ``train-sbst-ntest`` and ``train-cmplmnt-ntest``):

    approximation      = A              the training error of a supervised model with the same
                                        architecture (the paper reads it off a supervised encoder);
                                        given by the caller, 0 when unknown, so that usability then
                                        holds it too
    usability          = err(train -> train) - A
                                        what the linear probe on the SSL representation misses on
                                        the data it was fit on
    probe generalisation = err(train \\ S -> S) - err(train -> train)
                                        the cost of fitting the probe on finite data: error on
                                        images the encoder was pretrained on but the probe never saw
    encoder generalisation = err(train -> test) - err(train \\ S -> S)
                                        the cost of the encoder not having seen the test images in
                                        pretraining
    total              = err(train -> test) = 100 - the linear probe's top-1

so the components sum to the total error exactly (a telescoping sum). There is ONE probe
definition: ``linear.linear_probe`` (logistic regression on standardised features, its weight
decay chosen by its held-out sweep), whose own train and test errors are reused, so the report's
linear-probe number and the decomposition's total are the same number. Two deliberate departures
from the paper, both for that: usability is the chosen probe's training error rather than an
unregularised ERM's, and the test error is that of the probe fit on all of train rather than on
``train \\ S`` (the |S| extra images make encoder generalisation a slight underestimate).

Each error carries its binomial standard error; a negative component is sampling noise of that
size, so shares are computed over the non-negative components (they sum to 100%) and the table
shows the raw, signed component beside its standard error.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch

from vissl_lite.errors import EvalError
from vissl_lite.eval.evaluator import EvalContext, EvalResult, Evaluator
from vissl_lite.eval.linear import (DEFAULT_WEIGHT_DECAYS, _standardize, fit_logistic_regression,
                                    linear_probe, shared_probe)
from vissl_lite.eval.metrics import check_features, topk_accuracy
from vissl_lite.registry import EVALUATORS

COMPONENTS = ("approximation", "usability", "probe_generalization", "encoder_generalization")
TABLE = "risk decomposition (top-1 error, %)"


def _error(linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 - topk_accuracy(linear(x), y, (1,))[1]


def standard_error(error: float, n: int) -> float:
    """Binomial standard error (percentage points) of an error rate (%) measured on ``n`` images."""
    p = error / 100.0
    return 100.0 * math.sqrt(max(p * (1.0 - p), 0.0) / max(n, 1))


def risk_decomposition(train_features: torch.Tensor, train_labels: torch.Tensor,
                       test_features: torch.Tensor, test_labels: torch.Tensor,
                       approximation_error: float = 0.0,
                       weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
                       holdout: Optional[int] = None, num_classes: Optional[int] = None,
                       max_iter: int = 500, seed: int = 0, device=None,
                       probe: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """The four error components (%) of the module docstring, their sum ``total_error``, the
    errors they come from (``err_train_train``, ``err_heldout``, ``err_test``) and the standard
    errors of the measured ones (``se_heldout``, ``se_test``).

    ``probe``: the result of ``linear_probe`` on the same features, reused (its weight decay, train
    and test top-1); None fits it here with ``weight_decays``."""
    check_features(train_features, train_labels, test_features, test_labels)
    n = len(train_features)
    holdout = holdout or min(len(test_features), n // 2)
    if not 1 <= holdout < n:
        raise EvalError(f"risk decomposition: a held-out part of {holdout} images does not fit a "
                        f"train split of {n}")
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if probe is None:
        probe = linear_probe(train_features, train_labels, test_features, test_labels,
                             weight_decays=weight_decays, max_iter=max_iter,
                             num_classes=num_classes, device=dev, seed=seed)
    wd = probe["linear_weight_decay"]
    err_tt, err_test = 100.0 - probe["linear_train_top1"], 100.0 - probe["linear_top1"]
    # err(train \ S -> S): the same probe definition and weight decay, fit without S
    x, y = train_features.float().to(dev), train_labels.long().to(dev)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(dev)
    held, rest = perm[:holdout], perm[holdout:]
    x_rest, x_held = _standardize(x[rest], x[held])
    rest_probe = fit_logistic_regression(x_rest, y[rest], num_classes, wd, max_iter=max_iter,
                                         seed=seed)
    err_held = _error(rest_probe, x_held, y[held])

    out = {"approximation": float(approximation_error),
           "usability": err_tt - approximation_error,
           "probe_generalization": err_held - err_tt,
           "encoder_generalization": err_test - err_held}
    out["total_error"] = sum(out[c] for c in COMPONENTS)
    out.update(err_train_train=err_tt, err_heldout=err_held, err_test=err_test,
               se_heldout=standard_error(err_held, holdout),
               se_test=standard_error(err_test, len(test_features)),
               heldout_size=float(holdout), probe_weight_decay=float(wd))
    return out


def component_rows(res: Dict[str, float]) -> List[Dict[str, Any]]:
    """The table of components: signed error, standard error, and share (%) of the non-negative
    components' sum (a negative component is noise: share 0); shares sum to 100."""
    se = {"approximation": 0.0, "usability": 0.0,
          "probe_generalization": res["se_heldout"],
          "encoder_generalization": math.hypot(res["se_test"], res["se_heldout"])}
    positive = sum(max(res[c], 0.0) for c in COMPONENTS)
    rows = [{"component": c, "error_%": res[c], "std_error": se[c],
             "share_%": 100.0 * max(res[c], 0.0) / positive if positive else 0.0}
            for c in COMPONENTS]
    rows.append({"component": "total (sum)", "error_%": res["total_error"],
                 "std_error": res["se_test"], "share_%": 100.0 if positive else 0.0})
    return rows
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
                                 holdout=a.holdout, num_classes=ctx.num_classes(), seed=a.seed,
                                 device=ctx.device, probe=shared_probe(ctx)[0])
        notes = [f"{c} is {res[c]:.2f} points, below zero by sampling noise; its share is 0"
                 for c in COMPONENTS if res[c] < 0]
        return EvalResult(res, tables={TABLE: component_rows(res)}, notes=notes)
