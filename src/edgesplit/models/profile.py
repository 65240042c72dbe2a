"""Per-layer cost of a model, and the bytes that cross the network when it is distributed.

``profile_model`` runs one sample through the model with forward hooks on the leaf
layers and returns, per layer: parameters, MACs (multiply-accumulates), and the bytes
of its output activation. Only layers that compute are counted as MACs (Conv2d,
Linear); BN, activations and pools are listed with 0 MACs.

``communication`` compares the two ways to spread one inference over k devices:
(a) a split network: the input goes to every branch (k transfers in parallel) and
each branch sends back its feature vector; (b) a layer-wise (pipeline) partition of
the unsplit model into k contiguous groups of blocks balanced by MACs: the input
goes to device 1, each cut's activation to the next device, one after another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn as nn

from edgesplit.models import SplitNet

FLOAT32_BYTES = 4


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    params: int
    macs: int  # per sample
    out_shape: tuple[int, ...]  # per sample, without the batch dimension
    out_bytes: int  # float32 activation bytes per sample


@dataclass
class ModelProfile:
    model: str
    input_shape: tuple[int, ...]  # (C, H, W)
    layers: list[LayerCost]
    params: int
    macs: int
    branches: list[dict] = field(default_factory=list)  # per-branch totals for split models

    def to_dict(self) -> dict:
        return asdict(self)


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out[0].numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out[0].numel() * module.in_features
    return 0


def _leaf_costs(model: nn.Module, x: torch.Tensor, prefix: str = "") -> list[LayerCost]:
    costs: list[LayerCost] = []
    hooks = []
    for name, mod in model.named_modules():
        if list(mod.children()) or isinstance(mod, nn.Identity):
            continue

        def hook(m, _inp, out, name=name):
            params = sum(p.numel() for p in m.parameters(recurse=False))
            costs.append(
                LayerCost(
                    prefix + name, type(m).__name__, params, _macs(m, out), tuple(out.shape[1:]), out[0].numel() * FLOAT32_BYTES
                )
            )

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return costs


def profile_model(model: nn.Module, input_shape: Sequence[int], name: str = "") -> ModelProfile:
    """Per-layer and total parameters and MACs for one sample of ``input_shape`` (C, H, W)."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_shape)
    try:
        layers = _leaf_costs(model, x)
        branches = []
        if isinstance(model, SplitNet):
            for i, branch in enumerate(model.branches):
                b_layers = [c for c in layers if c.name.startswith(f"branches.{i}.")]
                branches.append(
                    {
                        "name": f"branch{i}",
                        "params": sum(p.numel() for p in branch.parameters()),
                        "macs": sum(c.macs for c in b_layers),
                        "feature_dim": model.feature_dims[i],
                    }
                )
            branches.append(
                {
                    "name": "head",
                    "params": sum(p.numel() for p in model.head.parameters()),
                    "macs": sum(c.macs for c in layers if c.name.startswith("head.")),
                    "feature_dim": model.num_classes,
                }
            )
    finally:
        model.train(was_training)
    return ModelProfile(
        name or getattr(model, "model_name", type(model).__name__),
        tuple(input_shape),
        layers,
        sum(p.numel() for p in model.parameters()),
        sum(c.macs for c in layers),
        branches,
    )


@dataclass(frozen=True)
class BlockCost:
    name: str
    macs: int
    out_bytes: int  # float32 bytes of this block's output, per sample


def block_costs(model: nn.Module, input_shape: Sequence[int]) -> list[BlockCost]:
    """MACs and output bytes of each of ``model.sequential_blocks()``, run in order."""
    model.eval()
    x = torch.zeros(1, *input_shape)
    out = []
    with torch.no_grad():
        for name, block in model.sequential_blocks():
            macs = sum(c.macs for c in _leaf_costs(block, x))
            x = block(x)
            out.append(BlockCost(name, macs, x[0].numel() * FLOAT32_BYTES))
    return out


def balanced_partition(macs: Sequence[int], k: int, speeds: Sequence[float] | None = None) -> list[int]:
    """Cut indices (exclusive ends of the first k-1 groups) minimising the largest group's MACs, or with ``speeds``
    (one per group, in order) the largest group's MACs over its device's speed.

    Exact dynamic programme over contiguous partitions; O(k n^2), n = number of blocks.
    """
    n = len(macs)
    k = min(k, n)
    prefix = [0]
    for m in macs:
        prefix.append(prefix[-1] + m)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(k + 1)]  # best[g][i]: first i blocks in g groups
    choice = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for g in range(1, k + 1):
        for i in range(g, n + 1):
            for j in range(g - 1, i):
                cost = max(best[g - 1][j], (prefix[i] - prefix[j]) / (speeds[g - 1] if speeds else 1))
                if cost < best[g][i]:
                    best[g][i], choice[g][i] = cost, j
    cuts, i = [], n
    for g in range(k, 0, -1):
        i = choice[g][i]
        cuts.append(i)
    return sorted(cuts)[1:]  # drop the leading 0


