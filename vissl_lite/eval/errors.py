"""``EvalError``: a user error in an evaluation (bad argument, wrong shapes, missing labels).

It subclasses ``ConfigError`` so the command line prints it as one line, like any config error.
"""
from __future__ import annotations

from vissl_lite.config import ConfigError


class EvalError(ConfigError):
    """An evaluation cannot run as asked; the message names the cause and the fix."""
