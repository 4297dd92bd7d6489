"""Method plugins, one file each; importing this package registers them in ``METHODS``."""
from vissl_lite.methods.base import Method, StepOutput  # noqa: F401
