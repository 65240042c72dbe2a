"""The bundle family of Zhang, Hao et al., "A Bi-Directional Co-Design Approach to Enable Deep Learning on IoT Devices" (2019), Table 2.

A bundle is DW-Conv3 + PW-Conv1 (each followed by BN and ReLU), optionally
followed by a 2x2 max-pool. DNN-A/B/C stack bundles with these output channels
(the paper's input is a 3x160x360 image for object detection; here a small
classification head replaces its bounding-box back-end and its final PW-Conv1(10)):

    A, B: 48 P, 96 P, 192 P, 384          (B = A with 16-bit feature maps)
    C:    48 P, 96 P, 192 P, 384, 512     (P: 2x2 max-pool after the bundle)

The paper's bit widths (A: W16/F8, B: W16/F16, C: W11/F8) are kept as
``default_bits`` for the hardware model; the PyTorch network is float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from edgesplit.models.registry import register_model
from edgesplit.models.splitnet import SplitNet, branch_shares, split_widths


@dataclass(frozen=True)
class BundleSpec:
    out_chs: int
    pool: bool


DNN_A = (BundleSpec(48, True), BundleSpec(96, True), BundleSpec(192, True), BundleSpec(384, False))
DNN_C = DNN_A + (BundleSpec(512, False),)
TABLE2_BITS = {"a": (16, 8), "b": (16, 16), "c": (11, 8)}  # (weight bits, feature-map bits), Table 2


class Bundle(nn.Module):
    """DW-Conv3 -> BN -> ReLU -> PW-Conv1 -> BN -> ReLU [-> 2x2 max-pool] (the paper's bundle, ``dw3-pw1``)."""

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


def _conv_bn_relu(in_chs: int, out_chs: int, kernel: int, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(in_chs, out_chs, kernel, 1, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out_chs)]
    return layers + ([nn.ReLU(inplace=True)] if act else [])


class ConvBundle(nn.Module):
    """Conv3 -> BN -> ReLU [-> 2x2 max-pool] (``conv3``; VGG-like)."""

    def __init__(self, in_chs: int, out_chs: int, pool: bool):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_relu(in_chs, out_chs, 3))
        self.pool = nn.MaxPool2d(2, 2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x))


class InvertedBundle(nn.Module):
    """PW-Conv1 (expand x2) -> DW-Conv3 -> PW-Conv1 (project), BN and ReLU after each [-> pool] (``pw1-dw3-pw1``)."""

    def __init__(self, in_chs: int, out_chs: int, pool: bool, expand: int = 2):
        super().__init__()
        mid = in_chs * expand
        self.body = nn.Sequential(
            *_conv_bn_relu(in_chs, mid, 1), *_conv_bn_relu(mid, mid, 3, groups=mid), *_conv_bn_relu(mid, out_chs, 1)
        )
        self.pool = nn.MaxPool2d(2, 2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x))


class ResBundle(nn.Module):
    """Conv3-BN-ReLU-Conv3-BN plus the input (a 1x1 conv when the width changes), then ReLU [-> pool] (``conv3-res``)."""

    def __init__(self, in_chs: int, out_chs: int, pool: bool):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_relu(in_chs, out_chs, 3), *_conv_bn_relu(out_chs, out_chs, 3, act=False))
        self.shortcut = nn.Sequential(*_conv_bn_relu(in_chs, out_chs, 1, act=False)) if in_chs != out_chs else nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2, 2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.body(x) + self.shortcut(x)))


