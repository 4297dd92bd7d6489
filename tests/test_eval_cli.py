"""``vissl-lite eval`` end to end on the real CIFAR-10 archive (small subsets to stay fast)."""
from __future__ import annotations

import json

import pytest

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


def test_knn_on_a_short_trained_checkpoint(cifar_archive, tmp_path, capsys):
    engine = pytest.importorskip("vissl_lite.engine")
    from vissl_lite.config import default_config

    cfg = default_config("simclr", [
        f"data.root={cifar_archive}", "data.subset=64", "data.num_workers=0",
        "backbone.name=resnet18", "backbone.cifar_stem=true", "train.batch_size=32",
        "train.epochs=1", "train.max_steps=2", "train.device=cpu", "logger.progress=false",
        "logger.plot=false", "logger.wandb.mode=disabled", f"output_dir={tmp_path / 'run'}"])
    engine.Trainer(cfg).fit()
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    assert ckpt.is_file()
    out = tmp_path / "knn.json"
    assert main(["knn", str(ckpt), "--data", str(cifar_archive), *SMALL, "--k", "20",
                 "--no-cache", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model_id"].startswith("sha256:")
    assert 10.0 < report["results"]["knn_top1@20"] < 60.0
    assert "knn_top1@20" in capsys.readouterr().out
