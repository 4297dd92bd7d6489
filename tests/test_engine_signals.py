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
from vissl_lite.engine import load_checkpoint
from vissl_lite.engine.logger import read_jsonl

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
