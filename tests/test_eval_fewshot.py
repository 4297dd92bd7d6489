"""Few-shot linear evaluation (issue 24.3) on synthetic features where the answer is known."""
from __future__ import annotations

import argparse
import math

import pytest
import torch

from _helpers import TinyNet, gaussian_clusters, one_thread  # noqa: F401 (fixture)
from vissl_lite.errors import EvalError
from vissl_lite.eval.fewshot import balanced_subset, fewshot_linear, mean_ci95

pytestmark = pytest.mark.usefixtures("one_thread")


def test_subsets_are_class_balanced_nested_and_fixed_by_the_seed():
    labels = torch.arange(5).repeat_interleave(30)[torch.randperm(150, generator=torch.Generator().manual_seed(3))]
    five = balanced_subset(labels, 5, seed=7)
    assert torch.bincount(labels[five], minlength=5).tolist() == [5] * 5
    assert torch.equal(five, balanced_subset(labels, 5, seed=7))
    assert not torch.equal(five, balanced_subset(labels, 5, seed=8))
    assert set(balanced_subset(labels, 1, seed=7).tolist()) <= set(five.tolist())
    with pytest.raises(EvalError, match="class 0 has 30; lower --shots"):
        balanced_subset(labels, 31, seed=0)


def test_interval_is_the_student_t_interval():
    values = [50.0, 60.0, 55.0, 65.0]
    mean, half = mean_ci95(values)
    sd = math.sqrt(sum((v - 57.5) ** 2 for v in values) / 3)
    assert mean == 57.5 and half == pytest.approx(3.182446 * sd / 2, rel=1e-5)  # t_{0.975,3}
    with pytest.raises(EvalError, match="at least 2 seeds"):
        mean_ci95([1.0])


def test_separable_clusters_are_learned_from_one_image_per_class():
    xtr, ytr = gaussian_clusters(400, 4, 16, spread=0.3, seed=0)
    xte, yte = gaussian_clusters(200, 4, 16, spread=0.3, seed=1)
    metrics, rows = fewshot_linear(xtr, ytr, xte, yte, shots=(1, 5), seeds=3)
    assert metrics["fewshot_1shot_top1"] > 95 and metrics["fewshot_5shot_top1"] == 100.0
    assert [r["shots"] for r in rows] == [1, 5] and len(rows[0]["per_seed"].split()) == 3


def test_more_shots_help_and_more_seeds_narrow_the_interval():
    xtr, ytr = gaussian_clusters(400, 4, 8, spread=2.5, seed=0)     # overlapping classes
    xte, yte = gaussian_clusters(200, 4, 8, spread=2.5, seed=1)
    few, few_rows = fewshot_linear(xtr, ytr, xte, yte, shots=(1, 25), seeds=3)
    many, many_rows = fewshot_linear(xtr, ytr, xte, yte, shots=(1, 25), seeds=12)
    assert many["fewshot_25shot_top1"] > many["fewshot_1shot_top1"] + 10
    for k in (1, 25):
        assert many[f"fewshot_{k}shot_ci95"] < few[f"fewshot_{k}shot_ci95"]
    # seeds 0-2 are drawn alike in both runs: the same subsets give the same accuracies
    for a, b in zip(few_rows, many_rows):
        assert a["per_seed"].split() == b["per_seed"].split()[:3]


def test_fewshot_evaluator_from_its_command_line(tmp_path):
    from vissl_lite.eval.cli import add_eval_arguments
    from vissl_lite.eval.evaluator import EvalContext
    from vissl_lite.registry import EVALUATORS

    args = add_eval_arguments(argparse.ArgumentParser()).parse_args(
        ["fewshot", "toy.pt", "--data", str(tmp_path), "--shots", "1", "2", "--seeds", "3",
         "--device", "cpu"])
    info = {"model_id": "sha256:toy", "image_size": 8, "mean": None, "std": None, "augment": None}
    ctx = EvalContext(args, lambda spec: (TinyNet(), info), figure_dir=tmp_path)
    ctx._features["train"] = gaussian_clusters(60, 3, 16, spread=0.3, seed=0)
    ctx._features["test"] = gaussian_clusters(30, 3, 16, spread=0.3, seed=1)
    ctx.num_classes = lambda: 3                      # no data folder behind the features
    result = EVALUATORS.get("fewshot")().run(ctx)
    assert set(result.metrics) == {"fewshot_1shot_top1", "fewshot_1shot_ci95",
                                   "fewshot_2shot_top1", "fewshot_2shot_ci95"}
    assert result.metrics["fewshot_2shot_top1"] == 100.0
    assert (tmp_path / "fewshot.png").read_bytes().startswith(b"\x89PNG")
    args.shots = [1, 25]                                # 15 to 26 images per class: 25 shots left out
    result = EVALUATORS.get("fewshot")().run(ctx)
    assert "fewshot_25shot_top1" not in result.metrics and "fewshot_1shot_top1" in result.metrics
    assert result.notes == ["25 shots left out: the smallest class has 15 training images"]
