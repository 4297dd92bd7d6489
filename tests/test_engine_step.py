"""The engine's optimizer step on the host: no read-back from the device in a steady-state step,
LARS on foreach kernels equal to its per-parameter formula, the online linear head learning."""
from __future__ import annotations

import contextlib
from typing import List

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import _toy
from _helpers import TinyNet
from vissl_lite.augment.spec import ViewSpec
from vissl_lite.engine import LARS, build_optimizer
from vissl_lite.engine.schedules import ParamScheduler
from vissl_lite.engine.step import StepRunner
from vissl_lite.engine.stop import StopSignal
from vissl_lite.eval.monitor import OnlineLinearHead
from vissl_lite.methods.base import Method, StepOutput

#: ops that wait for the device and read a value back, or build a device tensor from host data
SYNCING = {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero",
           "aten::lift_fresh", "aten::lift_fresh_copy", "aten::masked_select", "aten::equal",
           "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim", "Tensor.tolist"}


class RecordOps(TorchDispatchMode):
    """Records every aten op, plus ``Tensor.tolist`` (on CPU it reads memory without dispatch)."""

    def __init__(self):
        super().__init__()
        self.ops: List[str] = []
        self._tolist = torch.Tensor.tolist

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func._schema.name)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        tolist = self._tolist

        def recorded(tensor):
            self.ops.append("Tensor.tolist")
            return tolist(tensor)

        torch.Tensor.tolist = recorded
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


class TinyMethod(Method):
    """Two views through TinyNet and a projector; a tensor metric, a float metric, an embedding."""

    views = ViewSpec("simclr", 2, 0)

    def __init__(self):
        super().__init__(TinyNet())
        self.projector = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                       nn.Linear(16, 8))

    def training_step(self, batch) -> StepOutput:
        h_a, h_b = (self.backbone(v) for v in batch["views"])
        z_a, z_b = F.normalize(self.projector(h_a), dim=1), F.normalize(self.projector(h_b), dim=1)
        loss = (2 - 2 * (z_a * z_b).sum(1)).mean()
        return StepOutput(loss, {"z_std": z_a.detach().std(0).mean(), "temperature": 0.1},
                          embedding=h_a.detach())


def _batches(n: int = 8):
    g = torch.Generator().manual_seed(0)
    while True:
        x = torch.rand(n, 3, 8, 8, generator=g)
        yield {"views": [x, x.flip(-1)], "labels": torch.arange(n) % 2, "index": torch.arange(n)}


def _runner(tmp_path, *overrides: str) -> StepRunner:
    cfg = _toy.toy_config(tmp_path, *overrides)
    torch.manual_seed(0)
    method = TinyMethod()
    method.setup(100, 10)
    optimizer = build_optimizer(cfg.optim, method, cfg.optim.lr)
    scheduler = ParamScheduler(optimizer, 100, 5, cfg.optim.lr, weight_decay=1e-4)
    return StepRunner(method, method, optimizer, scheduler, None, cfg.train, torch.device("cpu"),
                      1, 100, StopSignal(torch.device("cpu")), OnlineLinearHead(16, 2))


@pytest.mark.parametrize("overrides", [("optim.name=sgd",), ("optim.name=lars",),
                                       ("optim.name=sgd", "train.grad_clip=1.0",
                                        "train.accumulate=2"),
                                       ("optim.name=sgd", "train.grad_clip=1.0",
                                        "train.grad_clip_mode=per_param"),
                                       ("optim.name=lars", "optim.lars_clip=true",
                                        "optim.lars_denominator=sum_of_norms",
                                        "train.grad_clip=0.5", "train.grad_clip_mode=per_module")])
