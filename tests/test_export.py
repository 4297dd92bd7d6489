"""Your encoder out: ``vissl-lite export`` into timm and torchvision models with identical
features, safetensors, and ``vissl_lite.load_backbone``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vissl_lite
from vissl_lite.cli import main
from vissl_lite.config import load_config, to_dict
from vissl_lite.engine.checkpoint import FORMAT_VERSION
from vissl_lite.errors import CheckpointError
from vissl_lite.methods import build_method


def write_checkpoint(path: Path, preset: str, *overrides: str) -> torch.nn.Module:
    """A checkpoint as the trainer writes it, of a randomly initialised method whose BatchNorm
    statistics are not the defaults (so that loading them is checked too)."""
    cfg = load_config(preset, ["data.root=/unused", *overrides])
    method = build_method(cfg)
    with torch.no_grad():
        for name, buf in method.named_buffers():
            if "running_" in name:
                buf.uniform_(0.5, 1.5)
    torch.save({"format_version": FORMAT_VERSION, "model": method.state_dict(),
                "config": to_dict(cfg), "method": cfg.method.name,
                "backbone": cfg.backbone.name}, path)
    return method.backbone_for_eval().eval()


def exported(tmp_path, capsys, ckpt, fmt, name):
    out = tmp_path / name
    assert main(["export", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    snippet = capsys.readouterr().out.split("load it with:\n", 1)[1]
    namespace: dict = {}
    exec(snippet, namespace)  # the printed Python, as a user would paste it
    return namespace, out


@torch.no_grad()
def test_resnet_into_timm_and_torchvision_with_identical_features(tmp_path, capsys):
    ckpt = tmp_path / "last.pt"
    ours = write_checkpoint(ckpt, "simclr/cifar10_resnet18", "backbone.cifar_stem=false")
    images = torch.randn(4, 3, 64, 64)
    expected = ours(images)

    loaded = vissl_lite.load_backbone(ckpt)
    assert not loaded.training and torch.equal(loaded(images), expected)

    timm_model = exported(tmp_path, capsys, ckpt, "timm", "r18.pth")[0]["model"].eval()
    assert type(timm_model).__module__.startswith("timm.")
    assert torch.equal(timm_model(images), expected)

    tv_model = exported(tmp_path, capsys, ckpt, "torchvision", "r18_tv.pth")[0]["model"].eval()
    assert type(tv_model).__module__.startswith("torchvision.")
    assert torch.equal(tv_model(images), expected)

    _, out = exported(tmp_path, capsys, ckpt, "safetensors", "r18.safetensors")
    from safetensors.torch import load_file
    state = load_file(str(out))
    assert state.keys() == ours.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in ours.state_dict().items())


@torch.no_grad()
def test_cifar_stem_resnet_goes_to_torchvision_not_timm(tmp_path, capsys):
    ckpt = tmp_path / "last.pt"
    ours = write_checkpoint(ckpt, "simclr/cifar10_resnet18")
    images = torch.randn(2, 3, 32, 32)
    tv_model = exported(tmp_path, capsys, ckpt, "torchvision", "tv.pth")[0]["model"].eval()
    assert torch.equal(tv_model(images), ours(images))
    assert main(["export", str(ckpt), "--format", "timm", "--out", str(tmp_path / "t.pth")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--format torchvision" in err


@torch.no_grad()
def test_vit_into_timm_with_identical_features(tmp_path, capsys):
    ckpt = tmp_path / "last.pt"
    ours = write_checkpoint(ckpt, "mae/cifar10_vit_tiny")
    images = torch.randn(2, 3, 32, 32)
    timm_model = exported(tmp_path, capsys, ckpt, "timm", "vit.safetensors")[0]["model"].eval()
    assert torch.allclose(timm_model(images), ours(images), atol=1e-6, rtol=0)
    with pytest.raises(CheckpointError, match="ViT: use --format timm"):
        vissl_lite.export_backbone(ckpt, "torchvision", tmp_path / "x.pth")


def test_export_sidecar_is_typed_with_input_size_and_normalisation_and_files_are_0644(tmp_path, capsys):
    """Issue 22: the safetensors file was 0600 and the sidecar held strings only, without the
    input size and mean/std the encoder expects."""
    import json
    import os
    import stat

    from safetensors import safe_open

    ckpt = tmp_path / "last.pt"
    write_checkpoint(ckpt, "simclr/cifar10_resnet18", "augment.mean=[0.5,0.4,0.3]",
                     "augment.std=[0.2,0.25,0.3]")
    old = os.umask(0o022)
    try:
        _, out = exported(tmp_path, capsys, ckpt, "safetensors", "r18.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    card = json.loads(Path(f"{out}.json").read_text())
    assert card["input_size"] == 32 and card["num_features"] == 512 and card["cifar_stem"] is True
    assert card["mean"] == [0.5, 0.4, 0.3] and card["std"] == [0.2, 0.25, 0.3]
    assert card["arch"] == "resnet18" and card["family"] == "resnet" and card["format"] == "safetensors"
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["arch"] == "resnet18" and json.loads(meta["mean"]) == [0.5, 0.4, 0.3]
    assert json.loads(meta["input_size"]) == 32
