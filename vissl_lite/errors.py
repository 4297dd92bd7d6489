"""Every error a user can cause, under one base class: :class:`VisslLiteError`.

This module is the bottom of the import graph (it imports nothing from the package), so every
layer raises from here and the command line catches the base class alone: a user error ends in
one line naming the cause and the fix, and anything else is a bug that keeps its traceback.

Each kind also derives from the built-in exception callers would have caught before
(``ValueError``, ``KeyError``, ``RuntimeError``), so ``except ValueError`` in user code still works.
"""
from __future__ import annotations

import os
import sys


class VisslLiteError(Exception):
    """Base class of every user error; the message names the cause and the fix."""


class ConfigError(VisslLiteError, ValueError):
    """A bad config key, type or value; the message names the key, its source and the fix."""


class RegistryError(VisslLiteError, KeyError):
    """An unknown or duplicated registered name; the message lists the names that exist."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class DataError(VisslLiteError, ValueError):
    """A missing, empty, malformed or corrupt data set; the message says what to change."""


class BackboneError(VisslLiteError, ValueError):
    """Wrong backbone option, input size or weights file."""


class AugmentError(VisslLiteError, ValueError):
    """An augmentation recipe or option that cannot be built as asked."""


class MaskError(AugmentError):
    """Patch-mask parameters that cannot produce the masks asked for (ratios, block sizes)."""


class CheckpointError(VisslLiteError, ValueError):
    """A checkpoint that is missing, corrupt, or from another method, backbone or format."""


class EvalError(VisslLiteError, ValueError):
    """An evaluation that cannot run as asked (bad argument, wrong shapes, missing labels)."""


class NonFiniteLossError(VisslLiteError, RuntimeError):
    """The loss or the gradient became NaN/inf; the message names the step and what to try."""


#: the name augment/recipes.py used before the hierarchy existed
AugmentConfigError = AugmentError

__all__ = ["VisslLiteError", "ConfigError", "RegistryError", "DataError", "BackboneError",
           "AugmentError", "AugmentConfigError", "MaskError", "CheckpointError", "EvalError",
           "NonFiniteLossError"]


def print_user_error(error: VisslLiteError) -> None:
    """``vissl-lite: error: <message>`` on stderr, once per run rather than once per process.

    Under ``torchrun`` every rank meets the same user error (the same command line, config and
    world size), so only global rank 0 prints it; torchrun's ``RANK`` tells the rank before the
    process group exists (a config error is found before it is created).
    """
    if int(os.environ.get("RANK", "0") or 0) == 0:
        print(f"vissl-lite: error: {error}", file=sys.stderr)
