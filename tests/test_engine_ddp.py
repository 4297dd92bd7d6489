"""DDP on 2 CPU processes (gloo, launched by torchrun) equals 1 process on the same global batch.

The methods here compute their loss on the batch gathered from every rank (``gather_with_grad``):
the toy NT-Xent (every rank computes the global loss), SimCLR's ``nt_xent_loss`` (each rank the
rows of its own anchors) and the Barlow Twins cross-correlation (every rank the global loss).
With DDP averaging the gradients, the loss, the gradient and the parameters after several
optimizer steps must match a single process up to float32 reduction order. The backbone and the
projectors have no BatchNorm: per-rank BN statistics legitimately differ from global ones, and
SyncBatchNorm is GPU-only in torch.

One ``torchrun --standalone --nproc_per_node 2`` launch runs this file as a script: each rank gets
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from torchrun and the Trainer creates
the process group itself, as in ``torchrun -m vissl_lite.cli pretrain``. The same launch also
preempts a run (SIGTERM to one rank only) and resumes it, and resumes with the ranks seeing
different checkpoints (a run folder that is not shared between nodes).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import _toy

HERE = Path(__file__).resolve()
STEPS = 6   # 4 steps per epoch: the run crosses an epoch boundary (new shuffle)
COMMON = [f"train.max_steps={STEPS}", "optim.warmup_epochs=0", "optim.lr=0.5",
          "checkpoint.every_epochs=0", "checkpoint.save_best=false"]
CASES = {
    "toy": ("toy_contrastive", []),
    "toy_accumulate": ("toy_contrastive", ["train.accumulate=2"]),
    "simclr": ("simclr", ["method.proj_layers=1", "method.proj_last_bn=false",
                          "method.proj_output_dim=8", "method.temperature=0.5"]),
    "barlow_twins": ("barlow_twins", ["method.proj_layers=1", "method.proj_output_dim=16",
                                      "optim.lr=0.01"]),
}


class FlatEncoder(torch.nn.Module):
    """A linear encoder on the flattened image. Its features vary across images (the toy conv
    encoder's mean-pooled ones barely do), so the losses are well conditioned in float32 and the
    comparison can be tight."""

    family = "resnet"
    num_features = 16

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3 * 8 * 8, self.num_features)

    def forward(self, x):
        return torch.relu(self.linear(x.flatten(1)))


def _build(method_name: str, cfg):
    from vissl_lite.methods.barlow_twins import BarlowTwins
    from vissl_lite.methods.simclr import SimCLR
    torch.manual_seed(cfg.seed)
    cls = {"toy_contrastive": _toy.ToyContrastive, "simclr": SimCLR,
           "barlow_twins": BarlowTwins}[method_name]
    return cls(FlatEncoder(), cfg.method)


def _config(name: str, output_dir: Path, *overrides: str):
    from vissl_lite.config import default_config
    method_name, extra = CASES[name]
    return method_name, default_config(method_name, [*_toy.BASE, *COMMON, *extra,
                                                     f"output_dir={output_dir}", *overrides])


def _fit(method_name: str, cfg):
    """``Trainer.fit()``; returns (exit code, the method): 0, or SystemExit's code."""
    from vissl_lite.engine import Trainer
    method = _build(method_name, cfg)
    try:
        Trainer(cfg, method=method, dataset=_toy.ToyImages(64), transform=_toy.toy_views).fit()
    except SystemExit as e:
        return e.code, method
    return 0, method


def run_case(name: str, output_dir: Path) -> None:
    """Train one case with the Trainer; write this rank's step-0 gradients and parameters."""
    import torch.distributed as dist

    from vissl_lite import distributed as vdist
    from vissl_lite.engine import Trainer

    method_name, cfg = _config(name, output_dir)
    method = _build(method_name, cfg)
    initial = {k: v.detach().clone() for k, v in method.state_dict().items()}
    seen = {"group_before_fit": vdist.is_dist()}
    hook = method.on_before_optimizer_step

    def record_first_gradient(step):
        if step == 0:   # after backward: DDP has averaged the gradients over ranks
            seen["grads"] = {n: p.grad.detach().clone() for n, p in method.named_parameters()
                             if p.grad is not None}
            seen["world"] = vdist.world_size()
            seen["backend"] = dist.get_backend() if vdist.is_dist() else None
        hook(step)

    method.on_before_optimizer_step = record_first_gradient
    Trainer(cfg, method=method, dataset=_toy.ToyImages(64), transform=_toy.toy_views).fit()
    rank = int(os.environ.get("RANK", 0))
    final = {k: v.detach().clone() for k, v in method.state_dict().items()}
    torch.save({**seen, "initial": initial, "final": final}, output_dir / f"rank{rank}.pt")


def run_preempted(output_dir: Path) -> None:
    """Under torchrun: the toy case, rank 1 alone gets SIGTERM during step 2; then resume=auto."""
    from vissl_lite.engine import load_checkpoint
    from vissl_lite.methods.base import Method
    rank = int(os.environ["RANK"])
    method_name, cfg = _config("toy", output_dir)

    def preempt_rank_1(self, step):
        if step == 2 and rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    original = Method.on_before_optimizer_step
    Method.on_before_optimizer_step = preempt_rank_1
    try:
        code, _ = _fit(method_name, cfg)
    finally:
        Method.on_before_optimizer_step = original
    stopped = load_checkpoint(output_dir)
    _, cfg = _config("toy", output_dir, "resume=auto")
    resumed_code, method = _fit(method_name, cfg)
    torch.save({"exit_code": code, "stopped_at": stopped["step"],
                "world_size": stopped["world_size"], "resumed_exit_code": resumed_code,
                "final": method.state_dict()}, output_dir / f"rank{rank}.pt")


def run_unshared_resume(output_dir: Path, checkpoint: Path) -> None:
    """Under torchrun: each rank has its own run folder and only rank 0's holds a checkpoint."""
    from vissl_lite.config import ConfigError
    rank = int(os.environ["RANK"])
    own = output_dir / f"rank{rank}"
    if rank == 0:
        (own / "checkpoints").mkdir(parents=True)
        shutil.copyfile(checkpoint, own / "checkpoints" / "last.pt")
    method_name, cfg = _config("toy", own, "resume=auto")
    try:
        _fit(method_name, cfg)
        message = "no error"
    except ConfigError as e:
        message = str(e)
    (output_dir / f"rank{rank}.txt").write_text(message)


SWAV = ["method.proj_hidden_dim=16", "method.proj_output_dim=8", "method.num_prototypes=12",
        "method.num_local_crops=0", "method.queue_length=32", "method.epoch_queue_starts=1",
        "method.freeze_prototypes_epochs=0", "optim.lr=0.1", "checkpoint.every_epochs=0",
        "checkpoint.save_best=false", "optim.warmup_epochs=0"]


def _swav_fit(output_dir: Path, *overrides: str):
    """SwAV with a per-rank queue of 16 rows (32 over 2 ranks, 8 samples per rank per step) on
    the toy data, 4 steps per epoch; returns (the method, what it pushed, its queue at the
    first push, i.e. as restored or initialised)."""
    from vissl_lite.config import default_config
    from vissl_lite.engine import Trainer
    from vissl_lite.methods.swav import SwAV
    cfg = default_config("swav", [*_toy.BASE, *SWAV, f"output_dir={output_dir}", *overrides])
    torch.manual_seed(cfg.seed)
    method = SwAV(FlatEncoder(), cfg.method)
    pushed, seen = [], {}
    push = method._push_to_queue

    def record(z_global):
        seen.setdefault("queue_at_start", method.queue.clone())
        pushed.append([z.detach().clone() for z in z_global])
        push(z_global)

    method._push_to_queue = record
    Trainer(cfg, method=method, dataset=_toy.ToyImages(64), transform=_toy.toy_views).fit()
    return method, pushed, seen["queue_at_start"]


def run_swav_queue(output_dir: Path) -> None:
    """Under torchrun: 6 SwAV steps (the queue joins Sinkhorn at step 4), then a resumed run."""
    rank = int(os.environ.get("RANK", 0))
    method, pushed, _ = _swav_fit(output_dir, "train.max_steps=6")
    final = method.queue.clone()
    _, _, restored = _swav_fit(output_dir, "train.max_steps=7", "resume=auto")
    torch.save({"pushed": pushed, "final": final, "restored": restored},
               output_dir / f"rank{rank}.pt")


def _losses(output_dir: Path):
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in records if r["type"] == "step"]


