"""The dense linear probe (issue 24.5) on synthetic shapes whose masks are known."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from _helpers import one_thread  # noqa: F401 (fixture)
from vissl_lite.backbones.card import card_for_size
from vissl_lite.backbones.encoder import Encoder
from vissl_lite.eval.cli import add_eval_arguments, main
from vissl_lite.eval.evaluator import EvalContext
from vissl_lite.eval.metrics import confusion_matrix, iou_from_confusion
from vissl_lite.registry import EVALUATORS

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, PATCH = 32, 4
GREY, RED, BLUE = (128, 128, 128), (220, 30, 30), (30, 40, 220)


def shapes_folder(root, count: int, seed: int) -> None:
    """images/<i>.png: grey with a red square (class 1) and a blue disc (class 2); masks/<i>.png
    the classes, with a ring of 255 (ignored) around the square."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(count):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        s, (x0, y0) = rng.integers(8, 14), rng.integers(0, SIZE - 14, 2)
        mask[y0 - 1:y0 + s + 1, max(x0 - 1, 0):x0 + s + 1] = 255
        mask[y0:y0 + s, x0:x0 + s] = 1
        r, (cx, cy) = rng.integers(4, 7), rng.integers(7, SIZE - 7, 2)
        mask[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 2
        image = np.array([GREY, RED, BLUE, GREY], np.float64)[np.minimum(mask, 3)]
        image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    shapes_folder(root, 25, seed=0)
    (root / "classes.txt").write_text("background\nsquare\ndisc\n")
    return root


class ColourViT(nn.Module):
    """Patch tokens = the mean colour of each 4x4 patch (a known-good dense feature), CLS first."""

    num_prefix_tokens, cls_token = 1, nn.Parameter(torch.zeros(1))

    def forward_all_tokens(self, x):
        patches = F.avg_pool2d(x, PATCH).flatten(2).transpose(1, 2)
        return torch.cat([patches.mean(1, keepdim=True), patches], dim=1)


class ColourCNN(nn.Module):
    """A last feature map = the mean colour of each 4x4 cell (timm's ``forward_features``)."""

    def forward_features(self, x):
        return F.avg_pool2d(x, PATCH)

    def forward(self, x):
        return self.forward_features(x).mean((2, 3))


def test_iou_against_the_formula_on_a_tiny_example():
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 1, 0]])
    conf = confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]     # the 255 pixel is not counted
    # class 0: TP 1, FP 0, FN 1 -> 1/2; class 1: TP 2, FP 2, FN 0 -> 2/4; class 2: 0/1
    scores = iou_from_confusion(conf)
    assert scores["iou"] == pytest.approx([50.0, 50.0, 0.0])
    assert scores["miou"] == pytest.approx(100 / 3) and scores["pixel_acc"] == pytest.approx(60.0)
    absent = iou_from_confusion(confusion_matrix(pred, target, 4))   # class 3 in neither: no IoU
    assert math.isnan(absent["iou"][3]) and absent["miou"] == pytest.approx(100 / 3)


def test_patch_tokens_are_laid_out_on_their_grid():
    images = torch.rand(2, 3, 32, 48)
    vit = Encoder(ColourViT(), feature="mean", width=3, card=card_for_size(SIZE), spec="v",
                  model_id="v", family="vit")
    cnn = Encoder(ColourCNN(), feature="pool", width=3, card=card_for_size(SIZE), spec="c",
                  model_id="c", family="cnn")
    assert vit.feature_map(images).shape == (2, 3, 8, 12)
    assert torch.allclose(vit.feature_map(images), cnn.feature_map(images))


@pytest.mark.parametrize("name,shape", [("resnet18", (512, 2, 2)),
                                        ("vit_tiny_patch16_224", (192, 4, 4))])
def test_feature_maps_of_timm_models(name, shape):
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False, num_classes=0,
                              **({"img_size": 64} if "vit" in name else {}))
    encoder = Encoder(model, feature="pool", width=shape[0], card=card_for_size(64), spec=name,
                      model_id=name, family="cnn")
    assert encoder.feature_map(torch.zeros(1, 3, 64, 64)).shape == (1, *shape)


@pytest.mark.parametrize("model,family", [(ColourViT(), "vit"), (ColourCNN(), "cnn")])
def test_a_colour_feature_segments_the_shapes(shapes, tmp_path, model, family):
    args = add_eval_arguments(argparse.ArgumentParser()).parse_args(
        ["segment", "toy", "--seg-data", f"folder:{shapes}", "--device", "cpu", "--num-workers",
         "0", "--seg-batch-size", "8", "--seg-epochs", "30", "--seg-lr", "0.05",
         "--cache-dir", str(tmp_path)])
    encoder = Encoder(model, feature="mean" if family == "vit" else "pool", width=3,
                      card=card_for_size(SIZE, source="test"), spec="toy",
                      model_id=f"toy-{family}", family=family)
    assert encoder.feature_map(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 3, 8, 8)
    info = {"model_id": encoder.model_id, "image_size": SIZE, "mean": None, "std": None,
            "card": encoder.card}
    ctx = EvalContext(args, lambda spec: (encoder, info), figure_dir=tmp_path)
    result = EVALUATORS.get("segment")().run(ctx)
    rows = result.tables["IoU (%) per class"]
    assert [r["class"] for r in rows] == ["background", "square", "disc"]
    assert result.metrics["miou"] > 90 and min(r["iou"] for r in rows) > 80   # 1 epoch: 27
    assert result.metrics["miou"] == pytest.approx(sum(r["iou"] for r in rows) / 3)
    assert ctx.cache_hits == {"train": False, "test": False}
    again = EvalContext(args, lambda spec: (encoder, info))
    assert EVALUATORS.get("segment")().run(again).metrics == result.metrics
    assert again.cache_hits == {"train": True, "test": True}
    assert (tmp_path / "segment_iou.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("spec", [["random:resnet18", "--cifar-stem"], ["random:vit_tiny_patch8"]])
def test_segment_command_on_zoo_encoders(shapes, tmp_path, capsys, spec):
    out = tmp_path / "seg.json"
    assert main(["segment", *spec, "--image-size", "32", "--seg-data", f"folder:{shapes}",
                 "--device", "cpu", "--num-workers", "0", "--seg-epochs", "2", "--no-cache",
                 "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    grid = (512, 4, 4) if "resnet18" in spec[0] else (192, 4, 4)
    assert f"features {grid}, masks (32, 32)" in record["notes"][0]
    protocol = "80% of the pairs (seed 0) / the rest; 20 / 5 images"
    assert record["notes"][0].startswith(f"folder:{shapes}: {protocol}")
    assert 0 <= record["results"]["miou"] <= 100 and len(record["tables"]["IoU (%) per class"]) == 3
    assert "miou" in capsys.readouterr().out


def test_offline_voc_and_bad_folder_are_one_line_errors(tmp_path, capsys):
    for data, message in (("voc2012", f"put it into {tmp_path / 'VOCdevkit' / 'VOC2012'}/"),
                          (f"folder:{tmp_path}", "no images/ and masks/")):
        with pytest.raises(SystemExit) as e:
            main(["segment", "random:resnet18", "--image-size", "32", "--seg-data", data,
                  "--data-root", str(tmp_path), "--device", "cpu", "--no-cache"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "--download" in err if data == "voc2012" else message in err
    assert not (tmp_path / "VOCdevkit").exists()
