"""AIM (vissl_lite/methods/aim.py): prefix-causal attention and the head equal to lightly's
MaskedCausalAttention / MaskedCausalBlock and AIMPredictionHead, the next-patch loss written
out, causality, presets, and 30 real CIFAR-10 steps."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightly.models.modules import AIMPredictionHead
from lightly.models.modules.masked_causal_vision_transformer import MaskedCausalBlock

from _helpers import load_cifar_images
from _vit_steps import thirty_steps
from vissl_lite.backbones.vit import ViT
from vissl_lite.config import ConfigError, load_config
from vissl_lite.methods import build_method
from vissl_lite.methods.aim import AIM, aim_head, prefix_causal_mask

REPO = Path(__file__).resolve().parents[1]


def tiny_vit(depth: int = 2, dim: int = 48) -> ViT:
    return ViT(patch_size=4, embed_dim=dim, depth=depth, num_heads=3, img_size=32,
               pos_embed="sincos", class_token=False, name="vit_test")


def test_prefix_causal_attention_equals_lightlys_masked_causal_block():
    torch.manual_seed(0)
    vit = tiny_vit().eval()
    theirs = MaskedCausalBlock(dim=48, num_heads=3, qkv_bias=True).eval()
    theirs.load_state_dict(vit.blocks[0].state_dict())
    prefix = torch.tensor([1, 5, 63])
    lightly_mask = torch.arange(64)[None, :] >= prefix[:, None]     # True: causal (non-prefix)
    torch.testing.assert_close(prefix_causal_mask(prefix, 64),
                               theirs.attn._get_attention_mask(torch.zeros(3, 64, 48),
                                                               lightly_mask))
    x = torch.randn(3, 64, 48)
    torch.testing.assert_close(vit.blocks[0](x, attn_mask=prefix_causal_mask(prefix, 64)),
                               theirs(x, mask=lightly_mask), rtol=1e-5, atol=1e-6)


def test_head_equals_lightlys_aim_prediction_head():
    torch.manual_seed(0)
    ours = aim_head(48, 27, hidden_dim=32, num_blocks=2)
    theirs = AIMPredictionHead(input_dim=48, output_dim=27, hidden_dim=32, num_blocks=2)
    ours.load_state_dict({k[len("blocks."):]: v for k, v in theirs.state_dict().items()})
    x = torch.randn(4, 10, 48)
    torch.testing.assert_close(ours(x), theirs(x))


def test_next_patch_loss_written_out():
    method = AIM(tiny_vit(), AIM.tiny_config)
    images, pred = torch.randn(2, 3, 32, 32), torch.randn(2, 64, 48)
    prefix = torch.tensor([3, 60])
    per_image = []
    for b in range(2):
        terms = []
        for k in range(int(prefix[b]), 64):                 # every non-prefix patch k
            i, j = divmod(k, 8)
            t = images[b, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].permute(1, 2, 0).reshape(-1)
            t = (t - t.mean()) / (t.var() + 1e-6).sqrt()
            terms.append(((pred[b, k - 1] - t) ** 2).mean())  # predicted from position k - 1
        per_image.append(torch.stack(terms).mean())                # eq. 2: per image
    torch.testing.assert_close(method.next_patch_loss(pred, images, prefix),
                               torch.stack(per_image).mean())


def test_predictions_never_see_later_patches_outside_the_prefix():
    torch.manual_seed(0)
    method = AIM(tiny_vit(), AIM.tiny_config).eval()
    images = torch.randn(1, 3, 32, 32)
    prefix = torch.tensor([10])
    changed = images.clone()
    changed[:, :, 24:, :] += 3.0                             # patches 48..63 (rows 6, 7)
    a, b = method.predict(images, prefix), method.predict(changed, prefix)
    torch.testing.assert_close(a[:, :48], b[:, :48])
    assert not torch.allclose(a[:, 48:], b[:, 48:])
    inside = images.clone()
    inside[:, :, :4, 4:8] += 3.0                             # patch 1, inside the prefix
    assert not torch.allclose(method.predict(inside, prefix)[:, 0], a[:, 0])  # bidirectional
    k = method.sample_prefix(10000)
    assert int(k.min()) == 1 and int(k.max()) == 63


def test_a_cls_token_joins_the_prefix_and_leaks_nothing():
    torch.manual_seed(0)
    vit = ViT(patch_size=4, embed_dim=48, depth=2, num_heads=3, img_size=32, name="v")
    method = AIM(vit, AIM.tiny_config).eval()
    images, prefix = torch.randn(1, 3, 32, 32), torch.tensor([10])
    changed = images.clone()
    changed[:, :, 24:, :] += 3.0
    a, b = method.predict(images, prefix), method.predict(changed, prefix)
    assert a.shape == (1, 64, 48)
    torch.testing.assert_close(a[:, :48], b[:, :48])
    with pytest.raises(ConfigError, match="2 patches"):
        AIM(ViT(patch_size=16, embed_dim=48, depth=1, num_heads=3, img_size=16, name="v"), {})


@pytest.mark.parametrize("preset", ["cifar10_vit_tiny", "imagenet_vit_base"])
def test_presets_validate(preset, tmp_path):
    cfg = load_config(REPO / "configs" / "aim" / f"{preset}.yaml", [f"data.root={tmp_path}"])
    assert cfg.backbone.class_token is False and cfg.train.grad_clip == 1.0
    if "cifar10" in preset:
        assert isinstance(build_method(cfg), AIM)


def test_thirty_steps_on_real_cifar10_lower_the_loss_without_collapse(cifar_root):
    torch.manual_seed(0)
    method = AIM(tiny_vit(), {"head_dim": 64, "head_blocks": 1})
    run = thirty_steps(method, load_cifar_images(cifar_root, 256), "aim", batch=32, min_scale=0.2)
    assert run.last < 0.9 * run.first, run        # seed 0: 1.152 -> 0.722, RankMe 6.2 -> 5.7
    assert run.rank > 0.5 * run.initial_rank, run
