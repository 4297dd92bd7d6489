"""Semi-supervised fine-tuning (issue 24.2): fixed class-balanced subsets, files, the evaluator."""
from __future__ import annotations

import pytest
import torch

from _helpers import one_thread  # noqa: F401 (fixture)
from test_eval_finetune import _args, _context, band_images
from vissl_lite.errors import EvalError
from vissl_lite.eval.semisup import fraction_subset, read_subset, sample_names, write_subset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_subsets_are_class_balanced_and_fixed_by_the_seed():
    labels = torch.arange(10).repeat_interleave(100)[torch.randperm(1000)]
    one = fraction_subset(labels, 0.01, seed=0)
    ten = fraction_subset(labels, 0.10, seed=0)
    assert torch.bincount(labels[one]).tolist() == [1] * 10
    assert torch.bincount(labels[ten]).tolist() == [10] * 10
    assert torch.equal(one, fraction_subset(labels, 0.01, seed=0))
    assert not torch.equal(ten, fraction_subset(labels, 0.10, seed=1))
    uneven = torch.tensor([0] * 30 + [1] * 10)                      # proportional, at least one
    assert torch.bincount(uneven[fraction_subset(uneven, 0.05, 0)]).tolist() == [2, 1]


def test_subset_files_round_trip_and_match_simclr_style_file_names(tmp_path):
    names = [f"n0{c}/n0{c}_{i}.JPEG" for c in range(3) for i in range(5)]
    idx = torch.tensor([0, 6, 12])
    write_subset(tmp_path / "s.txt", names, idx)
    assert (tmp_path / "s.txt").read_text().splitlines() == [names[i] for i in idx]
    assert torch.equal(read_subset(tmp_path / "s.txt", names), idx)
    (tmp_path / "simclr.txt").write_text("n00_4.JPEG\nn02_1.JPEG\n")   # SimCLR: file names only
    assert read_subset(tmp_path / "simclr.txt", names).tolist() == [4, 11]
    (tmp_path / "bad.txt").write_text("n00_4.JPEG\nnope.JPEG\n")
    with pytest.raises(EvalError, match="1 of 2 lines name no image.*nope.JPEG"):
        read_subset(tmp_path / "bad.txt", names)
    with pytest.raises(EvalError, match="subset file not found"):
        read_subset(tmp_path / "missing.txt", names)


@pytest.fixture(scope="module")
def bands(tmp_path_factory):
    return band_images(tmp_path_factory.mktemp("bands"), {"train": 8, "test": 4}, seed=1)


def test_semisup_writes_its_subsets_and_honours_a_given_file(bands, tmp_path):
    from vissl_lite.registry import EVALUATORS

    quick = ["--set", "epochs=2", "batch_size=4", "lr=0.01"]
    out = tmp_path / "semi.json"
    args = _args("semisup", bands, tmp_path / "runs", "--fractions", "25", "50", "--out", str(out),
                 *quick)
    result = EVALUATORS.get("semisup")().run(_context(args))
    files = {p: (tmp_path / f"semi_subset_{p}.txt").read_text().splitlines() for p in ("25pct", "50pct")}
    assert [len(files["25pct"]), len(files["50pct"])] == [8, 16]       # 2 and 4 of 8 per class
    for lines in files.values():
        assert sorted(line.split("/")[0] for line in lines) == sorted(
            f"c{c}" for c in range(4) for _ in range(len(lines) // 4))
    m = result.metrics
    assert m["semisup_25pct_train_images"] == 8 and m["semisup_50pct_train_images"] == 16
    assert {"semisup_25pct_top1", "semisup_50pct_train_top1"} <= set(m)
    assert [r["per_class"] for r in result.tables["semi-supervised fine-tuning (top-1 %)"]] == ["2-2", "4-4"]
    assert (tmp_path / "runs" / "25pct" / "checkpoints" / "last.pt").is_file()
    # the same subset given back as a file trains on the same images
    mine = tmp_path / "mine.txt"
    mine.write_text("\n".join(files["25pct"][:4]) + "\n")
    args = _args("semisup", bands, tmp_path / "runs2", "--subset-files", str(mine), *quick)
    again = EVALUATORS.get("semisup")().run(_context(args))
    assert again.metrics["semisup_mine_train_images"] == 4
    names = sample_names(_context(args).dataset("train", subset=0).dataset)
    assert [names[i] for i in read_subset(mine, names)] == sorted(files["25pct"][:4], key=names.index)


def test_semisup_defaults_to_simclrs_protocol(tmp_path):
    import argparse

    from vissl_lite.eval.cli import add_eval_arguments
    from vissl_lite.eval.finetune_recipe import load_recipe
    from vissl_lite.eval.semisup import simclr_epochs

    args = add_eval_arguments(argparse.ArgumentParser()).parse_args(
        ["semisup", "ckpt.pt", "--data", str(tmp_path)])
    assert args.recipe == "simclr_resnet50" and args.fractions == [1.0, 10.0]
    assert (simclr_epochs(1), simclr_epochs(10)) == (60, 30)
    r = load_recipe(args.recipe)
    assert (r.optimizer, r.lr, r.lr_scaling, r.weight_decay, r.warmup_epochs, r.head_init_std,
            r.mixup, r.auto_augment) == ("lars", 0.005, "sqrt", 0.0, 0, 0.0, 0.0, None)
