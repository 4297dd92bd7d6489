"""NNCLR: the support set against lightly's NNMemoryBankModule (lookups and FIFO updates, across
the wrap), the loss against lightly's NNCLR benchmark loss (values and gradients), gathered over
2 ranks == 1, per-rank support sets saved and restored per rank, one graph per step."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from _helpers import assert_same_value_and_grads, tiny_method
from _je import (assert_one_graph, assert_ranks_match_full, head_layout, lightly_module,
                 loss_on_ranks, one_training_step)
from vissl_lite.config import load_config
from vissl_lite.errors import ConfigError
from vissl_lite.methods import build_method
from vissl_lite.methods.base import per_rank_buffer_names
from vissl_lite.methods.nnclr import NNMemoryBank
from vissl_lite.methods.simclr import nt_xent_loss


def test_support_set_equals_lightlys_nn_memory_bank_across_the_wrap():
    """Size 10, batches of 4: the third push crosses the end, is cut there (lightly drops the
    rest) and the pointer returns to 0; every lookup returns lightly's neighbour."""
    modules = lightly_module("models.modules")
    theirs = modules.NNMemoryBankModule(size=(10, 6))
    ours = NNMemoryBank(10, 6)
    ours.bank.copy_(theirs.bank)
    g = torch.Generator().manual_seed(0)
    for step in range(5):
        z = torch.randn(4, 6, generator=g)
        torch.testing.assert_close(ours.nearest(z), theirs(z, update=False), rtol=0, atol=0)
        ours.push(z)
        theirs(z, update=True)
        torch.testing.assert_close(ours.bank, theirs.bank, rtol=0, atol=0)
        assert ours.ptr.item() == theirs.bank_ptr.item(), step


def test_a_batch_larger_than_the_support_set_is_a_config_error():
    with pytest.raises(ConfigError, match="queue_size"):
        NNMemoryBank(3, 4).push(torch.randn(5, 4))


def _nnclr_loss(nn_1, nn_2, p_1, p_2):
    return 0.5 * (nt_xent_loss(nn_1, p_2, 0.5) + nt_xent_loss(nn_2, p_1, 0.5))


def test_loss_equals_lightlys_nnclr_benchmark_loss():
    """lightly: 0.5 * (NTXentLoss()(NN(z0), p1) + NTXentLoss()(NN(z1), p0)); gradients reach p."""
    crit = lightly_module("loss").NTXentLoss()
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(8, 5, generator=g, dtype=torch.float64) for _ in range(4)]
    assert_same_value_and_grads(
        lambda *x: _nnclr_loss(*x).double(),
        lambda a, b, c, d: 0.5 * (crit(a.float(), d.float()) + crit(b.float(), c.float())).double(),
        inputs, value_tol=dict(rtol=1e-5, atol=1e-6), grad_tol=dict(rtol=1e-4, atol=1e-6))


def test_loss_gathered_over_two_ranks_equals_full_batch(tmp_path):
    inputs = [torch.randn(8, 5) for _ in range(4)]
    parts = loss_on_ranks(_nnclr_loss, inputs, (), tmp_path)
    assert_ranks_match_full(parts, _nnclr_loss, inputs, (), same_loss_on_every_rank=False)


def test_support_set_is_per_rank_state_of_the_engine():
    """The support set is declared per rank: DDP leaves it alone and every checkpoint keeps each
    rank's copy (the mechanism is tested on 2 ranks with SwAV's queue in test_engine_ddp.py)."""
    method = tiny_method("nnclr")
    assert per_rank_buffer_names(method) == ["support.bank", "support.ptr"]
    assert set(per_rank_buffer_names(method)) <= set(dict(method.named_buffers()))


def test_cifar_preset_heads_are_lightlys_benchmark_heads(tmp_path):
    heads = lightly_module("models.modules.heads")
    method = build_method(load_config("nnclr/cifar10_resnet18", [f"data.root={tmp_path}"]))
    theirs = heads.ProjectionHead([(512, 2048, torch.nn.BatchNorm1d(2048), torch.nn.ReLU()),
                                   (2048, 256, torch.nn.BatchNorm1d(256), None)])

    assert head_layout(method.projector) == head_layout(theirs)
    assert head_layout(method.predictor) == head_layout(heads.NNCLRPredictionHead(256, 4096, 256))
    assert tuple(method.support.bank.shape) == (4096, 256) and method.cfg.temperature == 0.5


def test_step_uses_neighbours_before_the_push_and_is_one_graph():
    torch.manual_seed(0)
    bank = tiny_method("nnclr").support.bank.clone()     # the initial support set of the step's
    method, batch, out = one_training_step("nnclr")
    with torch.no_grad():
        z = [method.projector(method.backbone(v)) for v in batch["views"]]
        p = [method.predictor(x) for x in z]
        nn = [bank[(F.normalize(x, dim=1) @ F.normalize(bank, dim=1).T).argmax(1)] for x in z]
    expected = 0.5 * (nt_xent_loss(nn[0], p[1], 0.1) + nt_xent_loss(nn[1], p[0], 0.1))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(method.support.bank[:6], z[1])           # z_2 pushed after lookup
    assert method.support.ptr.item() == 6
    assert_one_graph(method, batch)