def _assert_close(actual: dict, expected: dict, what: str) -> None:
    """Equal up to float32 reduction order: each element within 1e-4 of the largest magnitude
    over all tensors (a tensor whose true value is ~0, e.g. a bias the loss is invariant to,
    holds only rounding noise, so its own scale is no yardstick)."""
    scale = max(v.abs().max().item() for v in expected.values())
    assert scale > 0
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-4, atol=1e-4 * scale,
                                   msg=lambda m: f"{what} of {name}: {m}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each case trained once by torchrun on 2 ranks and once in this process."""
    root = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE), str(root / "ddp")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, f"torchrun failed ({res.returncode}):\n{res.stdout[-3000:]}\n" \
                                f"{res.stderr[-6000:]}"
    (root / "torchrun.log").write_text(res.stdout + res.stderr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in CASES:
            (root / "single" / name).mkdir(parents=True)
            run_case(name, root / "single" / name)
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_ddp_equals_one_process_on_the_global_batch(runs, case):
    ddp = [torch.load(runs / "ddp" / case / f"rank{r}.pt") for r in range(2)]
    one = torch.load(runs / "single" / case / "rank0.pt")

    assert [(d["world"], d["backend"]) for d in ddp] == [(2, "gloo")] * 2 and one["world"] == 1

    # same initial weights; after DDP's all-reduce both ranks hold the very same gradient
    assert all(torch.equal(ddp[0]["initial"][k], v) for k, v in one["initial"].items())
    assert one["grads"].keys() == ddp[0]["grads"].keys() and len(one["grads"]) >= 4
    assert all(torch.equal(ddp[0]["grads"][k], ddp[1]["grads"][k]) for k in one["grads"])
    _assert_close(ddp[0]["grads"], one["grads"], "step-0 gradient")

    # per-step global loss and gradient norm (rank 0's log holds the rank average)
    ddp_log, one_log = _losses(runs / "ddp" / case), _losses(runs / "single" / case)
    assert [s for s, _, _ in ddp_log] == [s for s, _, _ in one_log] == list(range(1, STEPS + 1))
    for (step, loss_d, gn_d), (_, loss_1, gn_1) in zip(ddp_log, one_log):
        assert loss_d == pytest.approx(loss_1, rel=2e-5), f"loss at step {step}"
        assert gn_d == pytest.approx(gn_1, rel=1e-4), f"gradient norm at step {step}"

    # parameters (and the toy's EMA target and step counter) after STEPS optimizer steps,
    # compared as updates (final - initial) so that the tolerance scales with what moved
    assert all(torch.equal(ddp[0]["final"][k], ddp[1]["final"][k]) for k in one["final"])
    floats = [k for k, v in one["final"].items() if v.is_floating_point()]
    update = lambda run: {k: run["final"][k] - run["initial"][k] for k in floats}
    _assert_close(update(ddp[0]), update(one), f"update after {STEPS} steps")
    assert all(torch.equal(ddp[0]["final"][k], v) for k, v in one["final"].items()
               if k not in floats)


def test_trainer_creates_the_process_group_once_per_process(runs):
    """The first Trainer sets up gloo from torchrun's environment; later ones in the same process
    reuse it (a destroyed default group cannot be re-created under torchrun)."""
    before = [[torch.load(runs / "ddp" / case / f"rank{r}.pt")["group_before_fit"]
               for r in range(2)] for case in CASES]
    assert before == [[False, False]] + [[True, True]] * (len(CASES) - 1)
    assert not any(torch.load(runs / "single" / case / "rank0.pt")["group_before_fit"]
                   for case in CASES)


def test_sigterm_on_one_rank_stops_all_at_the_same_step_and_resumes_exactly(runs):
    ranks = [torch.load(runs / "ddp" / "preempted" / f"rank{r}.pt") for r in range(2)]
    assert [r["exit_code"] for r in ranks] == [143, 143]        # rank 0 got no signal itself
    assert [r["stopped_at"] for r in ranks] == [3, 3] and ranks[0]["world_size"] == 2
    assert [r["resumed_exit_code"] for r in ranks] == [0, 0]
    straight = torch.load(runs / "ddp" / "toy" / "rank0.pt")["final"]
    for r in ranks:
        assert straight.keys() == r["final"].keys()
        assert all(torch.equal(straight[k], r["final"][k]) for k in straight)


def test_ranks_resuming_from_different_checkpoints_stop_with_a_clear_error(runs):
    for r in range(2):   # both ranks stop (none waits for the other in a collective)
        message = (runs / "ddp" / "unshared" / f"rank{r}.txt").read_text()
        assert f"(rank 0: step {STEPS}, rank 1: none)" in message
        assert f"output_dir={runs / 'ddp' / 'unshared' / f'rank{r}'} must be on a file system " \
               f"every node sees" in message


def test_ddp_checkpoint_records_both_ranks(runs):
    from vissl_lite.engine import load_checkpoint
    ckpt = load_checkpoint(runs / "ddp" / "toy")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["step"] == STEPS
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])


