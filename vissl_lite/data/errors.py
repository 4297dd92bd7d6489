"""The one exception a user's data can cause: :class:`DataError` (a ``ValueError``).

Every message names the cause (the path, the split, the file) and the fix (what ``data.root``
should point to, which option to set), so that a run fails in one readable line instead of a
traceback deep inside PIL or torchvision.
"""
from __future__ import annotations


class DataError(ValueError):
    """A missing, empty, malformed or corrupt data set; the message says what to change."""
