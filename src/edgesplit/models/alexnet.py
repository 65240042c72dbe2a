"""AlexNet (Krizhevsky et al., 2012; the one-tower torchvision layout) with its large FC layers.

The model of the edge-collaboration slides' straggler and coded-computing experiments: 58.6 M of its
61.1 M parameters sit in three fully connected layers (9216 -> 4096 -> 4096 -> C),
whose rows can be spread over devices with parity blocks (see the coding module).

``forward_features`` returns the flattened 256x6x6 = 9216 vector; ``forward_head``
is the FC classifier. ``small`` stem (28-32 px): a 3x3/1 conv instead of 11x11/4;
the adaptive pool still feeds 9216 values to the classifier.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from edgesplit.models.registry import register_model
from edgesplit.models.resnet import pick_stem

ALEXNET_FC_WIDTH = 4096


class AlexNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        drop_rate: float = 0.5,
        fc_width: int = ALEXNET_FC_WIDTH,
    ):
        super().__init__()
        self.num_classes = num_classes
        first = nn.Conv2d(in_chans, 64, 11, 4, 2) if stem == "imagenet" else nn.Conv2d(in_chans, 64, 3, 1, 1)
        self.features = nn.Sequential(
            first,
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.Sequential(nn.AdaptiveAvgPool2d(6), nn.Flatten(1))
        self.num_features = 256 * 6 * 6
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(self.num_features, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(inplace=True),
            nn.Linear(fc_width, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 9216)
        return self.avgpool(self.features(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def sequential_blocks(self) -> list[tuple[str, nn.Module]]:
        feats = list(self.features)
        blocks, i = [], 0
        while i < len(feats):  # each conv cuts together with the ReLU (and pool) after it
            j = i + 1
            while j < len(feats) and not isinstance(feats[j], nn.Conv2d):
                j += 1
            blocks.append((f"features.{i}-{j - 1}", nn.Sequential(*feats[i:j])))
            i = j
        cls = list(self.classifier)
        return blocks + [
            ("avgpool", self.avgpool),
            ("fc6", nn.Sequential(*cls[0:3])),
            ("fc7", nn.Sequential(*cls[3:6])),
            ("fc8", cls[6]),
        ]


@register_model
def alexnet(
    num_classes: int = 1000, in_chans: int = 3, input_size: Sequence[int] = (224, 224), stem: str | None = None
) -> AlexNet:
    """AlexNet: 61.10 M parameters, 0.71 GMACs at 3x224x224 with 1000 classes."""
    return AlexNet(num_classes, in_chans, pick_stem(input_size, stem))
