"""ResNet18-V1 (He et al., 2016) and its split variants ``resnet18-split{k}``.

Order as in timm: blocks, network, then small registered factories.

Stems:
* ``imagenet``: 7x7/2 conv + 3x3/2 max-pool, for 224 px inputs (the original).
* ``small``: one 3x3 conv of stride ``stem_stride``, no max-pool, for 28-32 px
  inputs with any channel count. The default stride is 2, so a 28 px image passes
  the four stages at 14/7/4/2 px; ``stem_stride=1`` gives the CIFAR-style stem at
  4x the MACs (26 min per Fashion-MNIST epoch on a 2-core CPU, against 9 min).
``stem=None`` picks ``imagenet`` for inputs of 64 px and more, else ``small``.
"""

from __future__ import annotations

import inspect

from typing import Sequence

import torch
import torch.nn as nn

from edgesplit.models.registry import register_model
from edgesplit.models.splitnet import SplitNet, branch_shares, split_widths

RESNET18_WIDTHS = (64, 128, 256, 512)
RESNET18_DEPTHS = (2, 2, 2, 2)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (1x1 projection when shape changes)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)


def _stem(in_chans: int, width: int, stem: str, stem_stride: int) -> nn.Sequential:
    if stem == "imagenet":
        return nn.Sequential(
            nn.Conv2d(in_chans, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
    if stem == "small":
        return nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
    raise ValueError(f"unknown stem {stem!r}; use 'imagenet' or 'small'")


def pick_stem(input_size: Sequence[int], stem: str | None) -> str:
    return stem or ("imagenet" if min(input_size) >= 64 else "small")


class ResNet(nn.Module):
    """ResNet-V1 of BasicBlocks.

    ``forward_features`` returns the globally pooled feature vector ``(B, num_features)``:
    that is where a split network's branch ends. ``num_classes=0`` builds no classifier
    (``forward`` then returns the features), which is how branches are made.
    """

    def __init__(
        self,
        widths: Sequence[int] = RESNET18_WIDTHS,
        depths: Sequence[int] = RESNET18_DEPTHS,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        stem_stride: int = 2,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.stem = _stem(in_chans, widths[0], stem, stem_stride)
        stages, in_chs = [], widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = [BasicBlock(in_chs if j == 0 else width, width, 2 if (j == 0 and i > 0) else 1) for j in range(depth)]
            stages.append(nn.Sequential(*blocks))
            in_chs = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.num_features = in_chs
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_features)
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.global_pool(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def sequential_blocks(self) -> list[tuple[str, nn.Module]]:
        """Pieces whose composition is ``forward``: where a layer-wise partition may cut."""
        blocks = [("stem", self.stem)]
        for s, stage in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            blocks += [(f"layer{s}.{j}", b) for j, b in enumerate(stage)]
        return blocks + [("global_pool", self.global_pool), ("fc", self.fc)]


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():  # zero-init the last BN of each residual branch (Goyal et al., 2017)
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


def _resnet18_split(
    k: int,
    num_classes: int = 1000,
    in_chans: int = 3,
    input_size: Sequence[int] = (224, 224),
    stem: str | None = None,
    stem_stride: int = 2,
    width_mult: float = 1.0,
    branch_widths: Sequence[float] | None = None,
    head_hidden: int = 0,
    drop_rate: float = 0.0,
) -> SplitNet:
    stem = pick_stem(input_size, stem)
    branches = []
    for share in branch_shares(k, branch_widths):
        widths = [split_widths(w, k, width_mult, share) for w in RESNET18_WIDTHS]
        branches.append(ResNet(widths, RESNET18_DEPTHS, num_classes=0, in_chans=in_chans, stem=stem, stem_stride=stem_stride))
    return SplitNet(branches, [b.num_features for b in branches], num_classes, head_hidden, drop_rate, unsplit_name="resnet18")


@register_model
def resnet18(
    num_classes: int = 1000,
    in_chans: int = 3,
    input_size: Sequence[int] = (224, 224),
    stem: str | None = None,
    stem_stride: int = 2,
    width_mult: float = 1.0,
) -> ResNet:
    """ResNet18-V1: 11.69 M parameters and 1.82 GMACs at 3x224x224 with 1000 classes."""
    widths = [max(1, int(round(w * width_mult))) for w in RESNET18_WIDTHS]
    return ResNet(widths, RESNET18_DEPTHS, num_classes, in_chans, pick_stem(input_size, stem), stem_stride)


@register_model
def resnet18_split1(**kwargs) -> SplitNet:
    """ResNet18 as a SplitNet with one full-width branch (the unsplit network behind the split interface)."""
    return _resnet18_split(1, **kwargs)


@register_model
def resnet18_split2(**kwargs) -> SplitNet:
    """Two half-width ResNet18 branches (32/64/128/256 channels: Capella's split)."""
    return _resnet18_split(2, **kwargs)


@register_model
def resnet18_split3(**kwargs) -> SplitNet:
    """Three ResNet18 branches at a third of the width."""
    return _resnet18_split(3, **kwargs)


@register_model
def resnet18_split4(**kwargs) -> SplitNet:
    """Four quarter-width ResNet18 branches (16/32/64/128 channels)."""
    return _resnet18_split(4, **kwargs)


def _takes_split_arguments(factory):
    """The k-branch factories take ``_resnet18_split``'s arguments (less ``k``): say so in their signature."""
    params = list(inspect.signature(_resnet18_split).parameters.values())[1:]
    factory.__signature__ = inspect.Signature(params, return_annotation=SplitNet)
    return factory


for _factory in (resnet18_split1, resnet18_split2, resnet18_split3, resnet18_split4):
    _takes_split_arguments(_factory)
