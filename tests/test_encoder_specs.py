"""Encoder specs (``backbones/specs.py``): tiny timm, torchvision and torch.hub models saved to a
temporary folder and loaded through each spec form (a weights file, a fake local Hugging Face
cache read offline, a local hub repo with its own ``hubconf.py``), with the preprocessing card of
each library and features through our evaluators equal to the model's own forward."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import timm.data
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

from vissl_lite.backbones.card import card_from_timm
from vissl_lite.backbones.specs import parse_spec, resolve_encoder
from vissl_lite.errors import BackboneError
from vissl_lite.eval.cli import load_encoder, main
from vissl_lite.eval.evaluator import EvalContext
from vissl_lite.eval.transforms import card_transform

from test_export import write_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TIMM_VIT = "test_vit.r160_in1k"


def image_folder(root: Path, count: int = 4, size: int = 40) -> Path:
    """train/ and test/ with two classes of random RGB JPEG-free PNG images."""
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for i in range(count):
            folder = root / split / f"c{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = torch.randint(0, 256, (size, size + 8, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return root


def eval_args(data: Path, **kw) -> argparse.Namespace:
    args = dict(data=str(data), dataset="imagefolder", image_size=None, subset_train=None,
                subset_test=None, batch_size=4, num_workers=0, cifar_stem=False, like=None,
                weights=None, feature=None, resize=None, interpolation=None, mean=None, std=None,
                seed=0, device="cpu", precision="fp32", cache_dir=None, no_cache=True)
    args.update(kw)
    return argparse.Namespace(**args)


def features_through_evaluator(spec: str, data: Path, **kw):
    args = eval_args(data, **kw)
    ctx = EvalContext(args, lambda s: load_encoder(s, args), checkpoint=spec)
    return ctx, ctx.features("train")[0]


def own_forward(model, data: Path, card) -> torch.Tensor:
    """The model's own forward on the card's preprocessing of the train images, in order."""
    files = sorted((data / "train").rglob("*.png"), key=lambda p: (p.parent.name, p.name))
    batch = torch.stack([card_transform(card)(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        return model.eval()(batch)


def test_grammar():
    assert parse_spec("timm:vit_small_patch16_224.dino") == ("timm", "vit_small_patch16_224.dino")
    assert parse_spec("torchvision:resnet50:IMAGENET1K_V2") == ("torchvision", "resnet50:IMAGENET1K_V2")
    assert parse_spec("hub:/x/dinov2:dinov2_vits14") == ("hub", "/x/dinov2:dinov2_vits14")
    assert parse_spec("runs/a/checkpoints/last.pt") == ("checkpoint", "runs/a/checkpoints/last.pt")
    with pytest.raises(BackboneError, match="names no model"):
        parse_spec("timm:")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_from_a_weights_file_with_its_card(tmp_path, suffix):
    model = timm.create_model(TIMM_VIT, pretrained=False, num_classes=0)
    file = tmp_path / f"w{suffix}"
    (save_file if suffix == ".safetensors" else torch.save)(model.state_dict(), str(file))
    data = image_folder(tmp_path / "data")
    ctx, feats = features_through_evaluator(f"timm:{TIMM_VIT}", data, weights=str(file))
    cfg = timm.data.resolve_model_data_config(model)          # timm's own card of this model
    card = ctx.info["card"]
    assert (card.image_size, card.interpolation) == (cfg["input_size"][-1], cfg["interpolation"])
    assert card.resize == int(160 / cfg["crop_pct"]) and card.mean == cfg["mean"] == card.std
    assert torch.allclose(feats, own_forward(model, data, card), atol=1e-5)
    assert ctx.info["encoder"]["preprocessing"]["source"] == "timm pretrained_cfg"


def test_timm_feature_choice_reads_the_tokens(tmp_path):
    model = timm.create_model(TIMM_VIT, pretrained=False, num_classes=0).eval()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    x = torch.randn(2, 3, 160, 160)
    tokens = model.forward_features(x)
    expected = {"cls": tokens[:, 0], "mean": tokens[:, 1:].mean(1),
                "cls+mean": torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1)}
    for feature, want in expected.items():
        enc = resolve_encoder(f"timm:{TIMM_VIT}", weights=str(tmp_path / "w.safetensors"),
                              feature=feature)
        assert enc.num_features == want.shape[1]
        assert torch.allclose(enc(x), want, atol=1e-6)


HF_SCRIPT = """
import sys, torch
from vissl_lite.backbones.specs import resolve_encoder
from vissl_lite.errors import BackboneError
enc = resolve_encoder("timm:test_resnet.r160_in1k")
want = torch.load(sys.argv[1])
got = enc.model.state_dict()
assert all(torch.equal(got[k], v) for k, v in want.items() if k in got), "weights differ"
print("loaded", enc.card.image_size, enc.family)
try:
    resolve_encoder("timm:test_vit.r160_in1k")          # not in the cache
