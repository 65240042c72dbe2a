"""Model registry: ``@register_model`` factories and ``create_model(name, **kw)``.

Like timm, every model family lives in its own file and registers small factory
functions; the rest of edgesplit only knows names. All factories take the same
keyword arguments: ``num_classes``, ``in_chans`` and ``input_size`` (H, W), plus
family-specific ones.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from edgesplit.errors import EdgesplitError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
DEFAULT_LR = 0.1  # peak learning rate for models with batch norm; a factory may set ``fn.default_lr``


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its name, with ``_`` written as ``-`` (``resnet18_split2`` -> ``resnet18-split2``)."""
    name = fn.__name__.replace("_", "-")
    if name in _MODELS:
        raise ValueError(f"model {name!r} registered twice")
    _MODELS[name] = fn
    return fn


def default_lr(name: str) -> float:
    """The peak learning rate a model trains well with (``DEFAULT_LR`` unless its factory says otherwise)."""
    return getattr(_MODELS.get(name), "default_lr", DEFAULT_LR)


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; an unknown name raises a one-line :class:`EdgesplitError`."""
    try:
        factory = _MODELS[name]
    except KeyError:
        raise EdgesplitError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models())} (see `edgesplit models`)"
        ) from None
    import inspect

    params = inspect.signature(factory).parameters
    takes = [p for p in params if p not in ("num_classes", "in_chans", "input_size")]
    var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [] if var_keyword else sorted(set(kwargs) - set(params))
    if unknown:
        raise EdgesplitError(
            f"model {name!r} has no argument {', '.join(unknown)}; its arguments: "
            f"{', '.join(takes) or 'none'} (pass them with --model-arg KEY=VALUE)"
        )
    try:
        model = factory(**kwargs)
    except TypeError as err:
        raise EdgesplitError(f"model {name!r} does not take these arguments ({err})") from None
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    return model
