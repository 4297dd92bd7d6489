"""Helpers of the joint-embedding method tests: a rank runner for losses of any tensor inputs,
the one-graph check, and lightly (the test-only oracle) when it is installed."""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import pytest
import torch

from _helpers import loss_on_ranks, tiny_method, views_batch  # noqa: F401  (loss_on_ranks: shared)


def lightly_module(name: str):
    """``lightly.<name>``, or skip the test with a visible reason."""
    return pytest.importorskip(f"lightly.{name}", reason="lightly not installed (test-only oracle)")


def assert_one_graph(method, batch) -> None:
    """training_step compiles as one graph with no break (no host sync, no data-dependent shape)."""
    torch._dynamo.reset()
    explained = torch._dynamo.explain(method.training_step)(batch)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def assert_ranks_match_full(parts: List[Dict], loss_fn: Callable, inputs: Sequence[torch.Tensor],
                            args: tuple, same_loss_on_every_rank: bool) -> None:
    """DDP semantics: rank gradients averaged = the one-process gradient on the global batch; the
    rank losses are each the global loss, or average to it."""
    world = len(parts)
    full_inputs = [x.clone().requires_grad_(True) for x in inputs]
    full = loss_fn(*full_inputs, *args)
    full.backward()
    losses = torch.stack([p["loss"].reshape(()) for p in parts])
    if same_loss_on_every_rank:
        for loss in losses:
            torch.testing.assert_close(loss, full.detach().reshape(()), rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(losses.mean(), full.detach().reshape(()), rtol=1e-5, atol=1e-6)
    for i, x in enumerate(full_inputs):
        if x.grad is None:                               # an input the loss does not differentiate
            assert all(p["grads"][i] is None for p in parts)
            continue
        ddp_grad = torch.cat([p["grads"][i] for p in parts]) / world
        torch.testing.assert_close(ddp_grad, x.grad, rtol=1e-4, atol=1e-6)


def head_layout(module: torch.nn.Module) -> List[tuple]:
    """(type name, parameter count, bias?) of every leaf layer in order: two heads built alike."""
    leaves = [m for m in module.modules() if not list(m.children())]
    return [(type(m).__name__, sum(p.numel() for p in m.parameters()),
             getattr(m, "bias", None) is not None) for m in leaves]


def one_training_step(name: str, batch_size: int = 6):
    """A tiny registered method in training mode, a random batch and the output of one step."""
    torch.manual_seed(0)
    method = tiny_method(name)
    method.train()
    batch = views_batch(method, batch=batch_size)
    return method, batch, method.training_step(batch)
