"""``vissl-lite eval`` end to end on the real CIFAR-10 archive (small subsets to stay fast)."""
from __future__ import annotations

import json

import pytest
import torch

from _helpers import one_thread  # noqa: F401 (fixture)

from vissl_lite.eval.cli import main

SMALL = ["--subset-train", "200", "--subset-test", "100", "--batch-size", "100",
         "--num-workers", "0", "--device", "cpu"]


def test_knn_rankme_cluster_on_random_resnet18(cifar_archive, tmp_path, capsys):
    out = tmp_path / "knn.json"
    args = ["knn", "random:resnet18", "--cifar-stem", "--data", str(cifar_archive), *SMALL,
            "--k", "20", "200", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "knn_top1@20" in table and "knn_top5@200" in table
    report = json.loads(out.read_text())
    assert report["data"]["num_train"] == 200 and report["data"]["num_test"] == 100
    assert report["data"]["feature_dim"] == 512 and report["data"]["image_size"] == 32
    assert report["data"]["features_cached"] == {"train": False, "test": False}
    top1 = report["results"]["knn_top1@20"]
    assert 10.0 < top1 < 60.0                       # a random CNN is above chance on CIFAR-10
    assert report["config"]["k"] == [20, 200]

    assert main([*args[:-1], str(tmp_path / "again.json"), "--backend", "torch"]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["data"]["features_cached"] == {"train": True, "test": True}
    assert again["results"] == report["results"]

    common = [*args[1:-7], "--cache-dir", str(tmp_path / "cache")]   # without knn's --k
    assert main(["rankme", *common, "--out", str(tmp_path / "r.json")]) == 0
    rank = json.loads((tmp_path / "r.json").read_text())
    assert rank["data"]["features_cached"] == {"train": True, "test": True}
    assert 1.0 < rank["results"]["rankme_train"] <= 200
    assert main(["cluster", *common, "--pairs", "20", "--out", str(tmp_path / "c.json")]) == 0
    res = json.loads((tmp_path / "c.json").read_text())["results"]
    assert {"cluster_ami", "cluster_ari", "uniformity", "alignment"} <= set(res)


def test_missing_checkpoint_is_a_clear_error(cifar_archive, capsys):
    with pytest.raises(SystemExit) as e:
        main(["knn", "no/such/ckpt.pt", "--data", str(cifar_archive)])
    assert e.value.code == 2
    assert "checkpoint not found: no/such/ckpt.pt" in capsys.readouterr().err


@pytest.fixture(scope="module")
def short_checkpoint(cifar_archive, tmp_path_factory):
    """A SimCLR run of 2 steps on 64 CIFAR-10 images with a ViT-Tiny/8 (cheap at 32x32)."""
    engine = pytest.importorskip("vissl_lite.engine")
    from vissl_lite.config import default_config

    run = tmp_path_factory.mktemp("short_run")
    cfg = default_config("simclr", [
        f"data.root={cifar_archive}", "data.subset=64", "data.num_workers=0",
        "backbone.name=vit_tiny_patch8", "train.batch_size=32",
        "train.epochs=1", "train.max_steps=2", "train.device=cpu", "logger.progress=false",
        "logger.plot=false", "logger.wandb.mode=disabled", f"output_dir={run}"])
    engine.Trainer(cfg).fit()
    assert (run / "checkpoints" / "last.pt").is_file()
    return run


def test_knn_on_a_short_trained_checkpoint_given_as_its_run_folder(short_checkpoint, cifar_archive,
                                                                   tmp_path, capsys):
    out = tmp_path / "knn.json"
    assert main(["knn", str(short_checkpoint), "--data", str(cifar_archive), *SMALL, "--k", "20",
                 "--k-curve", "--no-cache", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model_id"].startswith("sha256:")
    assert 10.0 < report["results"]["knn_top1@20"] < 60.0
    assert "knn_top1@20" in capsys.readouterr().out


def test_sslmem_of_a_checkpoint_against_itself_is_zero(short_checkpoint, cifar_archive, tmp_path,
                                                       capsys):
    out = tmp_path / "mem.json"
    assert main(["sslmem", str(short_checkpoint), str(short_checkpoint / "checkpoints" / "last.pt"),
                 "--data", str(cifar_archive), "--candidates", "0:6", "--views", "3", "--top", "4",
                 "--device", "cpu", "--num-workers", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["results"]["candidates"] == 6 and report["results"]["max_score"] == 0.0
    assert [row["score"] for row in report["scores"]] == [0.0] * 6
    assert (tmp_path / "mem_sslmem_hist.png").is_file() and (tmp_path / "mem_sslmem_top.png").is_file()
    assert "mean_score" in capsys.readouterr().out


def test_report_on_a_short_trained_checkpoint(short_checkpoint, cifar_archive, tmp_path, capsys,
                                              one_thread):
    pytest.importorskip("umap", reason="umap-learn not installed (the [cluster] extra)")
    folder = tmp_path / "report"
    assert main(["report", str(short_checkpoint / "checkpoints" / "last.pt"), "--data",
                 str(cifar_archive), *SMALL, "--k", "10", "--k-curve", "1", "10", "50",
                 "--weight-decays", "1e-4", "--umap-components", "8", "--no-cache",
                 "--shots", "1", "5", "--seeds", "2", "--no-baseline", "--report-dir",
                 str(folder)]) == 0
    results = json.loads((folder / "results.json").read_text())
    assert set(results["results"]) == {"knn", "linear", "risk", "fewshot", "rankme", "umap_cluster"}
    assert results["skipped"] == {}
    risk = results["results"]["risk"]
    parts = ("approximation", "usability", "probe_generalization", "encoder_generalization")
    assert sum(risk[p] for p in parts) == pytest.approx(risk["total_error"]) == risk["err_test"]
    assert 1.0 < results["results"]["rankme"]["rankme_train"] <= 192
    assert 0.0 <= results["results"]["umap_cluster"]["ami"] < 1.0
    md = (folder / "report.md").read_text()
    for picture in ("knn_vs_k.png", "spectrum.png", "umap.png"):
        assert (folder / picture).stat().st_size > 1000 and f"]({picture})" in md
    assert "## risk" in md and "encoder_generalization" in md and "<table>" in (folder / "report.html").read_text()
    assert "risk.total_error" in capsys.readouterr().out


def test_report_is_one_sendable_document_with_the_run_and_its_baseline(short_checkpoint,
                                                                       cifar_archive, tmp_path,
                                                                       one_thread):
    """Issue 22.6: the run's identity and curves at the top, the random-init baseline beside
    every number, the probe's weight-decay sweep, one probe number in every section, shares
    of the decomposition summing to 100%, and an HTML file with every figure inside it."""
    import re

    folder = tmp_path / "report"
    assert main(["report", str(short_checkpoint), "--data", str(cifar_archive), *SMALL,
                 "--k", "10", "--k-curve", "1", "10", "--weight-decays", "1e-4", "1e-1",
                 "--shots", "1", "2", "--seeds", "2", "--skip", "umap_cluster",
                 "--cache-dir", str(tmp_path / "cache"),
                 "--report-dir", str(folder)]) == 0
    results = json.loads((folder / "results.json").read_text())
    assert results["run"] == {"method": "simclr", "backbone": "vit_tiny_patch8", "epochs": "1 of 1",
                              "steps": 2, "images seen": 64, "global batch": 32,
                              "dataset": f"imagefolder ({cifar_archive}), 64-image subset",
                              "image size": 32}
    md = (folder / "report.md").read_text()
    top = md.split("## Evaluation")[0]
    for line in ("| method | simclr |", "| backbone | vit_tiny_patch8 |", "| steps | 2 |",
                 "| images seen | 64 |", "| image size | 32 |", "](training_curves.png)"):
        assert line in top
    assert (folder / "training_curves.png").read_bytes().startswith(b"\x89PNG")

    # the baseline: a random-init ViT-Tiny/8 with the same evaluators, beside every number
    base = results["baseline"]
    assert base["model_id"].startswith("random-init:")
    assert set(base["results"]) == set(results["results"]) == {"knn", "linear", "risk", "fewshot",
                                                                "rankme"}
    assert "| fewshot: fewshot_1shot_top1 |" in md and "### few-shot linear probe" in md
    assert base["results"]["linear"]["linear_top1"] != results["results"]["linear"]["linear_top1"]
    assert "| metric | this run | random init |" in md
    assert "| k | top1 | top1 (random init) | top5 | top5 (random init) |" in md

    # one probe: the linear section's top-1 is the decomposition's total, in both encoders
    for res in (results["results"], base["results"]):
        lin, risk = res["linear"], res["risk"]
        assert risk["total_error"] == pytest.approx(100.0 - lin["linear_top1"])
        assert risk["err_train_train"] == pytest.approx(100.0 - lin["linear_train_top1"])
        assert risk["probe_weight_decay"] == lin["linear_weight_decay"]
    # the sweep, with the chosen weight decay marked
    sweep = results["tables"]["linear"]["weight-decay sweep (top-1 % on the held-out 10% of train)"]
    assert [r["weight_decay"] for r in sweep] == [1e-4, 1e-1]
    chosen = [r for r in sweep if r["chosen"] == "yes"]
    assert len(chosen) == 1 and chosen[0]["weight_decay"] == results["results"]["linear"]["linear_weight_decay"]
    assert chosen[0]["val_top1"] == max(r["val_top1"] for r in sweep)
    assert "### weight-decay sweep" in md
    # shares: each in [0, 100], summing to 100
    for tables in (results["tables"], base["tables"]):
        rows = tables["risk"]["risk decomposition (top-1 error, %)"]
        shares = [r["share_%"] for r in rows[:-1]]
        assert all(0.0 <= s <= 100.0 for s in shares) and sum(shares) == pytest.approx(100.0)

    # one self-contained HTML file: every figure embedded, nothing fetched from elsewhere
    page = (folder / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "href=" not in page and "http" not in page.replace("http-equiv", "")


def test_label_free_data_runs_the_label_free_evaluators_and_says_why_others_were_skipped(tmp_path):
    """An unlabelled train split (labels -1) and no test split: RankMe only (UMAP left out to
    stay fast), and the report lists every skipped evaluator with its reason."""
    import argparse

    from _helpers import TinyNet
    from vissl_lite.eval.cli import add_eval_arguments
    from vissl_lite.eval.evaluator import EvalContext
    from vissl_lite.eval.report import ReportEvaluator

    args = add_eval_arguments(argparse.ArgumentParser()).parse_args(
        ["report", "toy.pt", "--data", str(tmp_path), "--skip", "umap_cluster", "--device", "cpu",
         "--report-dir", str(tmp_path / "report")])
    info = {"model_id": "sha256:toy", "image_size": 8, "mean": None, "std": None, "augment": None}
    ctx = EvalContext(args, lambda spec: (TinyNet(), info))
    ctx._features["train"] = (torch.randn(40, 16), torch.full((40,), -1))
    ctx._missing["test"] = "no test split (no folder 'test')"
    result = ReportEvaluator().run(ctx)
    assert set(result.metrics) == {"rankme.rankme_train", "rankme.feature_dim"}
    skipped = json.loads((tmp_path / "report" / "results.json").read_text())["skipped"]
    assert set(skipped) == {"knn", "linear", "risk", "fewshot", "umap_cluster"}
    assert skipped["knn"].startswith("needs a test split") and skipped["umap_cluster"] == "left out with --skip"
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Skipped" in md and "- linear: needs a test split" in md
    ctx._missing.pop("test")
    ctx._features["test"] = (torch.randn(10, 16), torch.full((10,), -1))
    from vissl_lite.eval.report import skip_reason
    assert skip_reason(ctx, "knn") == "needs labels, and the data has unlabelled images (label -1)"


def test_a_text_file_or_an_empty_run_folder_is_not_a_checkpoint(cifar_archive, tmp_path, capsys):
    text = tmp_path / "config.yaml"
    text.write_text("method:\n  name: simclr\n")
    for spec, message in ((text, f"{text} is not a checkpoint (a text file)"),
                          (tmp_path, f"{tmp_path} is a folder without checkpoints/last.pt")):
        with pytest.raises(SystemExit) as e:
            main(["rankme", str(spec), "--data", str(cifar_archive), "--no-cache"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "weights_only" not in err and len(err.strip().splitlines()) == 1


def test_evaluator_choices_help_and_dispatch_come_from_the_registry(cifar_archive, capsys):
    from vissl_lite.eval.evaluator import EvalResult, Evaluator
    from vissl_lite.registry import EVALUATORS

    @EVALUATORS.register("answer", help="a plugin evaluator defined in one place")
    class Answer(Evaluator):
        @classmethod
        def add_arguments(cls, parser):
            parser.add_argument("--value", type=float, default=42.0)

        def run(self, ctx):
            return EvalResult({"value": ctx.args.value})

    try:
        with pytest.raises(SystemExit):
            main(["--help"])
        listing = capsys.readouterr().out
        assert "a plugin evaluator defined in one place" in listing
        assert all(name in listing for name in EVALUATORS.names())
        assert main(["answer", "random:resnet18", "--data", str(cifar_archive), "--value", "7"]) == 0
        assert "value" in capsys.readouterr().out
    finally:
        EVALUATORS._entries.pop("answer")
        EVALUATORS._help.pop("answer")
