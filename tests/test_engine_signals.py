"""A training process killed (SIGKILL) or preempted (SIGTERM) continues exactly with resume=auto.

The toy run (``python tests/_toy.py OUT ...``) sleeps in each step (``method.sleep``) so that a
signal reliably lands mid-run; the reference and the resumed runs train in this process with the
same single intra-op thread as the subprocess, so their results can be compared bit for bit.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import _toy
from vissl_lite.config import load_config
from vissl_lite.engine import load_checkpoint
from vissl_lite.engine.clock import CheckpointClock
from vissl_lite.engine.logger import read_jsonl
from vissl_lite.engine.stop import StopSignal
from vissl_lite.errors import ConfigError

TOY = Path(_toy.__file__).resolve()
COMMON = ["train.epochs=4"]          # 4 steps per epoch: 16 steps
TOTAL = 16
SLOW = "method.sleep=0.25"           # after the first checkpoint, seconds of steps are left


def _launch(output_dir: Path, *overrides: str) -> subprocess.Popen:
    output_dir.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(_log(output_dir), "w") as log:
        return subprocess.Popen([sys.executable, str(TOY), str(output_dir), *COMMON, *overrides],
                                stdout=log, stderr=subprocess.STDOUT, env=env)


def _log(output_dir: Path) -> Path:
    return output_dir.parent / f"{output_dir.name}.log"


def _output(output_dir: Path) -> str:
    return _log(output_dir).read_text()[-4000:]


def _wait_until(condition, proc: subprocess.Popen, output_dir: Path, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before the signal could be sent:\n"
                        f"{_output(output_dir)}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no progress within {timeout}s:\n{_output(output_dir)}")
        time.sleep(0.02)


def _train_here(output_dir: Path, *overrides: str) -> dict:
    """A run in this process with one intra-op thread, as the subprocess (bitwise comparable)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _toy.run(output_dir, *COMMON, *overrides)
    finally:
        torch.set_num_threads(threads)


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] == TOTAL and a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    mom = lambda c: [s["momentum_buffer"] for s in c["optimizer"]["state"].values()]
    assert len(mom(a)) > 0 and all(torch.equal(x, y) for x, y in zip(mom(a), mom(b)))