def test_a_steady_state_step_reads_nothing_back_from_the_device(tmp_path, overrides):
    runner, batches = _runner(tmp_path, *overrides), _batches()
    for step in range(3):                       # warm-up: optimizer state, momentum buffers
        runner.run(batches, step)
    runner.stop.received = 15                   # a signal arrived: its flag is written once ...
    runner.run(batches, 3)
    with RecordOps() as recorder:               # ... and the next steps copy nothing to the device
        pending = runner.run(batches, 4)
    syncing = sorted(set(recorder.ops) & SYNCING)
    assert not syncing, f"the step reads back or builds tensors from host data: {syncing}"
    assert "aten::all_reduce" not in recorder.ops and len(recorder.ops) > 50
    assert pending.keys == ["z_std", "online_linear_loss", "online_linear_top1"]
    assert pending.values["temperature"] == pytest.approx(0.1) and pending.packed[2] == 1.0
    if "optim.name=sgd" in overrides:     # gradients are rescaled only when clipping is on
        clipping = "train.grad_clip=1.0" in overrides
        assert ("aten::_foreach_mul_" in recorder.ops) == clipping


def test_skip_nonfinite_is_the_opt_in_that_reads_back(tmp_path):
    runner, batches = _runner(tmp_path, "train.skip_nonfinite=true"), _batches()
    runner.run(batches, 0)
    with RecordOps() as recorder:
        runner.run(batches, 1)
    assert "Tensor.tolist" in recorder.ops


def _lars_reference(params, grads, mus, lr, wd, momentum, eta, exclude):
    """The per-parameter LARS update (the implementation before the foreach one), as a formula."""
    for w, g, mu in zip(params, grads, mus):
        if not exclude:
            g = g + wd * w
            w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
            trust = eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else torch.tensor(1.0)
            g = g * trust
        mu.mul_(momentum).add_(g)
        w.sub_(lr * mu)


def test_foreach_lars_equals_the_per_parameter_formula_over_several_steps():
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 3, 3, 3), (16,), (8, 16), (8,), (5, 5)]
    params = [nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    with torch.no_grad():
        params[-1].zero_()                       # a zero weight: trust ratio 1
    decayed, excluded = [params[0], params[2], params[4]], [params[1], params[3]]
    opt = LARS([dict(params=decayed), dict(params=excluded, lars_exclude=True, weight_decay=0.0)],
               lr=0.3, weight_decay=1e-3, momentum=0.9, eta=0.02)
    ref = [p.detach().clone() for p in params]
    ref_mu = [torch.zeros_like(p) for p in params]
    for _ in range(5):
        grads = [torch.randn(s, generator=g) for s in shapes]
        for p, grad in zip(params, grads):
            p.grad = grad.clone()
        opt.step()
        for idx, exclude in (([0, 2, 4], False), ([1, 3], True)):
            _lars_reference([ref[i] for i in idx], [grads[i] for i in idx],
                            [ref_mu[i] for i in idx], lr=0.3, wd=0.0 if exclude else 1e-3,
                            momentum=0.9, eta=0.02, exclude=exclude)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach(), r, atol=1e-6, rtol=1e-6)
    for p, mu in zip(params, ref_mu):
        torch.testing.assert_close(opt.state[p]["mu"], mu, atol=1e-6, rtol=1e-6)


def _scaled_lars_step(params, opt, scaler, grads, recorder=None):
    """backward of sum(p * g) through ``scaler`` gives each p the gradient g, scaled."""
    loss = sum((p * g).sum() for p, g in zip(params, grads))
    scaler.scale(loss).backward()
    with recorder or contextlib.nullcontext():
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
    opt.zero_grad(set_to_none=True)


