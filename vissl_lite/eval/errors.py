"""``EvalError``: a user error in an evaluation (bad argument, wrong shapes, missing labels).

A plain ``ValueError`` subclass with no imports, because ``vissl_lite.config`` imports this
package (for the ``monitor`` schema) and must not import itself back.
"""
from __future__ import annotations


class EvalError(ValueError):
    """An evaluation cannot run as asked; the message names the cause and the fix."""