def test_swav_queue_holds_each_ranks_own_embeddings_and_is_checkpointed_per_rank(runs):
    """DDP broadcasts rank 0's buffers before every forward unless told otherwise: SwAV's queue
    is a per-rank buffer, so each rank's queue is what pushing its own embeddings gives, the
    ranks' queues differ, the checkpoint holds both and a resumed rank gets its own back."""
    from vissl_lite.engine import load_checkpoint
    ranks = [torch.load(runs / "ddp" / "swav" / f"rank{r}.pt") for r in range(2)]
    ckpt = load_checkpoint(runs / "ddp" / "swav" / "checkpoints" / "step_0000006.pt")
    for r, run in enumerate(ranks):
        assert len(run["pushed"]) == 6
        expected = torch.zeros(2, 16, 8)
        for z_global in run["pushed"]:
            for i in range(2):
                assert z_global[i].shape == (8, 8)
                expected[i] = torch.cat([z_global[i], expected[i, :8]])
        assert torch.equal(run["final"], expected), f"rank {r}'s queue"
    assert not torch.allclose(ranks[0]["final"], ranks[1]["final"])
    for r, run in enumerate(ranks):
        assert torch.equal(ckpt["per_rank_buffers"][r]["queue"], run["final"])
        assert torch.equal(run["restored"], run["final"])


