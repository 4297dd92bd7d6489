"""The error a user gets when a backbone cannot be built, fed or loaded as asked."""
from __future__ import annotations


class BackboneError(ValueError):
    """Wrong backbone option, input size or weights file; the message names the cause and fix."""
