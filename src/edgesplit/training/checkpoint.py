"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` (no unpickling of code).

A checkpoint is a plain dict: format tag, model name and constructor arguments,
the weights, the optimiser and schedule state, the epoch it completed, the
training config, class names and preprocessing. ``load_model`` rebuilds the model
from the name and arguments and refuses a state dict of another model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from edgesplit.data.preprocess import Preprocess
from edgesplit.errors import EdgesplitError
from edgesplit.models import create_model

CHECKPOINT_FORMAT = "edgesplit-checkpoint/1"


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise EdgesplitError(f"checkpoint {path} not found; pass a file written by `edgesplit train` or its run directory")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise EdgesplitError(
            f"{path} is not a readable edgesplit checkpoint ({type(err).__name__}); retrain or pick another file"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise EdgesplitError(f"{path} is not an edgesplit checkpoint (format tag missing); use one written by `edgesplit train`")
    return ckpt


def build_model(ckpt: dict) -> nn.Module:
    """The model named in ``ckpt`` with its weights; a mismatching state dict is refused."""
    model = create_model(ckpt["model"], **ckpt["model_kwargs"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise EdgesplitError(
            f"checkpoint weights do not fit model {ckpt['model']!r} ({first}); it was written for another model"
        ) from None
    model.eval()
    return model


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    ckpt = read_checkpoint(path)
    return build_model(ckpt), ckpt


def checkpoint_preprocess(ckpt: dict) -> Preprocess:
    return Preprocess.from_dict(ckpt["preprocess"])
