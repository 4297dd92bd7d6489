"""The ``vissl-lite submit`` command line (kept free of torch and submitit: ``--help`` and
argument errors import neither); the submission itself is ``engine/slurm.py``, loaded when the
command runs."""
from __future__ import annotations

import argparse

from vissl_lite import engine
from vissl_lite.errors import ConfigError


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit pretraining to SLURM through submitit (``engine/slurm.py``); ``--local`` waits."""
    try:
        jobs, folders = engine.submit(args)
    except ImportError as e:
        if "submitit" not in str(e):
            raise
        raise ConfigError("vissl-lite submit needs submitit: pip install 'vissl_lite[slurm]'"
                          ) from None
    for job, folder in zip(jobs, folders):
        print(f"submitted job {job.job_id}: output_dir={folder}", flush=True)
    if args.local or args.wait:
        for job in jobs:
            result = job.results()[0]   # rank 0's
            print(f"job {job.job_id} done: {result.get('step')} steps, checkpoint "
                  f"{result.get('checkpoint')}")
    return 0


def add_submit_parser(sub, folders: argparse.ArgumentParser) -> None:
    """The ``submit`` sub-command on the ``vissl-lite`` parser."""
    p = sub.add_parser("submit", help="pretrain as a SLURM job (submitit), or a sweep as a job "
                                      "array", parents=[folders],
                       description="Submit `pretrain CONFIG overrides` to SLURM through submitit: "
                                   "one task per GPU with torchrun's rank variables, a checkpoint "
                                   "and requeue (resume=auto) at pre-emption or time limit.")
    p.add_argument("config", help="YAML file or preset name, as for pretrain")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=1)
    p.add_argument("--tasks-per-node", type=int, default=None,
                   help="ranks per node (default: --gpus-per-node, at least 1)")
    p.add_argument("--cpus-per-task", type=int, default=None)
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--time", default="60", help="time limit: minutes, HH:MM:SS or D-HH:MM:SS")
    p.add_argument("--signal-delay", type=int, default=120,
                   help="seconds before the time limit at which the job checkpoints (default 120)")
    p.add_argument("--name", default="vissl-lite", help="job name")
    p.add_argument("--sweep", default=None, metavar="'key=v1,v2 ...'",
                   help="the grid of these values as one job array, each run in "
                        "output_dir/<key>=<value>_...")
    p.add_argument("--folder", default=None,
                   help="submitit's logs and pickles (default: output_dir/submitit)")
    p.add_argument("--local", action="store_true",
                   help="run here with submitit's local executor and wait for the jobs")
    p.add_argument("--wait", action="store_true", help="wait for the jobs and print their ends")
    p.set_defaults(func=cmd_submit)