def communication(
    split_model: SplitNet, unsplit_model: nn.Module, input_shape: Sequence[int], input_bytes_per_value: int = FLOAT32_BYTES
) -> dict:
    """Bytes and transfers per inference: split network versus a layer-wise partition over the same k devices."""
    k = split_model.num_branches
    input_bytes = int(torch.Size(input_shape).numel()) * input_bytes_per_value
    feature_bytes = [d * FLOAT32_BYTES for d in split_model.feature_dims]
    split = {
        "devices": k,
        "input_broadcast_bytes": input_bytes * k,
        "features_back_bytes": sum(feature_bytes),
        "total_bytes": input_bytes * k + sum(feature_bytes),
        "transfers": 2 * k,
        "sequential_transfers": 2,  # broadcast out, features back: each k-way parallel
    }
    blocks = block_costs(unsplit_model, input_shape)
    cuts = balanced_partition([b.macs for b in blocks], k)
    cut_bytes = [blocks[c - 1].out_bytes for c in cuts]
    logits_bytes = blocks[-1].out_bytes
    groups = [0] + cuts + [len(blocks)]
    layerwise = {
        "devices": k,
        "cuts_after": [blocks[c - 1].name for c in cuts],
        "cut_activation_bytes": cut_bytes,
        "group_macs": [sum(b.macs for b in blocks[a:b]) for a, b in zip(groups, groups[1:])],
        "input_bytes": input_bytes,
        "result_back_bytes": logits_bytes,
        "total_bytes": input_bytes + sum(cut_bytes) + logits_bytes,
        "transfers": len(cuts) + 2,
        "sequential_transfers": len(cuts) + 2,  # a pipeline: every hop waits for the one before
    }
    return {
        "input_shape": list(input_shape),
        "input_bytes_per_value": input_bytes_per_value,
        "split": split,
        "layerwise": layerwise,
    }


def text_report(name: str, shape: tuple[int, ...], prof, comm: dict | None) -> str:
    """What ``edgesplit profile`` prints: per layer, per part, and (a split model) the bytes each way of distributing
    it sends."""
    lines = []
    lines.append(f"{name} at {'x'.join(map(str, shape))}: {prof.params / 1e6:.3f} M parameters, {prof.macs / 1e6:.1f} M MACs")
    lines.append(f"{'layer':<40}{'kind':<18}{'params':>10}{'MMACs':>10}{'act KiB':>10}  out shape")
    for c in prof.layers:
        lines.append(
            f"{c.name:<40}{c.kind:<18}{c.params:>10}{c.macs / 1e6:>10.2f}{c.out_bytes / 1024:>10.1f}  {'x'.join(map(str, c.out_shape))}"
        )
    if prof.branches:
        lines.append("\nper part:")
        for b in prof.branches:
            lines.append(
                f"  {b['name']:<10} params {b['params'] / 1e6:8.3f} M   MACs {b['macs'] / 1e6:9.1f} M   output {b['feature_dim']} floats"
            )
    if comm:
        lines.append(
            f"\nbytes over the network per inference, {comm['devices']} devices "
            f"(layer-wise: {comm['unsplit_model']} cut into balanced contiguous groups):"
        )
        for enc in ("float32", "uint8"):
            s, lw = comm[enc]["split"], comm[enc]["layerwise"]
            lines.append(f"  input as {enc}:")
            lines.append(
                f"    split network   {s['total_bytes'] / 1024:10.1f} KiB  ({s['transfers']} transfers, "
                f"{s['sequential_transfers']} on the critical path: broadcast {s['input_broadcast_bytes'] / 1024:.1f} KiB, "
                f"features back {s['features_back_bytes'] / 1024:.1f} KiB)"
            )
            lines.append(
                f"    layer-wise      {lw['total_bytes'] / 1024:10.1f} KiB  ({lw['transfers']} transfers, all sequential: "
                f"input {lw['input_bytes'] / 1024:.1f} KiB, cuts after {', '.join(lw['cuts_after'])} "
                f"{'+'.join(f'{b / 1024:.1f}' for b in lw['cut_activation_bytes'])} KiB float32)"
            )
    return "\n".join(lines)
