"""The GPU hot path, checked on CPU for every registered method (parametrised over the registry).

A steady-state step (GPU augmentation of a uint8 batch, ``training_step``, backward, an SGD step,
``on_step_end``) must never wait for the device: no op that reads a value back to the host
(``.item()``, ``.tolist()``, ``int(t)``, ``nonzero``, boolean-mask indexing ...) and no tensor
built from host data (``torch.tensor(...)`` -> ``aten.lift_fresh``). Both are recorded at the
aten level (a ``TorchDispatchMode``) and, for the read-backs that never reach the dispatcher on
CPU (``tolist``), at the Python level (a ``TorchFunctionMode``).

``training_step`` and the GPU views must each compile as one graph with no graph break, and
three steps whose schedules change (temperatures, EMA momentum) must not recompile.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from _helpers import registered_methods, tiny_method, views_batch
from vissl_lite.augment import build_gpu_views
from vissl_lite.augment.boxes import batch_entries

NAMES = registered_methods()
SIZE, BATCH = 32, 8

#: aten ops that read device data on the host or copy host data to the device
SYNC_OPS = ("aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.lift_fresh",
            "aten.lift_fresh_copy", "aten.masked_select", "aten.masked_scatter", "aten.unique",
            "aten._unique", "aten.bincount", "aten.histc", "aten.equal", "aten.is_nonzero",
            "aten.argwhere")
# (``repeat_interleave`` with tensor repeats, i.e. a data-dependent output size, is caught below)
#: Python-level reads of tensor values (``tolist`` does not go through the dispatcher on CPU)
SYNC_CALLS = ("tolist", "item", "numpy", "__int__", "__float__", "__bool__", "__index__")


def _is_bool_index(func, args) -> bool:
    """``x[mask]`` / ``x[mask] = v``: a boolean index has a data-dependent size (nonzero on GPU)."""
    if str(func).split(".")[1] not in ("index", "index_put", "index_put_", "_index_put_impl_"):
        return False
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
               for i in (indices or ()))


class SyncRecorder(TorchDispatchMode):
    """Records every aten op that would make the host wait for the device or copy host data."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if (name.startswith(SYNC_OPS) or _is_bool_index(func, args)
                or name in ("aten.repeat_interleave.Tensor", "aten.repeat_interleave.self_Tensor")):
            self.found.append(name)
        return func(*args, **(kwargs or {}))


class ReadBackRecorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in SYNC_CALLS:
            self.found.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _uint8_batch(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (BATCH, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)


def _method(name: str):
    torch.manual_seed(0)
    method = tiny_method(name)
    method.setup(total_steps=10, steps_per_epoch=1)   # every schedule moves at every step
    return method.train()


def _step(method, views_fn, optimizer, step: int) -> torch.Tensor:
    images = _uint8_batch(step)
    views = views_fn(images, generator=torch.Generator().manual_seed(step))
    batch = {**batch_entries(views), "labels": torch.zeros(BATCH, dtype=torch.long),
             "index": torch.arange(BATCH)}
    out = method.training_step(batch)
    out.loss.backward()
    method.on_before_optimizer_step(step)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    method.on_step_end(step, method.total_steps)
    return out.loss.detach()


def test_the_recorders_catch_every_kind_of_sync():
    x = torch.arange(6.0)
    for fn in (lambda: x.sum().item(), lambda: int(x[0]), lambda: x.nonzero(),
               lambda: x[x > 2], lambda: x.new_tensor([1.0]), lambda: torch.tensor([2.0]),
               lambda: torch.bincount(x.long()), lambda: x.long().repeat_interleave(x.long()),
               lambda: x.tolist(), lambda: bool(x.any())):
        with ReadBackRecorder() as calls, SyncRecorder() as ops:
            fn()
        assert ops.found or calls.found
    with ReadBackRecorder() as calls, SyncRecorder() as ops:
        (x * 0.5 + torch.full_like(x, 2.0)).argsort()[:3].repeat_interleave(2)
    assert not ops.found and not calls.found


@pytest.mark.parametrize("name", NAMES)
def test_a_steady_state_step_never_waits_for_the_device(name):
    method = _method(name)
    views_fn = build_gpu_views(method.views, None, SIZE)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01,
                                momentum=0.9)
    _step(method, views_fn, optimizer, 0)               # first step: caches, momentum buffers
    with ReadBackRecorder() as calls, SyncRecorder() as ops:
        loss = _step(method, views_fn, optimizer, 1)
    assert not ops.found, f"{name}: host-device syncs in a step: {sorted(set(ops.found))}"
    assert not calls.found, f"{name}: host reads of tensor values: {sorted(set(calls.found))}"
    assert torch.isfinite(loss)


def _counting_compile(fn):
    compiled = []

    def backend(gm, example_inputs):
        compiled.append(gm)
        return gm.forward

    return torch.compile(fn, backend=backend, fullgraph=True), compiled


@pytest.mark.parametrize("name", NAMES)
def test_training_step_is_one_graph_and_never_recompiles(name):
    torch._dynamo.reset()
    method = _method(name)
    explained = torch._dynamo.explain(method.training_step)(views_batch(method))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), \
        [str(r.reason)[:200] for r in explained.break_reasons]

    torch._dynamo.reset()
    eager = copy.deepcopy(method)
    step_fn, compiled = _counting_compile(method.training_step)
    for step in range(3):            # schedules (temperatures, momenta) change at every step
        outs = []
        for fn, m in ((step_fn, method), (eager.training_step, eager)):
            torch.manual_seed(step)
            out = fn(views_batch(m, seed=step))
            out.loss.backward()
            m.zero_grad(set_to_none=True)
            m.on_step_end(step, m.total_steps)
            outs.append(out)
        # the compiled step sees the moving schedules (no stale constant baked into the graph)
        torch.testing.assert_close(outs[0].loss, outs[1].loss)
        for key, value in outs[1].metrics.items():
            torch.testing.assert_close(torch.as_tensor(outs[0].metrics[key]).float(),
                                       torch.as_tensor(value).float(), msg=f"{name}: {key}")
    assert len(compiled) == 1, f"{name}: training_step compiled {len(compiled)} times in 3 steps"


@pytest.mark.parametrize("name", NAMES)
def test_gpu_views_are_one_graph_and_never_recompile(name):
    torch._dynamo.reset()
    views_fn = build_gpu_views(tiny_method(name).views, None, SIZE)
    explained = torch._dynamo.explain(views_fn)(_uint8_batch())
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), \
        [str(r.reason)[:200] for r in explained.break_reasons]

    torch._dynamo.reset()
    fn, compiled = _counting_compile(views_fn)
    outs = [batch_entries(fn(_uint8_batch(seed))) for seed in range(3)]
    assert len(compiled) == 1
    assert [v.shape for v in outs[0]["views"]] == [v.shape for v in outs[2]["views"]]
