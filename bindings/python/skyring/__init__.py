"""skyring: collectives for training one model across clouds.

The C++ engine (skyring._core) does the work; skyring.torch gives it Horovod's PyTorch
API, skyring.run launches jobs (skyringrun). See docs/python.md.
"""

from skyring._core import (  # noqa: F401
    Aborted,
    Error,
    InvalidArgument,
    Timeout,
    TransportError,
    __version__,
)

__all__ = ["Error", "InvalidArgument", "TransportError", "Timeout", "Aborted", "__version__"]
