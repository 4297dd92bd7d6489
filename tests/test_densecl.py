"""DenseCL: the loss against the official ``forward_train`` formulas written out (values and
gradients; lightly has no DenseCL loss), the step's wiring (correspondence from backbone maps,
queue pushes before/after, EMA key encoder), 2 ranks == 1 (keys of every rank enter the queues),
queues declared per rank (one graph per step: tests/test_step_hygiene.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _helpers import assert_same_value_and_grads, tiny_method, views_batch
from _je import assert_ranks_match_full, head_layout, lightly_module, loss_on_ranks
from vissl_lite.config import load_config
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import per_rank_buffer_names
from vissl_lite.methods.densecl import DenseCL, dense_correspondence, densecl_loss
from vissl_lite.shapes import RunShape

N, C, D, S, K, T, LAMBDA = 4, 10, 6, 9, 12, 0.2, 0.5


def _official(q_b, k_b, q, k, q_grid, k_grid, queue, queue2):
    """WXinlong/DenseCL densecl.py forward_train after the encoders, as written there: queues
    (D, K), grids (N, D, S), backbone maps (N, C, S); ContrastiveHead divides by T in place."""
    q_b, k_b = F.normalize(q_b, dim=1), F.normalize(k_b, dim=1)
    l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", [q, queue.clone().detach()])
    backbone_sim_matrix = torch.matmul(q_b.permute(0, 2, 1), k_b)
    densecl_sim_ind = backbone_sim_matrix.max(dim=2)[1]
    indexed_k_grid = torch.gather(k_grid, 2,
                                  densecl_sim_ind.unsqueeze(1).expand(-1, k_grid.size(1), -1))
    densecl_sim_q = (q_grid * indexed_k_grid).sum(1)
    l_pos_dense = densecl_sim_q.view(-1).unsqueeze(-1)
    q_grid = q_grid.permute(0, 2, 1)
    q_grid = q_grid.reshape(-1, q_grid.size(2))
    l_neg_dense = torch.einsum("nc,ck->nk", [q_grid, queue2.clone().detach()])

    def head(pos, neg):
        logits = torch.cat((pos, neg), dim=1)
        logits /= T
        return F.cross_entropy(logits, torch.zeros((pos.size(0),), dtype=torch.long))

    return head(l_pos, l_neg) * (1 - LAMBDA) + head(l_pos_dense, l_neg_dense) * LAMBDA


def test_loss_equals_the_official_formulas_in_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    q_b, k_b = torch.randn(N, C, S, generator=g), torch.randn(N, C, S, generator=g)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=g), dim=1)  # noqa: E731
    q, k, q_grid, k_grid = unit(N, D), unit(N, D), unit(N, D, S), unit(N, D, S)
    queue, queue2 = unit(K, D), unit(K, D)
    match = dense_correspondence(q_b, k_b)
    assert_same_value_and_grads(
        lambda q_, g_: densecl_loss(q_, k, g_, k_grid, match, queue, queue2, T, LAMBDA)[0],
        lambda q_, g_: _official(q_b, k_b, q_, k, g_, k_grid, queue.T, queue2.T), [q, q_grid])


def test_step_matches_cells_by_backbone_features_and_pushes_keys_after_use():
    torch.manual_seed(0)
    method = tiny_method("densecl").train()
    queue, dense_queue = method.queue.bank.clone(), method.dense_queue.bank.clone()
    batch = views_batch(method, batch=6, global_size=64)
    out = method.training_step(batch)
    torch.manual_seed(0)
    ref = tiny_method("densecl").train()
    x_q, x_k = batch["views"]
    with torch.no_grad():
        q_map, k_map = ref.backbone.forward_features(x_q), ref.key_backbone.forward_features(x_k)
        assert q_map.shape[-2:] == (2, 2)
        q, r, _ = (F.normalize(x, dim=1) for x in ref.neck(q_map))
        k, t, k_pooled = (F.normalize(x, dim=1) for x in ref.key_neck(k_map))
        match = dense_correspondence(q_map.flatten(2), k_map.flatten(2))
        expected, single, dense = densecl_loss(q, k, r, t, match, queue, dense_queue)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.metrics["loss_dense"], dense)
    torch.testing.assert_close(method.queue.bank[:6], k)                  # pushed after use
    torch.testing.assert_close(method.dense_queue.bank[:6], k_pooled)
    torch.testing.assert_close(method.queue.bank[6:], queue[6:])
    assert method.queue.ptr.item() == method.dense_queue.ptr.item() == 6


def test_key_encoder_is_a_0999_ema_of_the_query_encoder():
    torch.manual_seed(0)
    method = tiny_method("densecl").train()
    with torch.no_grad():
        for p in list(method.backbone.parameters()) + list(method.neck.parameters()):
            p.add_(0.5)
    before = [p.clone() for p in method.key_neck.parameters()]
    method.on_step_end(0, 10)
    for b, k, q in zip(before, method.key_neck.parameters(), method.neck.parameters()):
        torch.testing.assert_close(k, 0.999 * b + 0.001 * q)


def _two_steps(x_q, x_k):
    """Step 1 fills the queues (with every rank's keys); step 2's loss contrasts against them.
    BatchNorm in eval mode: per-sample features, the same on any split of the batch."""
    torch.manual_seed(0)
    method = tiny_method("densecl").eval()
    method.training_step({"views": [x_q.detach(), x_k.detach()]})
    return method.training_step({"views": [x_q, x_k]}).loss


def test_two_ranks_equal_one_process(tmp_path):
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)]
    parts = loss_on_ranks(_two_steps, inputs, (), tmp_path)
    assert_ranks_match_full(parts, _two_steps, inputs, (), same_loss_on_every_rank=False)


def test_queues_are_per_rank_state_and_the_heads_are_the_official_neck(tmp_path):
    method = tiny_method("densecl")
    assert per_rank_buffer_names(method) == ["queue.bank", "queue.ptr", "dense_queue.bank",
                                             "dense_queue.ptr"]
    heads = lightly_module("models.modules.heads")
    assert head_layout(method.neck.mlp) == head_layout(heads.DenseCLProjectionHead(512, 32, 16))
    assert [type(m).__name__ for m in method.neck.dense] == ["Conv2d", "ReLU", "Conv2d"]
    m = load_config("densecl/imagenet_resnet50", [f"data.root={tmp_path}"]).method
    assert (m.temperature, m.queue_size, m.loss_lambda, m.momentum, m.hidden_dim,
            m.output_dim) == (0.2, 65536, 0.5, 0.999, 2048, 128)


@pytest.mark.parametrize("override", [{"temperature": 0.0}, {"loss_lambda": 1.5},
                                      {"queue_size": 0}])
def test_out_of_range_values_are_config_errors(override):
    with pytest.raises(ConfigError):
        tiny_method("densecl", **override)


def test_a_queue_smaller_than_the_keys_of_one_step_is_refused_at_load():
    DenseCL.check_run({"queue_size": 256}, RunShape(batch_size=256, accumulate=1, world=2))
    with pytest.raises(ConfigError, match="queue_size=128"):
        DenseCL.check_run({"queue_size": 128}, RunShape(batch_size=256, accumulate=1, world=2))