def _logged_steps(output_dir: Path) -> list:
    return [r["step"] for r in read_jsonl(output_dir / "metrics.jsonl") if r["type"] == "step"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted")
    _train_here(out)
    return load_checkpoint(out)


def test_sigkill_after_a_checkpoint_then_resume_auto_is_bitwise_equal(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = _launch(out, SLOW, "checkpoint.every_steps=2")
    _wait_until(lambda: (out / "checkpoints" / "last.pt").is_file(), proc, out)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    killed_at = load_checkpoint(out)["step"]
    assert 0 < killed_at < TOTAL and killed_at % 2 == 0

    result = _train_here(out, "checkpoint.every_steps=2", "resume=auto")
    assert result["step"] == TOTAL
    _assert_bitwise_equal(load_checkpoint(out), uninterrupted)
    # records the killed run wrote past its checkpoint were dropped, then redone once
    assert _logged_steps(out) == list(range(1, TOTAL + 1))


def test_sigterm_writes_a_checkpoint_exits_143_and_resumes(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = _launch(out, SLOW, "checkpoint.every_epochs=0", "checkpoint.save_best=false")
    _wait_until(lambda: len(_logged_steps(out)) > 0, proc, out)
    assert not (out / "checkpoints").exists()       # no scheduled checkpoint in this run
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, _output(out)

    stopped = load_checkpoint(out)
    step = stopped["step"]
    assert 0 < step < TOTAL and _logged_steps(out)[-1] == step   # the step in flight finished
    assert f"SIGTERM received: checkpoint written at step {step}" in _output(out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt",
                                                                      f"step_{step:07d}.pt"]

    result = _train_here(out, "resume=auto")
    assert result["step"] == TOTAL
    _assert_bitwise_equal(load_checkpoint(out), uninterrupted)
    assert _logged_steps(out) == list(range(1, TOTAL + 1))


# ---------------------------------------------------------------- the real command, process group
PRETRAIN = ["configs/simclr/cifar10_resnet18.yaml", "train.device=cpu", "train.batch_size=16",
            "train.epochs=3", "train.log_every=1", "data.subset=64", "data.num_workers=2",
            "logger.wandb.mode=disabled", "logger.progress=false", "logger.plot=false",
            "monitor.every_epochs=0", "deterministic=true"]   # 4 steps per epoch: 12 steps
REPO = TOY.parents[1]


def _pretrain_here(output_dir: Path, data_root: Path, *overrides: str) -> None:
    from vissl_lite.cli import main
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["pretrain", str(REPO / PRETRAIN[0]), *PRETRAIN[1:], f"data.root={data_root}",
                     f"output_dir={output_dir}", *overrides]) == 0
    finally:
        torch.set_num_threads(threads)


def _pretrain_in_its_session(out: Path, data_root: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open(_log(out), "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "vissl_lite.cli", "pretrain", str(REPO / PRETRAIN[0]),
             *PRETRAIN[1:], f"data.root={data_root}", f"output_dir={out}", *overrides],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_to_the_process_group_checkpoints_and_exits(
        tmp_path, cifar_root, signum):
    """``timeout``, SLURM and ``scancel`` signal the whole process group, DataLoader workers
    included: the workers leave it to the main process, which checkpoints the step in flight and
    exits with 128 + the signal number."""
    out = tmp_path / "run"
    out.mkdir()
    proc = _pretrain_in_its_session(out, cifar_root)
    _wait_until(lambda: len(_logged_steps(out)) > 0, proc, out, timeout=240)
    os.killpg(proc.pid, signum)
    assert proc.wait(timeout=120) == 128 + signum, _output(out)
    step = load_checkpoint(out)["step"]
    assert 0 < step < 12 and _logged_steps(out)[-1] == step
    assert f"{signal.Signals(signum).name} received: checkpoint written at step {step}" in _output(out)
    assert "DataLoader worker" not in _output(out)
    # the exact resume after a signal: below with SIGINT (the same path), and with the toy above


def test_ctrl_c_and_the_checkpoint_clock_keep_the_work_and_resume_exactly(tmp_path, cifar_root):
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group, DataLoader
    workers included: the run checkpoints the step in flight and exits 130, with one line and no
    traceback, as for SIGTERM. Before it, ``checkpoint.every_minutes`` (0.6 s here) wrote
    checkpoints mid-epoch although no epoch or step schedule asked for one. ``resume=auto`` then
    ends bitwise where an uninterrupted run ends."""
    out = tmp_path / "run"
    out.mkdir()
    clock = ["checkpoint.every_epochs=0", "checkpoint.save_best=false",
             "checkpoint.every_minutes=0.01"]
    proc = _pretrain_in_its_session(out, cifar_root, *clock)
    _wait_until(lambda: (out / "checkpoints" / "last.pt").is_file(), proc, out, timeout=240)
    by_clock = [int(p.stem[5:]) for p in (out / "checkpoints").glob("step_*.pt")]
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, _output(out)

    step = load_checkpoint(out)["step"]
    assert 0 < step < 12 and _logged_steps(out)[-1] == step
    assert f"SIGINT received: checkpoint written at step {step}" in _output(out)
    assert "Traceback" not in _output(out) and "KeyboardInterrupt" not in _output(out)
    assert "DataLoader worker" not in _output(out)
    assert by_clock and max(by_clock) < step                  # the clock's, before Ctrl-C
    assert (out / "checkpoints" / f"step_{step:07d}.pt").is_file()

    _pretrain_here(out, cifar_root, "resume=auto", *clock)
    _pretrain_here(tmp_path / "straight", cifar_root)
    resumed, straight = load_checkpoint(out), load_checkpoint(tmp_path / "straight")
    assert resumed["step"] == straight["step"] == 12
    assert all(torch.equal(resumed["model"][k], straight["model"][k]) for k in straight["model"])
    assert _logged_steps(out) == list(range(1, 13))


EXIT_WITH_LIVE_WORKERS = """
from torch.utils.data import DataLoader
from vissl_lite.data.workers import leave_stop_signals_to_the_trainer
loader = DataLoader(list(range(8)), batch_size=2, num_workers=2, persistent_workers=True,
                    worker_init_fn=leave_stop_signals_to_the_trainer)
batches = iter(loader)
next(batches)
"""


def test_a_process_still_holding_sigterm_ignoring_workers_exits():
    """multiprocessing stops daemonic children at exit with SIGTERM, which our workers ignore:
    a process that still holds a loader's workers at exit (persistent workers, a kept iterator)
    must not wait for them forever (it did: pytest itself hung after its summary)."""
    done = subprocess.run([sys.executable, "-c", EXIT_WITH_LIVE_WORKERS], timeout=60,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_sigterm_mid_epoch_on_shards_resumes_at_the_same_position(tmp_path):
    """Streamed tar shards (data.name=shards): a run stopped mid-epoch by SIGTERM continues with
    resume=auto from the sample it stopped at, and ends bitwise equal to an uninterrupted run."""
    _toy.write_toy_shards(tmp_path / "shards")
    shards = ["data.name=shards", f"data.root={tmp_path / 'shards'}"]
    straight = tmp_path / "straight"
    _train_here(straight, *shards)
    out = tmp_path / "run"
    proc = _launch(out, SLOW, "checkpoint.every_epochs=0", "checkpoint.save_best=false", *shards)
    _wait_until(lambda: len(_logged_steps(out)) > 0, proc, out)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, _output(out)
    stopped = load_checkpoint(out)
    assert 0 < stopped["step"] < TOTAL and stopped["batch_in_epoch"] > 0    # mid-epoch

    assert _train_here(out, *shards, "resume=auto")["step"] == TOTAL
    _assert_bitwise_equal(load_checkpoint(out), load_checkpoint(straight))
    assert _logged_steps(out) == list(range(1, TOTAL + 1))


# ---------------------------------------------------------------- the handler and the clock alone
def test_a_second_ctrl_c_or_one_before_the_first_step_exits_at_once():
    """The first Ctrl-C of an armed run only asks for the checkpoint; a second one, or one before
    the first step (nothing to keep), leaves at once with exit code 130."""
    with StopSignal(torch.device("cpu")) as stop:
        with pytest.raises(SystemExit) as early:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert early.value.code == 130 and stop.received is None
        stop.arm()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.received == signal.SIGINT and stop.exit_code == 130
        assert float(stop.device_flag()) == 1.0
        with pytest.raises(SystemExit) as second:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert second.value.code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_checkpoint_clock_asks_once_per_period_after_the_last_checkpoint():
    now = [100.0]
    clock = CheckpointClock(0.5, torch.device("cpu"), now=lambda: now[0])   # 30 s
    now[0] = 129.9
    assert float(clock.device_flag()) == 0.0
    now[0] = 130.0
    assert float(clock.device_flag()) == 1.0 and float(clock.device_flag()) == 1.0
    now[0] = 140.0
    clock.restart()                       # a checkpoint was written: due again at 170
    assert float(clock.device_flag()) == 0.0
    now[0] = 169.9
    assert float(clock.device_flag()) == 0.0
    now[0] = 170.0
    assert float(clock.device_flag()) == 1.0
    never = CheckpointClock(0, torch.device("cpu"), now=lambda: now[0])
    now[0] = 1e12
    assert float(never.device_flag()) == 0.0


def test_every_minutes_must_not_be_negative():
    assert load_config(str(REPO / PRETRAIN[0]), ["data.root=x"]).checkpoint.every_minutes == 30
    with pytest.raises(ConfigError, match=r"checkpoint.every_minutes=-1.*must be >= 0"):
        load_config(str(REPO / PRETRAIN[0]), ["data.root=x", "checkpoint.every_minutes=-1"])
