"""skyring: collectives for training one model across clouds.

The C++ engine (skyring._core) does the work; skyring.torch gives it Horovod's PyTorch
API, skyring.run launches jobs (skyringrun). See docs/python.md.

The engine is loaded on first use, not at import: the launcher (skyring.run) does not
need it, and starts without it.
"""

__all__ = ["Error", "InvalidArgument", "TransportError", "Timeout", "Aborted", "__version__"]


def __getattr__(name):
    if name in __all__:
        from skyring import _core

        return getattr(_core, name)
    raise AttributeError(f"module 'skyring' has no attribute {name!r}")