def test_lars_under_grad_scaler_skips_inf_steps_on_the_device():
    """fp16's GradScaler: finite steps equal unscaled LARS, an inf step leaves w and mu exactly
    as they were and halves the scale, and none of it reads the inf flag back to the host."""
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 4), (8,), (3, 8)]
    init = [torch.randn(s, generator=g) for s in shapes]
    grad_steps = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]

    def lars(params):
        return LARS([dict(params=[params[0], params[2]]),
                     dict(params=[params[1]], lars_exclude=True, weight_decay=0.0)],
                    lr=0.3, weight_decay=1e-3, momentum=0.9, eta=0.02)

    plain = [nn.Parameter(t.clone()) for t in init]
    scaled = [nn.Parameter(t.clone()) for t in init]
    opt_plain, opt_scaled = lars(plain), lars(scaled)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    for grads in grad_steps:
        for p, grad in zip(plain, grads):
            p.grad = grad.clone()
        opt_plain.step()
        with RecordOps() as recorder:
            _scaled_lars_step(scaled, opt_scaled, scaler, grads)
        assert not set(recorder.ops) & SYNCING
    for a, b in zip(plain, scaled):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-6)

    before = [p.detach().clone() for p in scaled]
    mu_before = [opt_scaled.state[p]["mu"].clone() for p in scaled]
    bad = [grad.clone() for grad in grad_steps[0]]
    bad[0][0, 0] = float("inf")
    with RecordOps() as recorder:
        _scaled_lars_step(scaled, opt_scaled, scaler, bad)
    assert not set(recorder.ops) & SYNCING
    assert all(torch.equal(p.detach(), b) for p, b in zip(scaled, before))
    assert all(torch.equal(opt_scaled.state[p]["mu"], m) for p, m in zip(scaled, mu_before))
    assert scaler.get_scale() == 2.0 ** 9


def test_the_recorder_sees_the_scaler_read_back_for_an_optimizer_without_the_amp_contract():
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1, foreach=True)
    recorder = RecordOps()
    _scaled_lars_step([p], opt, torch.amp.GradScaler("cpu"), [torch.ones(3)], recorder)
    assert set(recorder.ops) & SYNCING


def test_online_linear_head_step_learns_separable_classes_without_read_back():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 3
    head = OnlineLinearHead(16, 4, lr=0.05)
    first = None
    for i in range(40):
        y = torch.randint(0, 4, (32,), generator=g)
        y[:4] = -1                                              # unlabeled samples: masked out
        x = centers[y.clamp(min=0)] + torch.randn(32, 16, generator=g)
        with RecordOps() as recorder:
            stats = head.step(x, y)
        assert not set(recorder.ops) & SYNCING
        first = float(stats["online_linear_top1"]) if first is None else first
    assert first < 60.0 and float(stats["online_linear_top1"]) > 95.0


class DeepTinyMethod(TinyMethod):
    """TinyMethod with 12 more parameter tensors in its projector."""

    def __init__(self):
        super().__init__()
        self.projector = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(16, 16), nn.ReLU())],
                                       nn.Linear(16, 8))


def _ops_over_the_bare_step(tmp_path, method_cls) -> int:
    """aten ops of ``StepRunner.run`` minus those of the same step written by hand (forward,
    backward, SGD step, zero_grad)."""
    cfg = _toy.toy_config(tmp_path, "optim.name=sgd", "optim.weight_decay=0")
    counts = []
    for by_runner in (True, False):
        torch.manual_seed(0)
        method = method_cls()
        method.setup(100, 10)
        optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9, foreach=True)
        runner = StepRunner(method, method, optimizer, ParamScheduler(optimizer, 100, 0, 0.1),
                            None, cfg.train, torch.device("cpu"), 1, 100,
                            StopSignal(torch.device("cpu")))
        batches = _batches()
        for step in range(2):
            runner.run(batches, step)
        with RecordOps() as recorder:
            if by_runner:
                runner.run(batches, 2)
            else:
                method.training_step(next(batches)).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        counts.append(len(recorder.ops))
    return counts[0] - counts[1]


def test_the_step_runner_adds_a_few_ops_whatever_the_model_size(tmp_path):
    """Issue 28 asked what the trainer adds to a step on CPU, where it ran at 0.73x lightly's
    plain loop. Around the method's forward, backward and optimizer step the runner adds: the
    loss sum, the detached metrics, one ``_foreach_norm`` for the gradient norm and the packed
    numbers. That is a fixed handful of ops, not a loop over parameters: the same count for a
    model with 12 more parameter tensors."""
    small = _ops_over_the_bare_step(tmp_path / "small", TinyMethod)
    deep = _ops_over_the_bare_step(tmp_path / "deep", DeepTinyMethod)
    assert 0 < small <= 20, small
    assert deep == small
