"""edgesplit: CNN perception split over a handful of small edge devices.

``import edgesplit`` loads neither torch nor grpc; ``edgesplit.connect(plan)`` and
``edgesplit.connect_async(plan)`` load the runtime on first use.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name in ("connect", "connect_async", "Client", "AsyncClient"):
        from edgesplit.runtime import client

        return getattr(client, name)
    raise AttributeError(f"module 'edgesplit' has no attribute {name!r}")
