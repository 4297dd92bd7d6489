"""End-to-end fine-tuning (issue 24.1) on a 4-class synthetic problem whose answer is known.

The class of an 8x8 image is the row band that is brighter (flip-invariant, so the crop + flip
transform keeps it); the encoder is a random linear projection to 4 features, which hides most of
that signal from a frozen linear probe, and fine-tuning the projection recovers it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from _helpers import one_thread  # noqa: F401 (fixture)
from vissl_lite.errors import EvalError

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = 2  # each class brightens two of the eight rows


class Projection(nn.Module):
    """A random linear map of the flattened image to 4 numbers (an encoder with no structure)."""

    family = "cnn"
    num_features = 4

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))

    def forward(self, x):
        return self.net(x)


def band_images(root: Path, per_class: dict, seed: int = 0) -> Path:
    """<root>/<split>/<class>/<i>.png: noise, with rows 2c..2c+1 brighter in class c."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for split, n in per_class.items():
        for c in range(4):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = torch.randint(40, 160, (8, 8, 3), generator=g)
                pixels[ROWS * c:ROWS * (c + 1)] += 90
                Image.fromarray(pixels.to(torch.uint8).numpy()).save(folder / f"{i}.png")
    return root


QUICK = ["epochs=20", "batch_size=16", "lr=0.02", "warmup_epochs=1", "auto_augment=null",
         "crop_scale=[1.0,1.0]", "smoothing=0.0", "weight_decay=0.0"]
INFO = {"model_id": "sha256:toy", "image_size": 8, "mean": [0.5] * 3, "std": [0.25] * 3,
        "augment": None}


def _args(verb, data, run_dir, *extra):
    from vissl_lite.eval.cli import add_eval_arguments

    return add_eval_arguments(argparse.ArgumentParser()).parse_args(
        [verb, "toy.pt", "--data", str(data), "--device", "cpu", "--num-workers", "0",
         "--no-cache", "--batch-size", "64", "--recipe", "cifar_tiny", "--run-dir", str(run_dir),
         *extra])


def _context(args):
    from vissl_lite.eval.evaluator import EvalContext

    encoder = Projection()
    return EvalContext(args, lambda spec: (encoder, dict(INFO)), checkpoint="toy.pt")


@pytest.fixture(scope="module")
def bands(tmp_path_factory):
    return band_images(tmp_path_factory.mktemp("bands"), {"train": 16, "test": 16})


def test_finetuning_fits_the_training_set_and_beats_the_frozen_linear_probe(bands, tmp_path):
    from vissl_lite.eval.linear import linear_probe
    from vissl_lite.registry import EVALUATORS

    args = _args("finetune", bands, tmp_path / "run", "--set", *QUICK)
    ctx = _context(args)
    xtr, ytr, xte, yte = ctx.labelled_features()
    probe = linear_probe(xtr, ytr, xte, yte, weight_decays=[1e-4])
    result = EVALUATORS.get("finetune")().run(ctx)
    m = result.metrics
    assert m["finetune_train_top1"] == 100.0
    assert m["finetune_top1"] > probe["linear_top1"] + 15, (m, probe)
    assert m["finetune_steps"] == 20 * 4 and m["finetune_train_images"] == 64
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "metrics.jsonl").is_file()
    cfg = (run / "config.yaml").read_text()
    assert "name: finetune" in cfg and "recipe: cifar_tiny" in cfg
    # the frozen encoder of the context is untouched: fine-tuning trained a copy
    assert torch.equal(ctx.features("train")[0], xtr)


def test_a_resumed_finetune_ends_where_an_uninterrupted_one_does(bands, tmp_path):
    from vissl_lite.eval.finetune import run_finetune
    from vissl_lite.eval.finetune_recipe import load_recipe

    steps = ["epochs=3", "batch_size=16", "lr=0.02", "mixup=0.8", "cutmix=1.0", "smoothing=0.1",
             "ema_decay=0.9"]
    def train(run_dir, *more, resume=False):
        args = _args("finetune", bands, run_dir, *(["--resume"] if resume else []))
        ctx = _context(args)
        recipe = load_recipe("cifar_tiny", [*steps, *more])
        return run_finetune(ctx, recipe, "cifar_tiny", run_dir, ctx.dataset("train", transform=lambda x: x),
                            None)

    whole = train(tmp_path / "whole")
    train(tmp_path / "parts", "max_steps=5")          # stops mid-epoch 2 (4 steps an epoch)
    resumed = train(tmp_path / "parts", resume=True)
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "parts" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["top1"] == whole["top1"] and resumed["ema_top1"] == whole["ema_top1"]


def test_recipes_load_with_overrides_and_a_bad_key_is_one_line(tmp_path):
    from vissl_lite.eval.finetune_recipe import load_recipe, scaled_lr

    mae = load_recipe("mae_vit_base")
    assert (mae.lr, mae.layer_decay, mae.drop_path, mae.mixup, mae.cutmix, mae.smoothing,
            mae.reprob, mae.epochs, mae.warmup_epochs, mae.auto_augment) == (
        5e-4, 0.65, 0.1, 0.8, 1.0, 0.1, 0.25, 100, 5, "rand-m9-mstd0.5-inc1")
    assert scaled_lr(mae) == pytest.approx(5e-4 * 1024 / 256)            # MAE: blr * batch / 256
    simclr = load_recipe("simclr_resnet50", ["batch_size=4096"])
    assert scaled_lr(simclr) == pytest.approx(0.005 * 64)                 # SimCLR: lr * sqrt(batch)
    assert simclr.weight_decay == 0.0 and simclr.optimizer == "lars"
    with pytest.raises(EvalError, match="epochz") as err:
        load_recipe("mae_vit_base", ["epochz=3"])
    assert "\n" not in str(err.value)
    with pytest.raises(EvalError, match="unknown finetune recipe 'nope'.*mae_vit_base"):
        load_recipe("nope")
    with pytest.raises(EvalError, match="even batch_size"):
        load_recipe("mae_vit_base", ["batch_size=15"])


