"""``vissl-lite submit --local``: submitit jobs of 2 ranks end to end, a sweep as a job array,
and pre-emption: SIGTERM to a running job leaves a checkpoint, and the job submitit requeues
(``PretrainJob.checkpoint``: the same run with ``resume=auto``) continues from it to the end.

The toy method and encoder (``tests/_toy.py``, loaded with ``--plugins``) on 32 random images
(``data.name=folder``) keep each job to seconds of training; starting the processes costs the rest.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vissl_lite.engine.slurm import parse_sweep, run_name, time_minutes
from vissl_lite.errors import ConfigError

TOY = str(Path(__file__).resolve().parent / "_toy.py")
COMMON = ["data.name=folder", "train.device=cpu", "train.batch_size=8", "train.log_every=1", "data.subset=32",
          "data.num_workers=0", "data.image_size=16", "logger.wandb.mode=disabled",
          "logger.progress=false", "logger.plot=false", "monitor.every_epochs=0",
          "backbone.name=toy", "checkpoint.every_minutes=0"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """32 small random PNG images (data.name=folder): no data set to unpack."""
    import numpy as np
    from PIL import Image
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(32):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def _submit(tmp_path: Path, data_root: Path, tasks: int, *extra: str) -> subprocess.Popen:
    preset = tmp_path / "toy.yaml"
    preset.write_text("method:\n  name: toy_contrastive\n")
    cmd = [sys.executable, "-m", "vissl_lite.cli", "submit", str(preset), *COMMON,
           f"data.root={data_root}", f"output_dir={tmp_path / 'run'}", "--plugins", TOY,
           "--local", "--nodes", "1", "--gpus-per-node", "0", "--tasks-per-node", str(tasks),
           "--time", "10", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def _records(run: Path):
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sweep_grid_names_and_time_limits():
    assert parse_sweep("optim.lr=0.1,0.3 method.temperature=0.1,0.2") == [
        ["optim.lr=0.1", "method.temperature=0.1"], ["optim.lr=0.1", "method.temperature=0.2"],
        ["optim.lr=0.3", "method.temperature=0.1"], ["optim.lr=0.3", "method.temperature=0.2"]]
    assert parse_sweep(None) == [[]]
    assert run_name(["optim.lr=0.1", "method.temperature=0.2"]) == "lr=0.1_temperature=0.2"
    assert [time_minutes(t) for t in ("90", "01:30:00", "1-00:00:00", "00:10:30")] == [
        90, 90, 1440, 11]
    with pytest.raises(ConfigError, match="key=value1,value2"):
        parse_sweep("optim.lr")


def test_submit_local_runs_a_sweep_as_jobs_end_to_end(tmp_path, images):
    proc = _submit(tmp_path, images, 1, "train.max_steps=2", "--sweep", "optim.lr=0.1,0.2")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    lrs = {}
    for lr in ("0.1", "0.2"):
        run = tmp_path / "run" / f"lr={lr}"
        steps = [r for r in _records(run) if r["type"] == "step"]
        assert [r["step"] for r in steps] == [1, 2]
        lrs[lr] = [r["lr"] for r in steps]   # each run its own optim.lr (scaled by a schedule)
        log = (run / "train.log").read_text()
        assert "world size 1, batch 8 per rank = 8 global" in log
        assert (run / "checkpoints" / "last.pt").is_file()
        assert f"output_dir={run}" in out
    assert lrs["0.2"] == pytest.approx([2 * lr for lr in lrs["0.1"]])
    assert out.count(" done: 2 steps") == 2


def test_sigterm_checkpoints_and_the_requeued_two_rank_job_resumes_to_the_end(tmp_path, images):
    proc = _submit(tmp_path, images, 2, "train.max_steps=8", "method.sleep=0.5")
    line = proc.stdout.readline()
    assert line.startswith("submitted job "), line
    controller = int(line.split()[2].rstrip(":"))
    run = tmp_path / "run"
    deadline = time.time() + 300
    while not any(r.get("step", 0) >= 2 for r in _records(run)) and time.time() < deadline:
        time.sleep(0.2)
    os.kill(controller, signal.SIGTERM)   # submitit's local controller forwards it to the ranks
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    log = (run / "train.log").read_text()
    assert "world size 2, batch 4 per rank = 8 global" in log
    stopped = [line for line in log.splitlines() if "SIGTERM received: checkpoint written" in line]
    assert len(stopped) == 1, log[-3000:]
    at = int(stopped[0].split("at step ")[1].split()[0])
    assert 2 <= at < 8
    assert f"at step {at} (epoch" in log and "resumed from" in log
    steps = [r["step"] for r in _records(run) if r["type"] == "step"]
    assert steps == list(range(1, 9))
    assert "done: 8 steps" in out
