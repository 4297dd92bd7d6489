"""data2vec 2.0 (vissl_lite/methods/data2vec2.py): inverse block masks against the official
compute_block_mask_2d, the targets (top-K feed-forward outputs, instance norm, layer norm) and the
loss written out, the clones, the EMA schedule, presets, and 30 real CIFAR-10 steps."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _helpers import load_cifar_images
from _vit_steps import thirty_steps
from vissl_lite.augment.inverse_block import inverse_block_mask
from vissl_lite.backbones.vit import ViT
from vissl_lite.config import ConfigError, load_config
from vissl_lite.errors import MaskError
from vissl_lite.methods import build_method
from vissl_lite.methods.data2vec2 import Data2Vec2, average_targets, ffn_outputs

REPO = Path(__file__).resolve().parents[1]


def tiny_vit(depth: int = 3, dim: int = 48) -> ViT:
    return ViT(patch_size=4, embed_dim=dim, depth=depth, num_heads=3, img_size=32, name="vit_test")


def official_union(centres: torch.Tensor, d: int, mask_length: int) -> torch.Tensor:
    """compute_block_mask_2d's block step, written out: every centre's mask_length^2 offsets,
    clamped to the d x d grid, set to 1 (before require_same_masks and the inversion)."""
    b = centres.shape[0]
    mask = torch.zeros(b, d, d)
    mask.view(b, -1).scatter_(1, centres, 1)
    c0, c1, c2 = mask.nonzero(as_tuple=True)
    offset = mask_length // 2
    for i in range(mask_length):
        for j in range(mask_length):
            mask[c0, (c1 + i - offset).clamp(0, d - 1), (c2 + j - offset).clamp(0, d - 1)] = 1
    return mask.view(b, -1).bool()


@pytest.mark.parametrize("d, mask_length, adjust", [(14, 3, 0.07), (8, 2, 0.07), (8, 3, 0.5)])
def test_inverse_block_masks_follow_compute_block_mask_2d(d, mask_length, adjust):
    """Visible = the blocks around int(N (0.2 + adjust) / m^2) random centres, trimmed to (or
    completed up to) exactly int(N * 0.2) patches; everything else is masked."""
    n, batch = d * d, 256
    keep = int(n * (1 - 0.8))
    num_centres = int(n * ((1 - 0.8 + adjust) / mask_length ** 2))
    g = torch.Generator().manual_seed(3)
    centres = (torch.rand((batch, num_centres), generator=g) * n).long()   # its torch.randint
    union = official_union(centres, d, mask_length)
    masks = inverse_block_mask(batch, (d, d), 0.8, mask_length, adjust,
                               generator=torch.Generator().manual_seed(3))
    visible = ~masks.mask
    assert torch.equal(visible.sum(1), torch.full((batch,), keep))
    assert masks.keep_idx.shape == (batch, keep) and masks.mask_idx.shape == (batch, n - keep)
    assert torch.equal(torch.cat([masks.keep_idx, masks.mask_idx], 1).sort(1).values,
                       torch.arange(n).expand(batch, -1))
    assert torch.equal(visible.gather(1, masks.keep_idx), torch.ones(batch, keep, dtype=torch.bool))
    big = union.sum(1) >= keep
    assert torch.all((visible & ~union)[big].sum(1) == 0)         # trimmed: only block patches
    assert torch.all((union & ~visible)[~big].sum(1) == 0)        # completed: every block patch
    assert big.any() and ((~big).any() or mask_length == 3 and d == 8)
    with pytest.raises(MaskError, match="mask_prob"):
        inverse_block_mask(2, (2, 2), 0.9, 2)


def test_ffn_outputs_are_the_blocks_feed_forward_branches():
    vit = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    hooked = []
    for blk in vit.blocks:
        blk.mlp.register_forward_hook(lambda m, i, o: hooked.append(o[:, 1:]))
    outs = ffn_outputs(vit, x)
    assert len(outs) == len(hooked) == 3
    for ours, theirs in zip(outs, hooked[:3]):
        torch.testing.assert_close(ours, theirs)
    # the manual pass is the model's own: the last block's output equals blocks(embed_tokens)
    hooked.clear()
    tokens = vit.blocks(vit.embed_tokens(x))
    torch.testing.assert_close(hooked[-1], outs[-1])
    assert tokens.shape == (2, 65, 48)


def test_targets_are_layer_normed_mean_of_instance_normed_top_k():
    """data2vec2.py make_targets with instance_norm_target_layer and layer_norm_targets."""
    layers = [torch.randn(2, 16, 8) * (i + 1) + i for i in range(4)]
    y = average_targets(layers, top_k=3)
    normed = [(t - t.mean(1, keepdim=True)) / (t.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
              for t in layers[1:]]
    mean = sum(normed) / 3
    want = (mean - mean.mean(-1, keepdim=True)) / (mean.var(-1, unbiased=False, keepdim=True)
                                                   + 1e-5).sqrt()
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


def test_loss_is_the_official_sample_size_normalised_sum():
    """d2v_loss (MSE x 1/sqrt(D), reduction none) summed, the CLS term x cls_loss x M, the total
    divided by M, the number of masked tokens (fairseq divides the gradient by sample_size)."""
    method = Data2Vec2(tiny_vit(), {"clone_batch": 3, "cls_loss": 0.5, "decoder_groups": 3,
                                    "average_top_k_layers": 2,
                                    "decoder_dim": 48, "mask_length": 2})
    b, n, d = 2, 64, 48
    targets = torch.randn(b, n, d)
    pred, cls = torch.randn(b * 3, n, d), torch.randn(b * 3, d)
    masks = inverse_block_mask(b * 3, (8, 8), 0.8, 2)
    regression, cls_term = method.loss_terms(pred, cls, targets, masks.mask_idx)

    y = targets.repeat_interleave(3, 0)[masks.mask]
    m = y.shape[0]
    reg_sum = (F.mse_loss(pred[masks.mask], y, reduction="none") / math.sqrt(d)).sum()
    cls_sum = (F.mse_loss(cls, targets.mean(1).repeat_interleave(3, 0), reduction="none")
               / math.sqrt(d)).sum() * (0.5 * m)
    torch.testing.assert_close(regression + cls_term, (reg_sum + cls_sum) / m)


def test_student_sees_clones_of_visible_patches_and_teacher_gets_no_gradient():
    torch.manual_seed(0)
    method = Data2Vec2(tiny_vit(), {**Data2Vec2.tiny_config, "clone_batch": 3}).train()
    method.setup(total_steps=10, steps_per_epoch=5)
    seen = []
    method.backbone.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    images = torch.randn(2, 3, 32, 32)
    out = method.training_step({"views": [images]})
    assert seen == [(6, 1 + int(64 * 0.2), 48)]          # B x C samples, CLS + 12 visible
    out.loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert method.decoder.proj.weight.grad.abs().sum() > 0
    assert method.backbone.cls_token.grad.abs().sum() > 0
    assert out.embedding.shape == (2, 48) and method.backbone_for_eval() is method.backbone


def test_ema_decay_anneals_linearly_then_stays():
    method = Data2Vec2(tiny_vit(), Data2Vec2.tiny_config)
    method.setup(total_steps=1000, steps_per_epoch=10)        # 20 epochs = 200 annealing steps
    assert method.momentum_at(0) == pytest.approx(0.9998)
    assert method.momentum_at(100) == pytest.approx(0.9998 + 0.5 * (0.99999 - 0.9998))
    assert method.momentum_at(200) == method.momentum_at(900) == pytest.approx(0.99999)
    student = [p.detach().clone() for p in method.backbone.parameters()]
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.teacher.parameters()]
    method.on_step_end(100, 1000)
    m = method.momentum_at(100)
    for t, t0, s in zip(method.teacher.parameters(), before, student):
        torch.testing.assert_close(t, m * t0 + (1 - m) * (s + 1.0))


def test_bad_config_values_raise_clear_errors():
    with pytest.raises(ConfigError, match="average_top_k_layers"):
        Data2Vec2(tiny_vit(), {"average_top_k_layers": 4, "decoder_groups": 3})
    with pytest.raises(ConfigError, match="decoder_groups"):
        Data2Vec2(tiny_vit(), {"decoder_groups": 5, "average_top_k_layers": 2})
    with pytest.raises(ConfigError, match="class_token"):
        Data2Vec2(ViT(patch_size=4, embed_dim=48, depth=1, num_heads=3, img_size=32,
                      class_token=False, name="v"), {"average_top_k_layers": 1,
                                                     "decoder_groups": 3})


def test_presets_validate_and_build(tmp_path):
    for preset in ("cifar10_vit_tiny", "imagenet_vit_base"):
        cfg = load_config(REPO / "configs" / "data2vec2" / f"{preset}.yaml",
                          [f"data.root={tmp_path}"])
        assert cfg.method.average_top_k_layers == 10 and cfg.method.clone_batch == 16
        assert cfg.method.ema_decay == 0.9998 and cfg.method.ema_end_decay == 0.99999
    method = build_method(load_config(REPO / "configs" / "data2vec2" / "cifar10_vit_tiny.yaml",
                                      [f"data.root={tmp_path}"]))
    assert isinstance(method, Data2Vec2) and method.grid_size == (8, 8)
    assert len(method.backbone.blocks) == 12        # the top 10 of 12 blocks, as the official


def test_thirty_steps_on_real_cifar10_lower_the_loss_without_collapse(cifar_root):
    torch.manual_seed(0)
    method = Data2Vec2(tiny_vit(depth=2), {
        "clone_batch": 4, "average_top_k_layers": 2, "decoder_dim": 48, "decoder_groups": 3,
        "decoder_layers": 2, "mask_length": 2})
    run = thirty_steps(method, load_cifar_images(cifar_root, 256), "data2vec2", batch=16,
                       min_scale=0.2)
    assert run.last < 0.85 * run.first, run       # seed 0: 12.72 -> 9.94, RankMe 8.0 -> 5.7
