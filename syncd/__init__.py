"""syncd: a robot-side capture-and-sync daemon for Viam's data-sync API.

Robot programs use :class:`Outbox` to queue readings durably; the daemon (``syncd run``)
uploads them. Importing this package loads no generated protobuf code, so it can live in
the same interpreter as the Viam SDK.
"""

__version__ = "0.1.0"

__all__ = ["Outbox", "__version__"]


def __getattr__(name: str):
    # Lazy, so `syncd --version` and the config checker do not open SQLite machinery.
    if name == "Outbox":
        from syncd.outbox import Outbox

        return Outbox
    raise AttributeError(f"module 'syncd' has no attribute {name!r}")
