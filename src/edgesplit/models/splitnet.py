"""SplitNet: k independent branches that each see the whole input, and a small FC head.

The Capella idea: instead of cutting one network layer by layer over devices
(many sequential transfers of large feature maps), train k narrow networks side
by side. Each branch runs on its own device and returns one pooled feature vector;
the head concatenates them and classifies. Per inference the network carries one
input broadcast and ``sum(feature_dims)`` floats back.

Deployment seam: :meth:`SplitNet.parts` hands out each branch and the head as
separate modules (``branch0`` ... ``branch{k-1}``, ``head``), which
:mod:`edgesplit.export` turns into one ONNX file each.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


class SplitHead(nn.Module):
    """Concatenated branch features -> logits: Linear, or Linear-ReLU-Linear with ``hidden`` units."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 0, drop_rate: float = 0.0):
        super().__init__()
        self.in_features = in_features
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        if hidden > 0:
            self.fc = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
        else:
            self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, F_total) -> (B, num_classes)
        return self.fc(self.drop(features))


class SplitNet(nn.Module):
    """k branches (each ``(B, C, H, W) -> (B, F_i)``) plus a :class:`SplitHead`.

    ``branch_dropout`` (set by the trainer) zeroes each branch's whole feature
    vector with that probability per sample during training, never all branches of
    one sample, so that the head learns to answer when a device is missing. Missing
    branches at inference are likewise passed as zeros (see :meth:`forward_head`).
    No rescaling is applied: the all-present case is then identical in training and
    inference.
    """

    def __init__(
        self,
        branches: Sequence[nn.Module],
        feature_dims: Sequence[int],
        num_classes: int,
        head_hidden: int = 0,
        drop_rate: float = 0.0,
        unsplit_name: str | None = None,
    ):
        super().__init__()
        if len(branches) != len(feature_dims) or not branches:
            raise ValueError("need one feature size per branch, and at least one branch")
        self.branches = nn.ModuleList(branches)
        self.feature_dims = [int(d) for d in feature_dims]
        self.num_classes = num_classes
        self.head = SplitHead(sum(self.feature_dims), num_classes, head_hidden, drop_rate)
        self.branch_dropout = 0.0
        self.unsplit_name = unsplit_name  # the registered unsplit model this one is compared with

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:  # (B, C, H, W) -> k x (B, F_i)
        return [branch(x) for branch in self.branches]

    def forward_head(self, features: Sequence[torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        """Concatenate branch features and classify.

        ``present``: optional (B, k) or (k,) 0/1 mask; a 0 zeroes that branch's features.
        """
        if present is not None:
            present = present.to(features[0].dtype)
            if present.dim() == 1:
                present = present.unsqueeze(0).expand(features[0].shape[0], -1)
            features = [f * present[:, i : i + 1] for i, f in enumerate(features)]
        return self.head(torch.cat(list(features), dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x)
        present = None
        if self.training and self.branch_dropout > 0 and self.num_branches > 1:
            present = branch_keep_mask(x.shape[0], self.num_branches, self.branch_dropout, x.device)
        return self.forward_head(features, present)

    def parts(self) -> dict[str, nn.Module]:
        """Deployable pieces in order: ``branch0`` ... ``branch{k-1}``, then ``head``."""
        named = {f"branch{i}": b for i, b in enumerate(self.branches)}
        named["head"] = self.head
        return named


def branch_keep_mask(batch: int, k: int, p_drop: float, device) -> torch.Tensor:
    """(B, k) 0/1 mask; each entry is 0 with probability p_drop, and no row is all zeros."""
    keep = (torch.rand(batch, k, device=device) >= p_drop).float()
    empty = keep.sum(dim=1) == 0
    if empty.any():  # re-enable one random branch in rows that lost them all
        idx = torch.randint(0, k, (int(empty.sum()),), device=device)
        keep[empty.nonzero(as_tuple=True)[0], idx] = 1.0
    return keep


def split_widths(base: int, k: int, width_mult: float = 1.0, share: float | None = None) -> int:
    """Channel count of one branch: ``base * width_mult / k`` (or ``* share`` for unequal branches), at least 1."""
    frac = share if share is not None else 1.0 / k
    return max(1, int(round(base * width_mult * frac)))


def branch_shares(k: int, branch_widths: Sequence[float] | None) -> list[float]:
    """Fractions of the full width per branch; equal (1/k) unless ``branch_widths`` is given.

    ``branch_widths`` are relative weights, e.g. ``(2, 1)`` for a device twice as fast:
    they are normalised to sum to 1, so the branches together keep the full width.
    """
    if branch_widths is None:
        return [1.0 / k] * k
    if len(branch_widths) != k or any(w <= 0 for w in branch_widths):
        raise ValueError(f"branch_widths needs {k} positive numbers, got {list(branch_widths)}")
    total = float(sum(branch_widths))
    return [w / total for w in branch_widths]
