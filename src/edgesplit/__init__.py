"""edgesplit: CNN perception split over a handful of small edge devices.

Submodules load lazily: ``import edgesplit`` pulls in neither torch nor grpc.
"""
__version__ = "0.1.0"
