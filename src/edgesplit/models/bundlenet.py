"""The co-design seed's bundle family (Hao, Zhang et al., bi-directional co-design for IoT, Table 2).

A bundle is DW-Conv3 + PW-Conv1 (each followed by BN and ReLU), optionally
followed by a 2x2 max-pool. DNN-A/B/C stack bundles with these output channels
(the seed's input is a 3x160x360 image for object detection; here a small
classification head replaces its bounding-box back-end and its final PW-Conv1(10)):

    A, B: 48 P, 96 P, 192 P, 384          (B = A with 16-bit feature maps)
    C:    48 P, 96 P, 192 P, 384, 512     (P: 2x2 max-pool after the bundle)

The seed's bit widths (A: W16/F8, B: W16/F16, C: W11/F8) are kept as
``default_bits`` for the hardware model; the PyTorch network is float.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from edgesplit.models.registry import register_model


@dataclass(frozen=True)
class BundleSpec:
    out_chs: int
    pool: bool


DNN_A = (BundleSpec(48, True), BundleSpec(96, True), BundleSpec(192, True), BundleSpec(384, False))
DNN_C = DNN_A + (BundleSpec(512, False),)
SEED_BITS = {"a": (16, 8), "b": (16, 16), "c": (11, 8)}  # (weight bits, feature-map bits), Table 2


class Bundle(nn.Module):
    """DW-Conv3 -> BN -> ReLU -> PW-Conv1 -> BN -> ReLU [-> 2x2 max-pool]."""

    def __init__(self, in_chs: int, out_chs: int, pool: bool):
        super().__init__()
        self.dw = nn.Conv2d(in_chs, in_chs, 3, 1, 1, groups=in_chs, bias=False)
        self.dw_bn = nn.BatchNorm2d(in_chs)
        self.dw_act = nn.ReLU(inplace=True)
        self.pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(out_chs)
        self.pw_act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2, 2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw_act(self.dw_bn(self.dw(x)))
        return self.pool(self.pw_act(self.pw_bn(self.pw(x))))


class BundleNet(nn.Module):
    def __init__(self, specs: Sequence[BundleSpec], num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.specs = tuple(specs)
        bundles, in_chs = [], in_chans
        for spec in self.specs:
            out = max(1, int(round(spec.out_chs * width_mult)))
            bundles.append(Bundle(in_chs, out, spec.pool))
            in_chs = out
        self.bundles = nn.Sequential(*bundles)
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.num_features = in_chs
        self.head = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_features)
        return self.global_pool(self.bundles(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def sequential_blocks(self) -> list[tuple[str, nn.Module]]:
        return [(f"bundle{i}", b) for i, b in enumerate(self.bundles)] + [("global_pool", self.global_pool), ("head", self.head)]


def _bundlenet(specs, variant: str, num_classes: int, in_chans: int, width_mult: float) -> BundleNet:
    model = BundleNet(specs, num_classes, in_chans, width_mult)
    model.default_bits = SEED_BITS[variant]
    return model


@register_model
def bundlenet_a(num_classes: int = 10, in_chans: int = 3, input_size: Sequence[int] = (160, 360), width_mult: float = 1.0) -> BundleNet:
    """The seed's DNN-A (W16/F8): 48P-96P-192P-384 DW+PW bundles."""
    return _bundlenet(DNN_A, "a", num_classes, in_chans, width_mult)


@register_model
def bundlenet_b(num_classes: int = 10, in_chans: int = 3, input_size: Sequence[int] = (160, 360), width_mult: float = 1.0) -> BundleNet:
    """The seed's DNN-B: DNN-A's layers at W16/F16."""
    return _bundlenet(DNN_A, "b", num_classes, in_chans, width_mult)


@register_model
def bundlenet_c(num_classes: int = 10, in_chans: int = 3, input_size: Sequence[int] = (160, 360), width_mult: float = 1.0) -> BundleNet:
    """The seed's DNN-C (W11/F8): 48P-96P-192P-384-512 DW+PW bundles."""
    return _bundlenet(DNN_C, "c", num_classes, in_chans, width_mult)
