"""Backbone zoo: shapes, CIFAR stem, ViT token calls, sin-cos embeddings, weights files, errors."""
from __future__ import annotations

import io
import math
import tarfile

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image

from vissl_lite.backbones import BackboneError, build_backbone, build_backbone_from_config
from vissl_lite.backbones.config import BackboneConfig
from vissl_lite.backbones.pos_embed import sincos_2d_pos_embed
from vissl_lite.config import ConfigError
from vissl_lite.registry import BACKBONES, RegistryError

FEATURES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048,
            "vit_tiny": 192, "vit_small": 384, "vit_base": 768}
REQUIRED = ["resnet18", "resnet50", "vit_tiny_patch16", "vit_small_patch16", "vit_base_patch16",
            "vit_tiny_patch4", "vit_small_patch4", "vit_tiny_patch8", "vit_small_patch8",
            "vit_tiny", "vit_small", "vit_base"]
ALIASES = [n for n in BACKBONES.names() if BACKBONES.describe(n).startswith("alias of")]
CANONICAL = [n for n in BACKBONES.names() if n not in ALIASES   # the zoo's, not the test toys'
             and BACKBONES.get(n).__module__.startswith("vissl_lite")]


def _expected_features(name: str) -> int:
    return FEATURES[name if name.startswith("resnet") else "_".join(name.split("_")[:2])]


def _natural_size(name: str) -> int:
    return 32 if name.endswith(("patch4", "patch8")) else 224


def _cfg(**values):
    cfg = OmegaConf.merge(OmegaConf.structured(BackboneConfig), values)
    OmegaConf.set_readonly(cfg, True)
    return cfg


