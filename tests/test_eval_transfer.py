"""The transfer suite (issue 24.4) on small synthetic image folders where the answer is known."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _helpers import one_thread  # noqa: F401 (fixture)
from vissl_lite.errors import EvalError
from vissl_lite.eval.cli import main
from vissl_lite.eval.transfer_sets import load_benchmark, per_class_split

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}
ENCODER = ["random:resnet18", "--cifar-stem", "--image-size", "16", "--device", "cpu",
           "--num-workers", "0", "--batch-size", "64", "--k", "5", "--weight-decays", "0.1"]


def colour_images(folder: Path, per_class: int, seed: int) -> None:
    """``folder/<colour>/<i>.png``: 16x16 images of one colour each, with pixel noise."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (16, 16, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / name / f"{i}.png")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    colour_images(root / "split" / "train", 8, seed=0)        # an ImageFolder with train/ test/
    colour_images(root / "split" / "test", 4, seed=1)
    colour_images(root / "flat", 10, seed=2)                  # <class>/<image> only
    colour_images(root / "data" / "eurosat" / "2750", 10, seed=3)   # torchvision's EuroSAT layout
    dtd = root / "data" / "dtd" / "dtd"                                   # and DTD's: split files
    colour_images(dtd / "images", 6, seed=4)
    (dtd / "labels").mkdir()
    for split, ids in (("train", (0, 1)), ("val", (2, 3)), ("test", (4, 5))):
        lines = [f"{c}/{i}.png" for c in COLOURS for i in ids]
        (dtd / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    return root


def test_per_class_split_is_a_seeded_partition():
    labels = np.repeat(np.arange(4), [31, 40, 50, 33])
    train, test = per_class_split(labels, 30, seed=0)
    assert np.bincount(labels[train]).tolist() == [30] * 4
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    again, _ = per_class_split(labels, 30, seed=0)
    other, _ = per_class_split(labels, 30, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    train, test = per_class_split(labels, 0.8, seed=0)       # 80% of each class, rounded down
    assert np.bincount(labels[train]).tolist() == [24, 32, 40, 26]
    with pytest.raises(EvalError, match="class 0 has 31 images"):
        per_class_split(labels, 31, seed=0)


def test_named_benchmark_from_its_torchvision_folder(folders):
    loaded = load_benchmark("eurosat", folders / "data", download=False, seed=0)
    train, test = loaded.splits["train"], loaded.splits["test"]
    assert (len(train), len(test)) == (24, 6) and train.classes == sorted(COLOURS)
    assert np.bincount(train.targets).tolist() == [8, 8, 8]
    assert loaded.protocol == "80% per class (seed 0) / 20%" and "Helber" in loaded.source
    image, label = train[0]
    assert image.mode == "RGB" and image.size == (16, 16) and label == train.targets[0]
    again = load_benchmark("eurosat", folders / "data", download=False, seed=0)
    assert again.data_ids == loaded.data_ids and train.targets == again.splits["train"].targets
    other = load_benchmark("eurosat", folders / "data", download=False, seed=1)
    assert other.data_ids["train"] != loaded.data_ids["train"]


def test_train_and_val_parts_are_concatenated(folders):
    loaded = load_benchmark("dtd", folders / "data", download=False, seed=0)
    train, test = loaded.splits["train"], loaded.splits["test"]
    assert (len(train), len(test)) == (12, 6) and loaded.protocol == "train+val / test of split 1"
    assert train.targets == [0, 0, 1, 1, 2, 2] * 2                # the train part, then val
    palette = np.array([COLOURS[c] for c in sorted(COLOURS)])
    for part in (train, test):
        for i in range(len(part)):
            image, label = part[i]
            mean = np.asarray(image, dtype=float).reshape(-1, 3).mean(0)
            assert np.abs(palette - mean).sum(1).argmin() == label    # each image has its label


def test_suite_goes_on_past_a_missing_data_set(folders, tmp_path, capsys):
    out = tmp_path / "report"
    datasets = f"folder:{folders / 'split'},flowers102,folder:{folders / 'flat'},eurosat"
    assert main(["transfer", *ENCODER, "--datasets", datasets, "--data-root",
                 str(folders / "data"), "--cache-dir", str(tmp_path / "cache"),
                 "--transfer-dir", str(out)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "flowers102" in line]
    assert len(lines) == 1 and str(folders / "data" / "flowers-102") in lines[0]
    assert "--download" in lines[0]
    record = json.loads((out / "results.json").read_text())
    rows = record["tables"]["transfer: top-1 (%) per data set"]
    assert [r["dataset"] for r in rows] == [f"folder:{folders / 'split'}",
                                            f"folder:{folders / 'flat'}", "eurosat"]
    assert [(r["train"], r["test"], r["classes"]) for r in rows] == [(24, 12, 3), (24, 6, 3),
                                                                     (24, 6, 3)]
    assert rows[0]["protocol"] == "train / test folders"
    assert rows[1]["protocol"] == "80% per class (seed 0) / the rest"
    for r in rows:                       # one colour per class: both probes get every image right
        assert r["knn_top1@5"] == 100.0 and r["linear_top1"] == 100.0
    assert record["results"]["mean.linear_top1"] == 100.0
    assert list(record["missing"]) == ["flowers102"]
    assert (out / "transfer.png").read_bytes().startswith(b"\x89PNG")
    markdown = (out / "transfer.md").read_text()
    assert "| dataset | protocol |" in markdown and "![" in markdown and "flowers102" in markdown
    assert "data:image/png;base64," in (out / "transfer.html").read_text()


def test_offline_errors_are_one_line(folders, tmp_path, capsys):
    for datasets, message in (("dtd,pets", "none of the data sets could be read"),
                              ("flowers,dtd", "unknown 'flowers'")):
        with pytest.raises(SystemExit) as e:
            main(["transfer", *ENCODER, "--datasets", datasets, "--data-root", str(tmp_path),
                  "--no-cache", "--transfer-dir", str(tmp_path / "out")])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("error:") == 1
    assert not (tmp_path / "dtd").exists()          # nothing is created where nothing was found
