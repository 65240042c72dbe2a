"""Model zoo: every family registers its factories on import (see :mod:`.registry`)."""

from edgesplit.models import alexnet, bundlenet, resnet, squeezenet  # noqa: F401  (registers the models)
from edgesplit.models.registry import create_model, list_models, register_model
from edgesplit.models.splitnet import SplitHead, SplitNet

__all__ = ["create_model", "list_models", "register_model", "SplitNet", "SplitHead"]