@pytest.fixture(scope="module")
def cifar_images(cifar_archive) -> torch.Tensor:
    """Eight real CIFAR-10 test images (B, 3, 32, 32), normalised, read from the archive."""
    images = []
    with tarfile.open(cifar_archive, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                images.append(torchvision.transforms.functional.pil_to_tensor(image))
                if len(images) == 8:
                    break
    x = torch.stack(images).float() / 255
    return (x - 0.47) / 0.25


@pytest.fixture(scope="module")
def vit4() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_backbone("vit_tiny_patch4").eval()


# ----------------------------------------------------------------------------- the zoo

def test_required_names_are_registered_and_aliases_point_to_patch16():
    assert set(REQUIRED) <= set(BACKBONES.names())
    for size in ("tiny", "small", "base"):
        assert BACKBONES.get(f"vit_{size}") is BACKBONES.get(f"vit_{size}_patch16")


@pytest.mark.parametrize("name", CANONICAL)
def test_every_backbone_pools_to_num_features_at_its_natural_size(name):
    size = _natural_size(name)
    batch = 1 if size == 224 else 2
    model = build_backbone(name).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, size, size))
    assert model.num_features == _expected_features(name)
    assert out.shape == (batch, model.num_features)
    assert torch.isfinite(out).all()
    if name.startswith("resnet"):
        assert model.family == "resnet"
        assert isinstance(model.fc, torch.nn.Identity)
    else:
        patch = int(name.rsplit("patch", 1)[1])
        assert model.family == "vit"
        assert model.embed_dim == model.num_features
        assert model.patch_size == patch
        assert model.grid_size == (size // patch, size // patch)
        assert model.num_patches == (size // patch) ** 2
        assert model.num_prefix_tokens == 1


def test_resnet_forward_is_the_average_pooled_last_stage(cifar_images):
    model = build_backbone("resnet18", cifar_stem=True).eval()
    x = cifar_images[:4]
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        h = model.layer4(model.layer3(model.layer2(model.layer1(h))))
        torch.testing.assert_close(model(x), h.mean(dim=(2, 3)))


def test_cifar_stem_is_a_3x3_stride_1_conv_without_maxpool_and_keeps_resolution():
    sizes = {}
    for cifar_stem in (False, True):
        model = build_backbone("resnet18", cifar_stem=cifar_stem).eval()
        seen = []
        model.layer1.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
        with torch.no_grad():
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, 512)
        sizes[cifar_stem] = seen[0]
        if cifar_stem:
            assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
            assert isinstance(model.maxpool, torch.nn.Identity)
        else:
            assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
            assert isinstance(model.maxpool, torch.nn.MaxPool2d)
    assert sizes[True] == (32, 32)
    assert sizes[False] == (8, 8)


@pytest.mark.parametrize("name,last_bn", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual_zeroes_the_last_bn_scale_of_every_block(name, last_bn):
    """Barlow Twins, VICReg and MoCo v3 build torchvision's ResNet-50 with zero_init_residual=True:
    each block starts as the identity (its last BN's gamma is 0), every other BN's gamma is 1."""
    cfg = OmegaConf.create({"name": name, "zero_init_residual": True})
    for zero in (False, True):
        model = build_backbone_from_config(cfg if zero else {"name": name})
        blocks = [b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
        assert len(blocks) == (8 if name == "resnet18" else 16)
        for block in blocks:
            for bn_name, bn in block.named_modules():
                if isinstance(bn, torch.nn.BatchNorm2d):
                    expected = 0.0 if zero and bn_name == last_bn else 1.0
                    assert torch.all(bn.weight == expected), (zero, bn_name)
        assert torch.all(model.bn1.weight == 1.0)


def test_drop_path_rate_reaches_timm_blocks():
    model = build_backbone("vit_tiny_patch8", drop_path_rate=0.2)
    rates = [getattr(block.drop_path1, "drop_prob", 0.0) for block in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    assert rates == sorted(rates)


# ----------------------------------------------------------------------------- ViT tokens

def test_forward_tokens_matches_timm_and_avg_pool_is_their_mean(vit4, cifar_images):
    x = cifar_images[:2]
    with torch.no_grad():
        timm_tokens = vit4.forward_features(x)  # timm's own path: CLS + patches, final norm
        tokens = vit4.forward_tokens(x)
        torch.testing.assert_close(tokens, timm_tokens[:, 1:])
        torch.testing.assert_close(vit4(x), tokens.mean(dim=1))
        assert tokens.shape == (2, 64, 192)
        assert vit4.patch_embed_with_pos(x).shape == (2, 64, 192)
        assert vit4.pos_embed_patches().shape == (1, 64, 192)


def test_token_pool_returns_the_cls_token_of_the_same_weights(vit4, cifar_images):
    token = build_backbone("vit_tiny_patch4", global_pool="token").eval()
    token.load_state_dict(vit4.state_dict())
    x = cifar_images[:2]
    with torch.no_grad():
        torch.testing.assert_close(token(x), vit4.forward_features(x)[:, 0])


def test_keep_idx_with_all_patches_in_order_equals_the_full_forward(vit4, cifar_images):
    x = cifar_images[:2]
    keep = torch.arange(64).expand(2, -1)
    with torch.no_grad():
        torch.testing.assert_close(vit4.forward_tokens(x, keep), vit4.forward_tokens(x))


def test_permuting_keep_idx_permutes_the_tokens(vit4, cifar_images):
    x = cifar_images[:2]
    g = torch.Generator().manual_seed(0)
    keep = torch.stack([torch.randperm(64, generator=g)[:16] for _ in range(2)])
    perm = torch.stack([torch.randperm(16, generator=g) for _ in range(2)])
    with torch.no_grad():
        out = vit4.forward_tokens(x, keep)
        out_perm = vit4.forward_tokens(x, torch.gather(keep, 1, perm))
    assert out.shape == (2, 16, 192)
    expected = torch.gather(out, 1, perm.unsqueeze(-1).expand(-1, -1, 192))
    torch.testing.assert_close(out_perm, expected)


def test_kept_tokens_ignore_dropped_patches_but_see_the_cls_token(vit4, cifar_images):
    x = cifar_images[:1].clone()
    keep = torch.tensor([[0, 1, 2, 3, 8, 9, 10, 11]])  # patches over pixel rows 0-7, cols 0-15
    with torch.no_grad():
        before = vit4.forward_tokens(x, keep)
        x[:, :, 16:, 16:] = torch.randn(1, 3, 16, 16)  # only dropped patches change
        torch.testing.assert_close(vit4.forward_tokens(x, keep), before)
        cls = vit4.cls_token.clone()
        vit4.cls_token.add_(1.0)
        changed = vit4.forward_tokens(x, keep)
        vit4.cls_token.copy_(cls)
    assert not torch.allclose(changed, before)


def test_without_class_token_no_prefix_is_added():
    model = build_backbone("vit_tiny_patch8", class_token=False).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        keep = torch.tensor([[5, 0, 7], [1, 2, 3]])
        assert model.num_prefix_tokens == 0 and model.cls_token is None
        assert model.forward_tokens(x, keep).shape == (2, 3, 192)
        torch.testing.assert_close(model.forward_tokens(x), model.forward_features(x))


def test_dynamic_img_size_resamples_position_embeddings():
    model = build_backbone("vit_tiny_patch4", dynamic_img_size=True).eval()
    with torch.no_grad():
        assert model.forward_tokens(torch.randn(2, 3, 16, 24)).shape == (2, 24, 192)
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 192)
    with pytest.raises(BackboneError, match="multiples of the patch size 4"):
        model(torch.randn(1, 3, 18, 18))


# ----------------------------------------------------------------------------- sin-cos

def _sincos_reference(dim: int, gh: int, gw: int):
    quarter = dim // 4
    rows = []
    for i in range(gh):
        for j in range(gw):
            row = []
            for coord in (j, i):  # column first, then row (MAE's layout)
                freqs = [1.0 / 10000 ** (k / quarter) for k in range(quarter)]
                row += [math.sin(coord * f) for f in freqs] + [math.cos(coord * f) for f in freqs]
            rows.append(row)
    return torch.tensor(rows)


def test_sincos_2d_pos_embed_matches_the_formula():
    emb = sincos_2d_pos_embed(16, (3, 5))
    assert emb.shape == (1, 15, 16) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], _sincos_reference(16, 3, 5))
    with_cls = sincos_2d_pos_embed(16, 4, cls_token=True)
    assert with_cls.shape == (1, 17, 16)
    assert torch.equal(with_cls[0, 0], torch.zeros(16))
    torch.testing.assert_close(with_cls[0, 1:], _sincos_reference(16, 4, 4))
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_pos_embed(18, 4)


def test_sincos_vit_has_a_fixed_position_buffer():
    model = build_backbone("vit_tiny_patch8", pos_embed="sincos")
    names = {n for n, _ in model.named_parameters()}
    assert "pos_embed" not in names and "pos_embed" in model.state_dict()
    torch.testing.assert_close(model.pos_embed, sincos_2d_pos_embed(192, 4, cls_token=True))
    torch.testing.assert_close(model.pos_embed_patches()[0], _sincos_reference(192, 4, 4))


# ----------------------------------------------------------------------------- weights files

def test_pretrained_path_round_trip(tmp_path, cifar_images):
    source = build_backbone("resnet18", cifar_stem=True).eval()
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    wrapped = {"epoch": 3, "model": {f"backbone.{k}": v for k, v in source.state_dict().items()}}
    wrapped["model"]["projector.0.weight"] = torch.zeros(2, 2)
    torch.save(wrapped, tmp_path / "wrapped.pt")
    with torch.no_grad():
        expected = source(cifar_images)
        for file in ("plain.pt", "wrapped.pt"):
            loaded = build_backbone("resnet18", cifar_stem=True,
                                    pretrained_path=str(tmp_path / file)).eval()
            torch.testing.assert_close(loaded(cifar_images), expected, rtol=0, atol=0)


def test_safetensors_file_loads(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    source = build_backbone("resnet18", cifar_stem=True)
    safetensors_torch.save_file({f"backbone.{k}": v.contiguous() for k, v in source.state_dict().items()},
                                str(tmp_path / "w.safetensors"))
    loaded = build_backbone("resnet18", cifar_stem=True, pretrained_path=str(tmp_path / "w.safetensors"))
    assert torch.equal(loaded.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BackboneError, match="cannot read .*bad.safetensors as a safetensors file"):
        build_backbone("resnet18", pretrained_path=str(tmp_path / "bad.safetensors"))


def test_torchvision_state_dict_loads_without_its_classifier(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    cfg = _cfg(name="resnet18", pretrained_path=str(tmp_path / "tv.pth"))
    model = build_backbone_from_config(cfg)
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_vit_weights_load_at_another_img_size(tmp_path, vit4):
    torch.save(vit4.state_dict(), tmp_path / "vit.pt")
    model = build_backbone("vit_tiny_patch4", img_size=64, pretrained_path=str(tmp_path / "vit.pt"))
    assert model.pos_embed.shape == (1, 1 + 16 * 16, 192)
    assert torch.equal(model.blocks[3].mlp.fc1.weight, vit4.blocks[3].mlp.fc1.weight)
    assert torch.equal(model.cls_token, vit4.cls_token)


def test_pretrained_path_errors(tmp_path):
    with pytest.raises(BackboneError, match="no such file.*never downloaded"):
        build_backbone("resnet18", pretrained_path=str(tmp_path / "missing.pt"))
    torch.save(build_backbone("resnet18", cifar_stem=True).state_dict(), tmp_path / "cifar.pt")
    with pytest.raises(BackboneError, match=r"does not fit resnet18.*conv1\.weight \(64, 3, 3, 3\) "
                                            r"in file vs \(64, 3, 7, 7\)"):
        build_backbone("resnet18", pretrained_path=str(tmp_path / "cifar.pt"))
    r18 = build_backbone("resnet18").state_dict()
    torch.save(r18, tmp_path / "r18.pt")
    with pytest.raises(BackboneError, match=r"does not fit resnet34: \d+ missing \(layer1.2.bn1"):
        build_backbone("resnet34", pretrained_path=str(tmp_path / "r18.pt"))
    torch.save({**r18, "layer5.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(BackboneError, match=r"does not fit resnet18: 1 unexpected \(layer5.weight\)"):
        build_backbone("resnet18", pretrained_path=str(tmp_path / "extra.pt"))
    torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(BackboneError, match="no tensor .* matches"):
        build_backbone("resnet18", pretrained_path=str(tmp_path / "other.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(BackboneError, match="not a state dict"):
        build_backbone("resnet18", pretrained_path=str(tmp_path / "list.pt"))


# ----------------------------------------------------------------------------- config + errors

def test_build_from_config_takes_img_size_from_the_data_unless_set():
    model = build_backbone_from_config(_cfg(name="vit_tiny_patch8"), image_size=64)
    assert model.img_size == (64, 64)
    model = build_backbone_from_config(_cfg(name="vit_tiny_patch8", img_size=48), image_size=64)
    assert model.img_size == (48, 48)
    resnet = build_backbone_from_config(BackboneConfig(name="resnet18", cifar_stem=True), 32)
    assert resnet.conv1.kernel_size == (3, 3)


def test_unknown_backbone_lists_the_known_names():
    with pytest.raises(RegistryError) as e:
        build_backbone("vit_tiny_patch5")
    assert "vit_tiny_patch4" in str(e.value) and "resnet18" in str(e.value)
    with pytest.raises(RegistryError, match="backbone.name: unknown backbone 'resnet"):
        build_backbone_from_config(_cfg(name="resnet19"), 32)


def test_wrong_input_size_names_img_size_and_the_fix(vit4):
    with pytest.raises(BackboneError, match=r"img_size=32\).*224x224.*backbone\.img_size=224"):
        vit4(torch.randn(1, 3, 224, 224))


def test_options_of_the_other_family_are_refused():
    with pytest.raises(ConfigError, match="backbone.global_pool='token' does not apply to resnet18"):
        build_backbone_from_config(_cfg(name="resnet18", global_pool="token"), 32)
    with pytest.raises(ConfigError, match="backbone.cifar_stem=True does not apply to vit_tiny"):
        build_backbone_from_config(_cfg(name="vit_tiny", cifar_stem=True), 32)
    with pytest.raises(BackboneError, match="drop_path_rate=0.1 does not apply to resnet18"):
        build_backbone("resnet18", drop_path_rate=0.1)
    with pytest.raises(BackboneError, match="unknown backbone option depth"):
        build_backbone("vit_tiny_patch4", depth=3)


def test_invalid_vit_options_are_explained():
    with pytest.raises(BackboneError, match="img_size=30 must be a positive multiple of the patch"):
        build_backbone("vit_tiny_patch4", img_size=30)
    with pytest.raises(BackboneError, match="global_pool='token' needs the CLS token"):
        build_backbone("vit_tiny_patch4", global_pool="token", class_token=False)
    with pytest.raises(BackboneError, match="global_pool='max' is not one of"):
        build_backbone("vit_tiny_patch4", global_pool="max")
    with pytest.raises(BackboneError, match="pos_embed='rope' is not one of"):
        build_backbone("vit_tiny_patch4", pos_embed="rope")


@pytest.mark.parametrize("name,expansion", [("resnet18", 1), ("resnet50", 4)])
def test_width_scales_every_stage_and_keeps_torchvisions_layout(name, expansion):
    """backbone.width=w: stages of w, 2w, 4w, 8w channels (x4 in bottlenecks), features 8w x
    expansion; at 64 the net is torchvision's, parameter for parameter (its state dict loads)."""
    narrow = build_backbone_from_config({"name": name, "width": 16, "cifar_stem": True,
                                         "zero_init_residual": True})
    assert narrow.num_features == 8 * 16 * expansion
    assert [layer[0].conv1.in_channels for layer in (narrow.layer2, narrow.layer3, narrow.layer4)] \
        == [16 * expansion, 32 * expansion, 64 * expansion]
    assert narrow.conv1.kernel_size == (3, 3) and narrow.conv1.out_channels == 16
    last_bn = "bn2" if expansion == 1 else "bn3"
    assert all(torch.all(getattr(b, last_bn).weight == 0) for b in narrow.layer1)
    assert narrow(torch.randn(2, 3, 32, 32)).shape == (2, 8 * 16 * expansion)
    full = build_backbone_from_config({"name": name, "width": 64})
    reference = getattr(torchvision.models, name)()
    reference.fc = torch.nn.Identity()
    assert {k: v.shape for k, v in full.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    with pytest.raises((BackboneError, ConfigError), match="width=16 does not apply to vit_tiny_patch4"):
        build_backbone_from_config({"name": "vit_tiny_patch4", "width": 16})
