"""SqueezeNet v1.1 (Iandola et al., 2016) and a split variant ``squeezenet-split2``.

The original classifier is Dropout, 1x1 conv to the classes, ReLU, global average
pool. Here the pooled 512-channel features come first (``forward_features``) and the
head is Dropout + Linear: the same map as the original without its final ReLU, and
the seam where a split network's branches end.

Stems: ``imagenet`` is the original 3x3/2 conv (224 px); ``small`` a 3x3/1 conv for
28-32 px inputs (the three max-pools then take 28 px to 4 px).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from edgesplit.models.registry import register_model
from edgesplit.models.resnet import pick_stem
from edgesplit.models.splitnet import SplitNet, branch_shares

# (squeeze, expand1x1, expand3x3) of the eight Fire modules; "M" is a 3x3/2 max-pool.
SQUEEZENET_V11_CFG = [
    "M",
    (16, 64, 64),
    (16, 64, 64),
    "M",
    (32, 128, 128),
    (32, 128, 128),
    "M",
    (48, 192, 192),
    (48, 192, 192),
    (64, 256, 256),
    (64, 256, 256),
]
SQUEEZENET_STEM_WIDTH = 64


class Fire(nn.Module):
    """Squeeze 1x1 conv, then parallel 1x1 and 3x3 expand convs, concatenated."""

    def __init__(self, in_chs: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(in_chs, squeeze, 1)
        self.squeeze_act = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_act = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_act = nn.ReLU(inplace=True)
        self.out_chs = expand1x1 + expand3x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_act(self.squeeze(x))
        return torch.cat([self.expand1x1_act(self.expand1x1(x)), self.expand3x3_act(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    def __init__(
        self, num_classes: int = 1000, in_chans: int = 3, stem: str = "imagenet", width_mult: float = 1.0, drop_rate: float = 0.5
    ):
        super().__init__()
        self.num_classes = num_classes

        def scale(c: int) -> int:
            return max(1, int(round(c * width_mult)))

        stem_width = scale(SQUEEZENET_STEM_WIDTH)
        stride = 2 if stem == "imagenet" else 1
        layers: list[nn.Module] = [nn.Conv2d(in_chans, stem_width, 3, stride), nn.ReLU(inplace=True)]
        in_chs = stem_width
        for item in SQUEEZENET_V11_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            else:
                fire = Fire(in_chs, *(scale(c) for c in item))
                layers.append(fire)
                in_chs = fire.out_chs
        self.features = nn.Sequential(*layers)
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.num_features = in_chs
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(in_chs, num_classes)) if num_classes > 0 else nn.Identity()
        for m in self.modules():  # He init: without batch norm, PyTorch's default (gain 1/sqrt(3)) stalled training at chance
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 512)
        return self.global_pool(self.features(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def sequential_blocks(self) -> list[tuple[str, nn.Module]]:
        blocks = [(f"features.{i}", m) for i, m in enumerate(self.features) if not isinstance(m, nn.ReLU)]
        # the stem conv and its ReLU cut as one piece
        blocks[0] = ("features.0-1", nn.Sequential(self.features[0], self.features[1]))
        return blocks + [("global_pool", self.global_pool), ("head", self.head)]


@register_model
def squeezenet(
    num_classes: int = 1000,
    in_chans: int = 3,
    input_size: Sequence[int] = (224, 224),
    stem: str | None = None,
    width_mult: float = 1.0,
) -> SqueezeNet:
    """SqueezeNet v1.1: 1.24 M parameters, 0.35 GMACs at 3x224x224."""
    return SqueezeNet(num_classes, in_chans, pick_stem(input_size, stem), width_mult)


# SqueezeNet has no batch norm: at the 0.1 peak rate of the other models it stays at chance on Fashion-MNIST;
# 0.02 trains (docs/results.md, "SqueezeNet's learning rate").
squeezenet.default_lr = 0.02


@register_model
def squeezenet_split2(
    num_classes: int = 1000,
    in_chans: int = 3,
    input_size: Sequence[int] = (224, 224),
    stem: str | None = None,
    width_mult: float = 1.0,
    branch_widths: Sequence[float] | None = None,
    head_hidden: int = 0,
) -> SplitNet:
    """Two SqueezeNet v1.1 branches, each with every layer's channels halved."""
    stem = pick_stem(input_size, stem)
    branches = [SqueezeNet(0, in_chans, stem, width_mult * share) for share in branch_shares(2, branch_widths)]
    return SplitNet(branches, [b.num_features for b in branches], num_classes, head_hidden, 0.5, unsplit_name="squeezenet")


squeezenet_split2.default_lr = squeezenet.default_lr
