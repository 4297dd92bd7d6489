"""``python -m vissl_lite.launch [torchrun options] COMMAND ...``: torchrun for ``vissl-lite``.

    python -m vissl_lite.launch --nproc_per_node 8 pretrain configs/dino/imagenet_vit_small.yaml

is ``torchrun --nproc_per_node 8 -m vissl_lite.cli pretrain ...`` (every torchrun option works:
``--nnodes``, ``--rdzv_endpoint``, ``--standalone``, ...) with one difference: when a rank fails,
torchrun raises ``ChildFailedError`` and prints its own traceback and failure table after the
rank's message. Here a user error (exit code 2) ends with the one line rank 0 printed
(``vissl_lite.errors.print_user_error``) and exit code 2; any other failure adds one line naming
the first failed rank and its exit code (its traceback, a bug's, is printed by the rank itself).
"""
from __future__ import annotations

import logging
import sys
from typing import List, Optional

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, parse_args, run

USER_ERROR = 2       # what ``vissl-lite`` returns for a user error (cli.main)
#: torchrun's per-failure ERROR log record repeats what the rank already printed
_QUIET = "torch.distributed.elastic.multiprocessing.api"


def split_argv(argv: List[str]) -> int:
    """Where the ``vissl-lite`` command starts: the first argument that is not an option of
    torchrun or an option's value (torchrun's options are written ``--opt value``/``--opt=value``;
    ``--standalone``-like flags take no value)."""
    parser = get_args_parser()
    flags = {s for a in parser._actions if a.nargs == 0 for s in a.option_strings}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 1 if argv[i] in flags or "=" in argv[i] else 2
    return i


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    i = split_argv(argv)
    if i >= len(argv):
        print("usage: python -m vissl_lite.launch [torchrun options] COMMAND [args] (e.g. "
              "--nproc_per_node 2 pretrain simclr/cifar10_resnet18)", file=sys.stderr)
        return USER_ERROR
    args = parse_args([*argv[:i], "--module", "vissl_lite.cli", *argv[i:]])
    logging.getLogger(_QUIET).setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode != USER_ERROR:
            print(f"vissl-lite: rank {rank} failed with exit code {failure.exitcode}",
                  file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
