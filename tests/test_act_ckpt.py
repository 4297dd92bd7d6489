"""Activation checkpointing (``train.activation_checkpointing``) recomputes, it does not change.

A method with checkpointed blocks gives the same loss and gradients as without, for a ViT method
(DINO: backbone blocks, with drop-path, whose masks must be drawn the same in the recompute) and
a ResNet method (SimCLR: the residual blocks of every stage); ``selective`` checkpoints every
other block; parameter names stay; the checkpointed step still compiles as one graph.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo

from _helpers import tiny_method, views_batch
from vissl_lite.engine.act_ckpt import apply_activation_checkpointing, checkpoint_units
from vissl_lite.registry import METHODS
from vissl_lite.backbones.vit import ViT


def _method(name: str):
    torch.manual_seed(0)
    if name == "dino":
        backbone = ViT(patch_size=4, embed_dim=48, depth=3, num_heads=3, img_size=32,
                       drop_path_rate=0.2, dynamic_img_size=True, name="vit_test")
        method = METHODS.get("dino")(backbone, METHODS.get("dino").tiny_config)
    else:
        method = tiny_method(name)
    method.setup(total_steps=10, steps_per_epoch=5)
    return method.train()


def _loss_and_grads(method, batch):
    torch.manual_seed(7)
    loss = method.training_step(batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in method.named_parameters()
                           if p.grad is not None}


def _count_block_runs(units):
    """Per block, how often its first child runs (twice per step when the block is recomputed)."""
    calls = [0] * len(units)
    for i, unit in enumerate(units):
        next(unit.children()).register_forward_hook(
            lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize("name", ["dino", "simclr"])
@pytest.mark.parametrize("mode", ["blocks", "selective"])
def test_checkpointed_blocks_give_the_same_loss_and_gradients(name, mode):
    plain = _method(name)
    checkpointed = copy.deepcopy(plain)
    units = checkpoint_units(checkpointed)
    assert apply_activation_checkpointing(checkpointed, mode) == (
        len(units) if mode == "blocks" else (len(units) + 1) // 2)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in
                                                       checkpointed.named_parameters()]
    batch = views_batch(plain, batch=4)
    plain_runs, runs = _count_block_runs(checkpoint_units(plain)), _count_block_runs(units)
    loss, grads = _loss_and_grads(plain, batch)
    loss_ckpt, grads_ckpt = _loss_and_grads(checkpointed, batch)
    every = 1 if mode == "blocks" else 2
    assert runs == [n * (2 if i % every == 0 else 1) for i, n in enumerate(plain_runs)]
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads.keys() == grads_ckpt.keys() and grads
    for key in grads:
        torch.testing.assert_close(grads_ckpt[key], grads[key], rtol=1e-6, atol=1e-7, msg=key)


def test_the_frozen_teacher_is_not_checkpointed_and_none_changes_nothing():
    method = _method("dino")
    teacher_blocks = [m for m in method.teacher_backbone.modules() if type(m).__name__ == "Block"]
    assert teacher_blocks
    assert apply_activation_checkpointing(method, "none") == 0
    apply_activation_checkpointing(method, "blocks")
    assert all(type(m).__name__ == "Block" for m in teacher_blocks)
    assert all(type(m).__name__ == "CheckpointedBlock" for m in method.backbone.blocks)


def test_a_checkpointed_step_compiles_as_one_graph():
    method = _method("simclr")
    apply_activation_checkpointing(method, "blocks")
    batch = views_batch(method, batch=4)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda b: method.training_step(b).loss)(batch)
    assert explained.graph_break_count == 0, explained.break_reasons
