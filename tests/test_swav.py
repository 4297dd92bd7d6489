"""SwAV: Sinkhorn-Knopp and the swapped-prediction loss against the formula and lightly's
SwaVLoss, Sinkhorn gathered over 2 ranks == 1, the queue, prototype freezing, one graph."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _helpers import assert_same_value_and_grads, tiny_method, views_batch
from _je import assert_one_graph, assert_ranks_match_full, lightly_module, loss_on_ranks
from vissl_lite.errors import ConfigError
from vissl_lite.methods.swav import sinkhorn, swav_loss


def reference_sinkhorn(scores: np.ndarray, iterations: int = 3, eps: float = 0.05) -> np.ndarray:
    """Algorithm 1 of the paper (prototypes x samples), in float64."""
    q = np.exp(scores / eps).T
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True) * k
        q /= q.sum(axis=0, keepdims=True) * b
    return (q * b).T


def reference_swav(scores, num_global, t=0.1):
    scores = [s.double().numpy() for s in scores]
    total = 0.0
    for i in range(num_global):
        q = reference_sinkhorn(scores[i])
        sub = 0.0
        for v in range(len(scores)):
            if v != i:
                x = scores[v] / t
                log_p = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
                sub += -(q * log_p).sum(axis=1).mean()
        total += sub / (len(scores) - 1)
    return total / num_global


def _scores(b=8, k=6, crops=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(b, k, generator=g), dim=1) for _ in range(crops)]


def test_sinkhorn_matches_formula_and_balances_the_batch():
    s = _scores(16, 5, 1)[0]
    q = sinkhorn(s)
    np.testing.assert_allclose(q.double().numpy(), reference_sinkhorn(s.double().numpy()), rtol=1e-4)
    torch.testing.assert_close(q.sum(1), torch.ones(16))          # one unit of mass per sample
    many = sinkhorn(s, iterations=1000)   # converges to equal prototype mass
    torch.testing.assert_close(many.sum(0), torch.full((5,), 16 / 5), rtol=1e-3, atol=1e-3)


def test_swav_loss_matches_formula():
    scores = _scores()
    assert swav_loss(scores, 2).item() == pytest.approx(reference_swav(scores, 2), rel=1e-5)


@pytest.mark.parametrize("with_queue", [False, True])
def test_swav_loss_equals_lightly_values_and_gradients(with_queue):
    loss_mod = lightly_module("loss")
    scores = _scores(crops=4)
    queue = _scores(b=12, crops=2, seed=1) if with_queue else None
    assert_same_value_and_grads(
        lambda *s: swav_loss(list(s), 2, queue_scores=queue),
        lambda *s: loss_mod.SwaVLoss()(list(s[:2]), list(s[2:]), queue_outputs=queue), scores)


def _crops_and_queue(s0, s1, s2, q0, q1):
    return swav_loss([s0, s1, s2], 2, queue_scores=[q0, q1])


def test_sinkhorn_gathered_over_two_ranks_equals_full_batch(tmp_path):
    """Two global crops, one local crop and a queue per rank: Sinkhorn's columns are the samples
    and queue rows of every rank, so rank gradients averaged as DDP does = the full gradient."""
    inputs = _scores(crops=3) + _scores(b=6, crops=2, seed=2)
    parts = loss_on_ranks(_crops_and_queue, inputs, (), tmp_path)
    assert_ranks_match_full(parts, _crops_and_queue, inputs, (), same_loss_on_every_rank=False)


def test_prototypes_frozen_in_the_first_epoch_and_kept_normalised():
    torch.manual_seed(0)
    method = tiny_method("swav", freeze_prototypes_epochs=1)
    method.setup(total_steps=20, steps_per_epoch=5)
    method.training_step(views_batch(method)).loss.backward()
    assert method.prototypes.weight.grad is not None
    method.on_before_optimizer_step(4)                 # epoch 0: dropped
    assert method.prototypes.weight.grad is None
    method.training_step(views_batch(method)).loss.backward()
    method.on_before_optimizer_step(5)                 # epoch 1: kept
    assert method.prototypes.weight.grad is not None
    with torch.no_grad():
        method.prototypes.weight.mul_(3.0)
    method.on_step_end(5, 20)
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(24))
    assert method.steps_done == 6


def test_queue_fills_from_the_start_and_joins_sinkhorn_from_its_epoch():
    torch.manual_seed(0)
    method = tiny_method("swav", queue_length=16, epoch_queue_starts=1)
    method.setup(total_steps=20, steps_per_epoch=2)
    method.train()
    batch = views_batch(method, batch=8)
    method.training_step(batch)
    assert method.queue[:, :8].abs().sum() > 0 and method.queue[:, 8:].abs().sum() == 0
    method.on_step_end(0, 20)
    method.training_step(views_batch(method, batch=8, seed=1))
    method.on_step_end(1, 20)
    assert (method.queue.norm(dim=2) > 0.99).all()     # full, of unit embeddings
    assert method._queue_in_use()
    queue = method.queue.clone()
    out = method.training_step(batch)
    with torch.no_grad():
        # backbone per resolution, projector over all crops at once (as the reference code)
        h = torch.cat([method.backbone(torch.cat(batch["views"][:2])),
                       method.backbone(torch.cat(batch["views"][2:]))])
        scores = list(method.prototypes(F.normalize(method.projector(h), dim=1)).chunk(4))
        expected = swav_loss(scores, 2, queue_scores=[method.prototypes(queue[i]) for i in range(2)])
    torch.testing.assert_close(out.loss, expected)
    with pytest.raises(ConfigError, match="epoch_queue_starts"):
        tiny_method("swav", queue_length=16, epoch_queue_starts=0)


def test_swav_step_is_one_graph():
    method = tiny_method("swav")
    method.setup(total_steps=10, steps_per_epoch=5)
    assert_one_graph(method, views_batch(method))


def test_queue_restarted_on_another_number_of_ranks_refills_for_an_epoch_before_use():
    """Per-rank buffers come back only on the same number of ranks: after a resume on another
    number the queue is empty, so it is kept out of Sinkhorn until one whole epoch refilled it."""
    method = tiny_method("swav", queue_length=16, epoch_queue_starts=1)
    method.setup(total_steps=40, steps_per_epoch=4)
    assert method.per_rank_buffers == ("queue",)
    method.load_extra_state({"steps_done": 9, "world_size": 2})      # epoch 2, written on 2 ranks
    assert not method._queue_in_use()
    method.steps_done = 11                                           # still epoch 2: refilling
    assert not method._queue_in_use()
    method.steps_done = 12                                           # epoch 3: full again
    assert method._queue_in_use()
    method.load_extra_state(method.extra_state_for_checkpoint())     # same number of ranks
    assert method.queue_refill_from == 9 and method._queue_in_use()
    method.load_extra_state({"steps_done": 9, "world_size": 1})
    assert method._queue_in_use()
