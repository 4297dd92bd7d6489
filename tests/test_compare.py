"""``vissl-lite compare`` (issue 24.6) on two real short runs on CIFAR-10."""
from __future__ import annotations

import json
import re

import pytest

from _helpers import one_thread  # noqa: F401 (fixture)
from vissl_lite.cli import main


@pytest.fixture(scope="module")
def two_runs(cifar_archive, tmp_path_factory):
    """Two SimCLR runs of 2 steps (ViT-Tiny/8 at 32 px) that differ in the learning rate; the
    online monitor's kNN and RankMe run at each epoch end."""
    engine = pytest.importorskip("vissl_lite.engine")
    from vissl_lite.config import default_config

    runs = []
    for name, lr in (("lr_low", 0.01), ("lr_high", 0.5)):
        run = tmp_path_factory.mktemp(name)
        cfg = default_config("simclr", [
            f"data.root={cifar_archive}", "data.subset=32", "data.num_workers=0",
            "backbone.name=vit_tiny_patch8", "train.batch_size=16", "train.epochs=1",
            "train.max_steps=2", "train.log_every=1", "train.device=cpu", f"optim.lr={lr}",
            "monitor.every_epochs=1", "monitor.train_subset=32", "monitor.test_subset=32",
            "logger.progress=false", "logger.plot=false", "logger.wandb.mode=disabled",
            f"output_dir={run}"])
        engine.Trainer(cfg).fit()
        runs.append(run)
    return runs


def test_compare_two_short_runs(two_runs, cifar_archive, tmp_path, capsys, one_thread):
    low, high = two_runs
    knn_json = low / "knn.json"                     # an evaluator's results inside the run folder
    assert main(["eval", "knn", str(low), "--data", str(cifar_archive), "--subset-train", "100",
                 "--subset-test", "50", "--num-workers", "0", "--device", "cpu", "--k", "10",
                 "--k-curve", "--no-cache", "--out", str(knn_json)]) == 0
    out = tmp_path / "cmp"
    assert main(["compare", str(low), str(high), "--out", str(out)]) == 0
    record = json.loads((out / "compare.json").read_text())
    names = [low.name, high.name]
    assert record["runs"] == names
    assert all(record["identity"][n]["steps"] == 2 for n in names)
    assert record["config_differences"] == {"optim.lr": [0.01, 0.5]}
    numbers = record["numbers"]
    knn = json.loads(knn_json.read_text())["results"]["knn_top1@10"]
    assert numbers[low.name]["knn.knn_top1@10"] == knn and "knn.knn_top1@10" not in numbers[high.name]
    for n, run in zip(names, two_runs):
        last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
        assert last["type"] == "epoch"
        assert numbers[n]["monitor.knn_top1"] == last["knn_top1"]
        assert numbers[n]["monitor.epoch_loss"] == last["epoch_loss"]

    # the best of each row is marked: the lower loss, the higher RankMe
    md = (out / "compare.md").read_text()
    loss = [numbers[n]["monitor.epoch_loss"] for n in names]
    row = next(line for line in md.splitlines() if line.startswith("| monitor.epoch_loss |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert [c.startswith("**") for c in cells] == [v == min(loss) for v in loss]
    rank = [numbers[n]["monitor.rankme"] for n in names]
    row = next(line for line in md.splitlines() if line.startswith("| monitor.rankme |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert [c.startswith("**") for c in cells] == [v == max(rank) for v in rank]
    assert "| optim.lr | 0.01 | 0.5 |" in md
    for x in ("step", "time"):
        assert (out / f"curves_{x}.png").read_bytes().startswith(b"\x89PNG") and f"(curves_{x}.png)" in md
    page = (out / "compare.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<b>" in page and "href=" not in page
    assert "| monitor.knn_top1 |" in capsys.readouterr().out

    # a results JSON given beside its run adds to that run's column, not a new one
    assert main(["compare", str(knn_json), str(low), str(high), "--out", str(tmp_path / "c2")]) == 0
    assert json.loads((tmp_path / "c2" / "compare.json").read_text())["runs"] == names


def test_compare_needs_two_existing_runs(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert "run not found:" in capsys.readouterr().err
    assert main(["compare", str(tmp_path)]) == 2
    assert "at least two runs" in capsys.readouterr().err