def test_each_recipe_card_names_its_source_and_true_deviations():
    from omegaconf import OmegaConf

    from vissl_lite.eval.finetune_recipe import load_recipe, recipe_names, recipe_path
    from vissl_lite.recipe_cards import read_card

    assert {"mae_vit_base", "simclr_resnet50", "cifar_tiny"} <= set(recipe_names())
    for name in recipe_names():
        card = read_card(recipe_path(name))
        assert card.source, name
        recipe = OmegaConf.structured(load_recipe(name))
        for d in card.deviations:
            assert d.key in recipe, (name, d.key)
            assert OmegaConf.create({"v": OmegaConf.to_container(OmegaConf.create(
                f"v: {d.ours}"))["v"]})["v"] == recipe[d.key], (name, d.key)


def test_layer_decay_scales_follow_mae_and_drop_path_rises_with_depth():
    from timm.layers import DropPath

    from vissl_lite.backbones.vit import ViT
    from vissl_lite.engine.optim import param_groups
    from vissl_lite.eval.finetune_model import FinetuneModel
    from vissl_lite.eval.finetune_recipe import load_recipe

    vit = ViT(patch_size=4, embed_dim=24, depth=3, num_heads=2, img_size=16, name="vit_test")
    model = FinetuneModel(vit, 5, load_recipe("mae_vit_base"))
    scale = model.param_lr_scale
    # MAE's util/lr_decay.py: layer id 0 for embeddings, i + 1 for block i, depth + 1 for the head;
    # scale = decay ** (depth + 1 - layer id); timm's groups put the final norm with the last block
    assert scale("backbone.encoder.patch_embed.proj.weight") == pytest.approx(0.65 ** 4)
    assert scale("backbone.encoder.cls_token") == pytest.approx(0.65 ** 4)
    for i in range(3):
        assert scale(f"backbone.encoder.blocks.{i}.mlp.fc1.weight") == pytest.approx(0.65 ** (3 - i))
    assert scale("backbone.encoder.norm.weight") == pytest.approx(0.65)
    assert scale("backbone.head.weight") == 1.0 and scale("backbone.head.bias") == 1.0
    groups = param_groups(model, 0.05)   # what the trainer's optimizer is built from
    assert sorted({round(g["lr_scale"], 6) for g in groups}) == [
        round(0.65 ** k, 6) for k in (4, 3, 2, 1, 0)]
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in vit.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1])
    assert isinstance(vit.blocks[2].drop_path2, DropPath)


def test_cli_runs_finetune_and_writes_results(bands, tmp_path):
    from vissl_lite.cli import main

    out = tmp_path / "ft.json"
    code = main(["eval", "finetune", "random:resnet18", "--image-size", "8", "--data", str(bands),
                 "--device", "cpu", "--num-workers", "0", "--no-cache", "--recipe", "cifar_tiny",
                 "--set", "epochs=1", "batch_size=16", "--out", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["evaluator"] == "finetune" and record["run_dir"] == str(tmp_path / "ft_finetune")
    assert {"finetune_top1", "finetune_train_top1", "finetune_seconds"} <= set(record["results"])


@pytest.mark.parametrize("verb,dataset,says", [
    ("finetune", "imagefolder", "data not found"), ("semisup", "imagefolder", "data not found"),
    ("finetune", "cifar10", "CIFAR-10"), ("semisup", "cifar10", "CIFAR-10")])
def test_missing_or_offline_data_is_one_clear_line(verb, dataset, says, tmp_path, capsys):
    from vissl_lite.cli import main

    data = tmp_path / "nowhere"
    if dataset == "cifar10":          # an empty folder and no internet: the download is refused
        data.mkdir()
    code = main(["eval", verb, "random:resnet18", "--image-size", "8", "--dataset", dataset,
                 "--data", str(data), "--device", "cpu", "--run-dir",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mix", [False, True])
def test_a_finetune_step_never_waits_for_the_device(mix):
    from test_step_hygiene import ReadBackRecorder, SyncRecorder
    from vissl_lite.eval.finetune_model import FinetuneModel
    from vissl_lite.eval.finetune_recipe import load_recipe

    recipe = load_recipe("cifar_tiny", ["ema_decay=0.99", "smoothing=0.1",
                                        *(["mixup=0.8", "cutmix=1.0"] if mix else [])])
    model = FinetuneModel(Projection(), 4, recipe).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    batch = {"views": [torch.randn(8, 3, 8, 8)], "labels": torch.arange(8) % 4,
             "index": torch.arange(8)}

    def step(i):
        out = model.training_step({**batch, "views": [batch["views"][0].clone()]})
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.on_step_end(i, 10)

    step(0)
    with ReadBackRecorder() as calls, SyncRecorder() as ops:
        step(1)
    assert not ops.found and not calls.found, (ops.found, calls.found)