if __name__ == "__main__":   # one rank under torchrun: python -m torch.distributed.run ... OUT
    torch.set_num_threads(1)
    for required in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        assert required in os.environ, f"run under torchrun: {required} is not set"
    out = Path(sys.argv[1])
    for case_name in CASES:
        (out / case_name).mkdir(parents=True, exist_ok=True)
        run_case(case_name, out / case_name)
    run_preempted(out / "preempted")
    run_unshared_resume(out / "unshared", out / "toy" / "checkpoints" / "last.pt")
    run_swav_queue(out / "swav")


def test_the_start_line_states_world_size_and_batches_once(runs):
    """Rank 0 alone prints the start line; it gives the world size, the per-rank and the global
    batch (the toy's train.batch_size=16 over 2 ranks, and over 2 ranks x 2 accumulation steps)."""
    lines = (runs / "torchrun.log").read_text().splitlines()
    split = [line for line in lines if "world size 2, batch 4 per rank x 2 accumulation steps = "
                                       "16 global" in line]
    assert len(split) == 1 and "device cpu" in split[0]
    assert any("world size 2, batch 8 per rank = 16 global" in line for line in lines)
    assert not any("world size 1" in line for line in lines)


def test_a_config_error_under_torchrun_is_one_line_printed_once(tmp_path):
    """Every rank meets the same config error; rank 0 alone prints it (torchrun's RANK, as the
    process group does not exist yet), and ``vissl_lite.launch`` (torchrun for vissl-lite) ends
    with it and exit code 2, without torchrun's own traceback and failure table."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    res = subprocess.run([sys.executable, "-m", "vissl_lite.launch", "--standalone",
                          "--nproc_per_node", "2", "pretrain", "simclr/cifar10_resnet18",
                          f"data.root={tmp_path}", "optim.lrr=0.1"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.splitlines() == ["vissl-lite: error: command-line override 'optim.lrr=0.1': "
                                       "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"]
    assert res.stdout == ""


@pytest.mark.parametrize("rank, printed", [(None, True), ("0", True), ("1", False)])
def test_a_user_error_is_printed_by_rank_0_alone(monkeypatch, capsys, rank, printed):
    from vissl_lite.cli import main
    if rank is not None:
        monkeypatch.setenv("RANK", rank)
    else:
        monkeypatch.delenv("RANK", raising=False)
    assert main(["config", "simclr/cifar10_resnet18", "optim.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert (err == "vissl-lite: error: command-line override 'optim.lrr=0.1': unknown key "
                   "'optim.lrr' (did you mean 'optim.lr'?)\n") is printed and (printed or err == "")


def test_launch_splits_torchrun_options_from_the_command():
    from vissl_lite.launch import split_argv
    assert split_argv(["--standalone", "--nproc_per_node", "2", "pretrain", "x.yaml"]) == 3
    assert split_argv(["--nnodes=2", "--rdzv_endpoint", "h:29500", "eval", "knn"]) == 3
    assert split_argv(["pretrain", "--help"]) == 0