except BackboneError as e:
    print(e)
"""


def test_timm_reads_a_local_hugging_face_cache_offline(tmp_path):
    model = timm.create_model("test_resnet.r160_in1k", pretrained=False)
    revision = "0" * 40
    repo = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    save_file(model.state_dict(), str(repo / "snapshots" / revision / "model.safetensors"))
    torch.save(model.state_dict(), tmp_path / "want.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = subprocess.run([sys.executable, "-c", HF_SCRIPT, str(tmp_path / "want.pt")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    loaded, missing = run.stdout.strip().splitlines()[-2:]
    assert loaded == "loaded 160 resnet"
    assert missing.startswith("timm:test_vit.r160_in1k: no weights here (offline); give "
                              "--weights FILE")
    assert f"put the Hugging Face repo timm/test_vit.r160_in1k into {tmp_path / 'hub'}" in missing


def test_torchvision_weights_file_card_and_offline_message(tmp_path, monkeypatch):
    full = torchvision.models.mobilenet_v3_small()              # with its classifier
    torch.save(full.state_dict(), tmp_path / "mnv3.pth")
    data = image_folder(tmp_path / "data", count=2)
    ctx, feats = features_through_evaluator("torchvision:mobilenet_v3_small", data,
                                            weights=str(tmp_path / "mnv3.pth"))
    card = ctx.info["card"]
    preset = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT.transforms()
    assert (card.image_size, card.resize, card.interpolation) == (224, 256, "bilinear")
    assert list(card.mean) == preset.mean and list(card.std) == preset.std
    full.classifier = torch.nn.Identity()
    assert torch.allclose(feats, own_forward(full, data, card), atol=1e-5)

    monkeypatch.setenv("VISSL_LITE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(BackboneError) as e:
        resolve_encoder("torchvision:mobilenet_v3_small:IMAGENET1K_V1")
    assert "--weights FILE" in str(e.value) and str(tmp_path / "torch") in str(e.value)
    with pytest.raises(BackboneError, match="has IMAGENET1K_V1"):
        resolve_encoder("torchvision:mobilenet_v3_small:IMAGENET9K")


HUBCONF = '''
"""A DINOv2-shaped tiny model (patch 14, 4 register tokens, forward_features dict)."""
dependencies = ["torch", "timm"]
import torch
from timm.models.vision_transformer import VisionTransformer


class TinyDinoV2(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.vit = VisionTransformer(img_size=224, patch_size=14, embed_dim=32, depth=1,
                                     num_heads=2, reg_tokens=4, num_classes=0)
        self.patch_size, self.embed_dim, self.num_register_tokens = 14, 32, 4

    def forward_features(self, x):
        t = self.vit.forward_features(x)
        return {"x_norm_clstoken": t[:, 0], "x_norm_regtokens": t[:, 1:5],
                "x_norm_patchtokens": t[:, 5:]}

    def forward(self, x):
        return self.forward_features(x)["x_norm_clstoken"]


def dinov2_vits14(pretrained=True):
    if pretrained:
        raise OSError("this test repository has no weights to download")
    return TinyDinoV2()
'''


def test_local_hub_repo_dinov2_cls_plus_mean_patch(tmp_path):
    repo = tmp_path / "dinov2"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent(HUBCONF))
    sys.path.insert(0, str(repo))
    try:
        import hubconf
        reference = hubconf.dinov2_vits14(pretrained=False).eval()
    finally:
        sys.path.remove(str(repo))
        sys.modules.pop("hubconf", None)
    torch.save({"model": reference.state_dict()}, tmp_path / "dinov2_vits14.pth")
    enc = resolve_encoder(f"hub:{repo}:dinov2_vits14", weights=str(tmp_path / "dinov2_vits14.pth"))
    assert (enc.feature, enc.num_features, enc.family) == ("cls+mean", 64, "vit")
    assert (enc.card.image_size, enc.card.resize, enc.card.interpolation) == (224, 256, "bicubic")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens = reference.vit.forward_features(x)
        want = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], 1)   # registers left out
        assert torch.allclose(enc(x), want, atol=1e-6)
    with pytest.raises(BackboneError, match="--weights FILE"):
        resolve_encoder(f"hub:{repo}:dinov2_vits14")
    with pytest.raises(BackboneError, match="no entry point 'dinov2_vitb14'; it has dinov2_vits14"):
        resolve_encoder(f"hub:{repo}:dinov2_vitb14")
    with pytest.raises(BackboneError, match="has no hubconf.py"):
        resolve_encoder(f"hub:{tmp_path}:dinov2_vits14")


def test_random_baseline_takes_the_size_of_the_checkpoint_it_is_like(tmp_path, capsys):
    ckpt = tmp_path / "last.pt"
    write_checkpoint(ckpt, "simclr/cifar10_resnet18")
    data = image_folder(tmp_path / "data", count=2)
    with pytest.raises(SystemExit):
        main(["rankme", "random:resnet18", "--data", str(data), "--no-cache", "--device", "cpu"])
    assert "random:resnet18 needs the run it is the baseline of: --like CKPT" in capsys.readouterr().err
    out = tmp_path / "r.json"
    assert main(["rankme", "random:resnet18", "--like", str(ckpt), "--data", str(data),
                 "--no-cache", "--device", "cpu", "--num-workers", "0", "--out", str(out)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("encoder random:resnet18: resnet, feature pool (512-d); "
                             "preprocessing: resize 32 bilinear, center crop 32")
    record = json.loads(out.read_text())
    assert record["encoder"]["preprocessing"]["image_size"] == 32
    assert record["encoder"]["preprocessing"]["source"] == f"like {ckpt}"
    args = eval_args(data, like=str(ckpt))
    encoder, _ = load_encoder("random:resnet18", args)
    assert encoder.model.cifar_stem                        # the stem of the run it is like


def test_checkpoint_card_and_overrides(tmp_path, capsys):
    ckpt = tmp_path / "last.pt"
    write_checkpoint(ckpt, "simclr/cifar10_resnet18")
    args = eval_args(tmp_path, mean=[0.5, 0.5, 0.5], interpolation="bicubic")
    encoder, info = load_encoder(str(ckpt), args)
    card = info["card"]
    assert (card.image_size, card.resize, card.interpolation) == (32, 32, "bicubic")
    assert card.mean == (0.5, 0.5, 0.5) and "overridden: interpolation, mean" in card.source
    assert "preprocessing: resize 32 bicubic" in capsys.readouterr().out
    assert info["model_id"].startswith("sha256:")


def test_continued_pretraining_starts_from_any_spec(tmp_path):
    """``backbone.pretrained=timm:...`` (weights from ``backbone.pretrained_path``) and
    ``backbone.pretrained=torchvision:...``: the zoo backbone starts from exactly those tensors."""
    from vissl_lite.config import load_config
    from vissl_lite.methods import build_method

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    save_file(vit.state_dict(), str(tmp_path / "vit.safetensors"))
    cfg = load_config("mae/cifar10_vit_tiny", [
        "data.root=/unused", "backbone.name=vit_tiny_patch16", "backbone.img_size=224",
        "backbone.pos_embed=learn", "backbone.pretrained=timm:vit_tiny_patch16_224",
        f"backbone.pretrained_path={tmp_path / 'vit.safetensors'}"])
    ours = build_method(cfg).backbone.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in vit.state_dict().items())

    resnet = torchvision.models.resnet18()
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    cfg = load_config("simclr/cifar10_resnet18", [
        "data.root=/unused", "backbone.cifar_stem=false", "backbone.pretrained=torchvision:resnet18",
        f"backbone.pretrained_path={tmp_path / 'r18.pth'}"])
    ours = build_method(cfg).backbone.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in resnet.state_dict().items() if k in ours)
    cfg = load_config("simclr/cifar10_resnet18", [
        "data.root=/unused", "backbone.pretrained=torchvision:resnet18",
        f"backbone.pretrained_path={tmp_path / 'r18.pth'}"])        # CIFAR stem: conv1 differs
    with pytest.raises(BackboneError, match="backbone.pretrained: torchvision:resnet18 does not "
                                            "fit resnet18: .*conv1.weight"):
        build_method(cfg)


def test_load_backbone_and_export_take_specs(tmp_path):
    import vissl_lite
    from vissl_lite.errors import CheckpointError
    from vissl_lite.export import export_backbone

    model = timm.create_model(TIMM_VIT, pretrained=False, num_classes=0).eval()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    enc = vissl_lite.load_backbone(f"timm:{TIMM_VIT}", weights=str(tmp_path / "w.safetensors"))
    x = torch.randn(1, 3, 160, 160)
    assert torch.equal(enc(x), model(x)) and enc.card.image_size == 160
    with pytest.raises(CheckpointError, match="already a model of its library"):
        export_backbone(f"timm:{TIMM_VIT}", "timm", tmp_path / "out.pth")
