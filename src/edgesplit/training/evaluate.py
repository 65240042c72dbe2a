"""Accuracy of a model on a dataset: top-1, top-5, per class, and with each single branch missing."""

from __future__ import annotations

import numpy as np
import torch

from edgesplit.data.preprocess import Preprocess
from edgesplit.data.transforms import batches, to_tensor
from edgesplit.models import SplitNet


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, dataset, idx: np.ndarray, pre: Preprocess, batch_size: int = 500, present: torch.Tensor | None = None
) -> np.ndarray:
    """Logits (N, num_classes) for ``dataset[idx]``; ``present`` (k,) masks branches of a SplitNet."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for b in batches(len(idx), batch_size, shuffle=False):
            x = to_tensor(dataset.images(idx[b]), pre)
            if present is not None:
                out.append(model.forward_head(model.forward_features(x), present).numpy())
            else:
                out.append(model(x).numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out)


def accuracy_report(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    top1 = logits.argmax(1) == labels
    k = min(5, logits.shape[1])
    topk = (np.argsort(-logits, axis=1)[:, :k] == labels[:, None]).any(1)
    per_class = {c: float(top1[labels == i].mean()) if (labels == i).any() else None for i, c in enumerate(classes)}
    return {"n": int(len(labels)), "top1": float(top1.mean()), "top5": float(topk.mean()), "per_class": per_class}


def evaluate(model: torch.nn.Module, dataset, idx: np.ndarray | None, pre: Preprocess, missing_branches: bool = True) -> dict:
    """Accuracy on ``dataset[idx]`` (all when None); for split models also with each branch zeroed."""
    idx = np.arange(len(dataset)) if idx is None else idx
    labels = dataset.labels(idx)
    report = accuracy_report(predict_logits(model, dataset, idx, pre), labels, list(dataset.classes))
    if missing_branches and isinstance(model, SplitNet) and model.num_branches > 1:
        report["missing_branch_top1"] = {}
        for i in range(model.num_branches):
            present = torch.ones(model.num_branches)
            present[i] = 0
            logits = predict_logits(model, dataset, idx, pre, present=present)
            report["missing_branch_top1"][f"branch{i}"] = float((logits.argmax(1) == labels).mean())
    return report
