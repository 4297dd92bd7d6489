"""``vissl-lite submit``: pretraining as SLURM jobs through submitit (or its local executor).

    vissl-lite submit PRESET [key=value ...] --nodes N --gpus-per-node G --partition P --time T
                      [--local] [--sweep 'optim.lr=0.1,0.3 method.temperature=0.1,0.2']

submitit (facebookincubator/submitit) writes the sbatch script, starts ``nodes x tasks`` tasks
(one per GPU) and runs ``PretrainJob`` in each. A task takes its rank from submitit's
``JobEnvironment`` and sets what torchrun would (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` = the job's first node, ``MASTER_PORT`` from the job id), so the Trainer joins the
process group as under torchrun.

Pre-emption and time limits, submitit's checkpoint/requeue protocol: SLURM (or the local
controller) sends submitit's signal (SIGUSR2) ``signal_delay_s`` before the end, or SIGTERM /
SIGUSR1 arrive. The job turns SIGUSR2 into the Trainer's SIGUSR1, so every rank finishes the step
in flight and rank 0 writes a checkpoint (``stop.py``); then rank 0 hands over to submitit's
handler, which calls ``PretrainJob.checkpoint()`` (the same job with ``resume=auto``) and
requeues it. The requeued job continues from the checkpoint.

``--sweep`` takes space-separated ``key=v1,v2`` items; their grid is one job array
(``executor.batch()``), each run in its own ``output_dir`` (``<output_dir>/<key>=<value>_...``),
which ``vissl-lite compare`` reads back. ``--local`` runs the same jobs on this machine with
submitit's ``LocalExecutor`` (what the tests use) and waits for them.
"""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import submitit
from submitit.helpers import DelayedSubmission

from vissl_lite.config import load_config
from vissl_lite.engine.stop import SIGNALS
from vissl_lite.engine.trainer import Trainer
from vissl_lite.errors import ConfigError
from vissl_lite.presets import add_preset_roots
from vissl_lite.registry import add_plugins

STOPPED = {128 + int(s) for s in SIGNALS}


class PretrainJob:
    """One pretraining run as a submitit task: ``__call__`` trains, ``checkpoint`` requeues."""

    def __init__(self, config: str, overrides: Sequence[str], plugins: Sequence[str] = (),
                 configs: Sequence[str] = ()):
        self.config, self.overrides = config, list(overrides)
        self.plugins, self.configs = list(plugins), list(configs)

    def __call__(self) -> Dict[str, Any]:
        add_plugins(self.plugins)
        add_preset_roots(self.configs)
        set_rank_environment(submitit.JobEnvironment())
        requeue = _take_preemption_signal()
        cfg = load_config(self.config, self.overrides)
        try:
            return Trainer(cfg).fit()
        except SystemExit as stopped:
            if stopped.code in STOPPED and requeue is not None:
                requeue(signal.SIGUSR2, None)   # rank 0: checkpoint() + requeue; others return
            raise

    def checkpoint(self) -> DelayedSubmission:
        """The same run, continued from the checkpoint its Trainer has just written."""
        overrides = [o for o in self.overrides if not o.startswith("resume=")] + ["resume=auto"]
        return DelayedSubmission(PretrainJob(self.config, overrides, self.plugins, self.configs))


def set_rank_environment(env) -> None:
    """What torchrun gives each rank, from submitit's view of the job."""
    os.environ.update(RANK=str(env.global_rank), LOCAL_RANK=str(env.local_rank),
                      WORLD_SIZE=str(env.num_tasks))
    os.environ.setdefault("MASTER_ADDR", env.hostnames[0] if env.num_nodes > 1 else "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(20000 + zlib.crc32(str(env.job_id).encode()) % 20000))


def _take_preemption_signal():
    """submitit's handler of its signal (kept to requeue with), replaced by one that asks the
    Trainer to stop with a checkpoint (its SIGUSR1 handler) on every rank."""
    previous = signal.getsignal(signal.SIGUSR2)
    signal.signal(signal.SIGUSR2, lambda *_: os.kill(os.getpid(), signal.SIGUSR1))
    return previous if callable(previous) else None


def parse_sweep(sweep: Optional[str]) -> List[List[str]]:
    """``'a=1,2 b=x'`` -> ``[['a=1', 'b=x'], ['a=2', 'b=x']]``; no sweep -> ``[[]]``."""
    axes: List[List[str]] = []
    for item in (sweep or "").split():
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--sweep item {item!r} is not key=value1,value2; e.g. --sweep "
                              f"'optim.lr=0.1,0.3 method.temperature=0.1,0.2'")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(combo) for combo in itertools.product(*axes)]


def run_name(combo: Sequence[str]) -> str:
    """``['optim.lr=0.1', 'method.temperature=0.2']`` -> ``lr=0.1_temperature=0.2``."""
    return "_".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in (c.split("=", 1) for c in combo))


def time_minutes(text: str) -> int:
    """``--time``: minutes (``90``), ``HH:MM:SS`` or ``D-HH:MM:SS``, as sbatch takes them."""
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if len(parts) == 1:
        parts = [0, parts[0], 0]
    hours, minutes, seconds = ([0] * (3 - len(parts)) + parts)[-3:]
    return int(days or 0) * 1440 + hours * 60 + minutes + (seconds > 0)


def build_executor(args, folder: Path):
    """submitit's SLURM executor (its local one with ``--local``) with the job's resources."""
    if not args.local and shutil.which("sbatch") is None:
        raise ConfigError("vissl-lite submit: no sbatch on this machine (not a SLURM login "
                          "node); run it where SLURM is, or add --local to run here")
    executor = submitit.AutoExecutor(folder=folder, cluster="local" if args.local else "slurm")
    params = dict(name=args.name, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                  tasks_per_node=args.tasks_per_node or max(args.gpus_per_node, 1),
                  timeout_min=time_minutes(args.time), cpus_per_task=args.cpus_per_task,
                  slurm_partition=args.partition, slurm_signal_delay_s=args.signal_delay)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def submit(args) -> Tuple[List[Any], List[Path]]:
    """Submit the run (or the sweep's grid as one array); returns (jobs, their output dirs)."""
    if args.local and args.nodes != 1:
        raise ConfigError(f"--local runs on this machine: --nodes must be 1, not {args.nodes}")
    base = load_config(args.config, args.overrides)     # fails here, not in the queue
    combos = parse_sweep(args.sweep)
    folders = [Path(base.output_dir) / run_name(c) if c else Path(base.output_dir) for c in combos]
    executor = build_executor(args, Path(args.folder or Path(base.output_dir) / "submitit"))
    jobs_in = [PretrainJob(args.config, [*args.overrides, *c, f"output_dir={f}"], args.plugins,
                           args.configs) for c, f in zip(combos, folders)]
    with executor.batch():
        submitted = [executor.submit(job) for job in jobs_in]
    return submitted, folders