class FireBundle(nn.Module):
    """A SqueezeNet Fire module with batch norm: squeeze to out/8, expand 1x1 and 3x3 to out/2 each [-> pool] (``fire``).

    Batch norm after each conv (SqueezeNet v1.1 has none) so that every bundle of the
    pool trains with the same recipe; it folds into the conv weights on the accelerator.
    """

    def __init__(self, in_chs: int, out_chs: int, pool: bool):
        super().__init__()
        squeeze, e1 = max(1, out_chs // 8), max(1, out_chs // 2)
        self.squeeze = nn.Sequential(*_conv_bn_relu(in_chs, squeeze, 1))
        self.expand1x1 = nn.Sequential(*_conv_bn_relu(squeeze, e1, 1))
        self.expand3x3 = nn.Sequential(*_conv_bn_relu(squeeze, max(1, out_chs - e1), 3))
        self.pool = nn.MaxPool2d(2, 2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return self.pool(torch.cat([self.expand1x1(x), self.expand3x3(x)], 1))


# The layer pool of the co-design search: bundle name -> module class (in_chs, out_chs, pool).
BUNDLES = {"dw3-pw1": Bundle, "conv3": ConvBundle, "pw1-dw3-pw1": InvertedBundle, "conv3-res": ResBundle, "fire": FireBundle}


class BundleNet(nn.Module):
    """Bundles of one kind stacked with the given output channels, global average pooling, a linear head."""

    def __init__(
        self,
        specs: Sequence[BundleSpec],
        num_classes: int = 10,
        in_chans: int = 3,
        width_mult: float = 1.0,
        bundle: str = "dw3-pw1",
    ):
        super().__init__()
        if bundle not in BUNDLES:
            raise ValueError(f"unknown bundle {bundle!r}; choose one of {', '.join(BUNDLES)}")
        self.num_classes = num_classes
        self.specs = tuple(specs)
        bundles, in_chs = [], in_chans
        for spec in self.specs:
            out = max(1, int(round(spec.out_chs * width_mult)))
            bundles.append(BUNDLES[bundle](in_chs, out, spec.pool))
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


def bundle_specs(channels: Sequence[int], pools: Sequence[bool]) -> tuple[BundleSpec, ...]:
    if len(channels) != len(pools) or not channels:
        raise ValueError(f"need one pool flag per bundle, got {len(channels)} channel counts and {len(pools)} flags")
    return tuple(BundleSpec(int(c), bool(p)) for c, p in zip(channels, pools))


def _bundlenet(specs, variant: str, num_classes: int, in_chans: int, width_mult: float) -> BundleNet:
    model = BundleNet(specs, num_classes, in_chans, width_mult)
    model.default_bits = TABLE2_BITS[variant]
    return model


@register_model
def bundlenet_a(
    num_classes: int = 10, in_chans: int = 3, input_size: Sequence[int] = (160, 360), width_mult: float = 1.0
) -> BundleNet:
    """The co-design paper's DNN-A (W16/F8): 48P-96P-192P-384 DW+PW bundles."""
    return _bundlenet(DNN_A, "a", num_classes, in_chans, width_mult)


@register_model
def bundlenet_b(
    num_classes: int = 10, in_chans: int = 3, input_size: Sequence[int] = (160, 360), width_mult: float = 1.0
) -> BundleNet:
    """The co-design paper's DNN-B: DNN-A's layers at W16/F16."""
    return _bundlenet(DNN_A, "b", num_classes, in_chans, width_mult)


@register_model
def bundlenet_c(
    num_classes: int = 10, in_chans: int = 3, input_size: Sequence[int] = (160, 360), width_mult: float = 1.0
) -> BundleNet:
    """The co-design paper's DNN-C (W11/F8): 48P-96P-192P-384-512 DW+PW bundles."""
    return _bundlenet(DNN_C, "c", num_classes, in_chans, width_mult)


@register_model
def bundlenet(
    num_classes: int = 10,
    in_chans: int = 3,
    input_size: Sequence[int] = (28, 28),
    bundle: str = "dw3-pw1",
    channels: Sequence[int] = (48, 96, 192, 384),
    pools: Sequence[bool] = (True, True, True, False),
    width_mult: float = 1.0,
) -> BundleNet:
    """Any stack of one bundle kind (see ``BUNDLES``): what `edgesplit codesign` searches over."""
    return BundleNet(bundle_specs(channels, pools), num_classes, in_chans, width_mult, bundle)


@register_model
def bundlenet_split(
    num_classes: int = 10,
    in_chans: int = 3,
    input_size: Sequence[int] = (28, 28),
    bundle: str = "dw3-pw1",
    channels: Sequence[int] = (48, 96, 192, 384),
    pools: Sequence[bool] = (True, True, True, False),
    width_mult: float = 1.0,
    k: int = 2,
    branch_widths: Sequence[float] | None = None,
    head_hidden: int = 0,
    drop_rate: float = 0.0,
) -> SplitNet:
    """``bundlenet`` as k branches whose channels add up to the unsplit widths (unequal with ``branch_widths``)."""
    specs = bundle_specs(channels, pools)
    branches = []
    for share in branch_shares(k, branch_widths):
        branch_specs = [BundleSpec(split_widths(s.out_chs, k, width_mult, share), s.pool) for s in specs]
        branches.append(BundleNet(branch_specs, 0, in_chans, 1.0, bundle))
    return SplitNet(branches, [b.num_features for b in branches], num_classes, head_hidden, drop_rate, unsplit_name="bundlenet")
