"""The co-design search space: a network as a handful of knobs, and moves along one knob at a time.

Pure and torch-free. A :class:`Candidate` is a stack of ``depth`` bundles of one
kind (``bundlenet``'s layer pool); bundle ``i`` has ``base_chs * growth**p`` output
channels, ``p`` the number of 2x2 max-pools before it (Zhang, Hao et al.'s co-design paper
pattern 48P-96P-192P-384 is base 48, growth 2). ``pools`` says after which bundles
the feature map is down-sampled, ``wbits``/``fbits`` are the fixed-point widths of
weights and feature maps, and ``resize`` scales the dataset's images before the
network sees them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

COORDINATES = ("depth", "base_chs", "growth", "pools", "wbits", "fbits", "resize")
CHANNEL_ALIGN = 4  # channel counts are rounded to a multiple of this (keeps tiles of 4/8/16 full)


@dataclass(frozen=True)
class SearchSpace:
    bundles: tuple[str, ...] = ("dw3-pw1", "conv3", "pw1-dw3-pw1", "conv3-res", "fire")
    depth: tuple[int, ...] = (2, 3, 4, 5, 6)
    base_chs: tuple[int, ...] = (8, 12, 16, 24, 32, 48, 64)
    growth: tuple[float, ...] = (1.0, 1.5, 2.0)
    bits: tuple[int, ...] = (4, 5, 6, 8, 10, 12, 16)
    resize: tuple[float, ...] = (1.0, 1.5, 2.0)
    max_pools: int = 3
    min_feature_px: int = 2  # the last feature map is at least this many pixels on a side

    def choices(self, coord: str) -> tuple:
        return self.bits if coord in ("wbits", "fbits") else getattr(self, coord)


@dataclass(frozen=True)
class Candidate:
    bundle: str
    depth: int = 3
    base_chs: int = 16
    growth: float = 2.0
    pools: tuple[bool, ...] = (True, True, False)
    wbits: int = 8
    fbits: int = 8
    resize: float = 1.0

    @property
    def channels(self) -> tuple[int, ...]:
        out, p = [], 0
        for pool in self.pools:
            out.append(max(CHANNEL_ALIGN, int(round(self.base_chs * self.growth**p / CHANNEL_ALIGN)) * CHANNEL_ALIGN))
            p += pool
        return tuple(out)

    @property
    def arch_key(self) -> str:
        """Everything training depends on (not the bit widths: those only change the quantized evaluation)."""
        pools = "".join("P" if p else "-" for p in self.pools)
        return f"{self.bundle}_c{self.base_chs}_g{self.growth:g}_{pools}_r{self.resize:g}"

    @property
    def key(self) -> str:
        return f"{self.arch_key}_w{self.wbits}f{self.fbits}"

    def input_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return tuple(int(round(s * self.resize)) for s in image_hw)

    def model_kwargs(self) -> dict:
        return {"bundle": self.bundle, "channels": list(self.channels), "pools": list(self.pools)}

    def to_dict(self) -> dict:
        return {
            "bundle": self.bundle,
            "depth": self.depth,
            "base_chs": self.base_chs,
            "growth": self.growth,
            "pools": list(self.pools),
            "wbits": self.wbits,
            "fbits": self.fbits,
            "resize": self.resize,
            "channels": list(self.channels),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Candidate":
        return cls(d["bundle"], d["depth"], d["base_chs"], d["growth"], tuple(d["pools"]), d["wbits"], d["fbits"], d["resize"])


def prototype(bundle: str) -> Candidate:
    """The bundle-selection prototype: the bundle repeated 3 times, 16-32-64 channels, W8/F8."""
    return Candidate(bundle)


def is_valid(c: Candidate, space: SearchSpace, image_hw: tuple[int, int]) -> bool:
    if len(c.pools) != c.depth or sum(c.pools) > space.max_pools:
        return False
    smallest = min(c.input_size(image_hw)) // 2 ** sum(c.pools)
    return smallest >= space.min_feature_px


def _pool_moves(pools: tuple[bool, ...], max_pools: int) -> list[tuple[bool, ...]]:
    """Down-sampling patterns one move away: shift a pool to a neighbouring bundle, add one, or drop one."""
    moves = []
    for i, p in enumerate(pools):
        if p:
            moves.append(pools[:i] + (False,) + pools[i + 1 :])  # drop
            for j in (i - 1, i + 1):
                if 0 <= j < len(pools) and not pools[j]:
                    q = list(pools)
                    q[i], q[j] = False, True
                    moves.append(tuple(q))
        elif sum(pools) < max_pools:
            moves.append(pools[:i] + (True,) + pools[i + 1 :])
    return moves


def neighbours(
    c: Candidate, coord: str, space: SearchSpace, image_hw: tuple[int, int], rng: np.random.Generator
) -> list[Candidate]:
    """At most two valid candidates one step away from ``c`` along ``coord`` (up and down, or two pool moves)."""
    if coord not in COORDINATES:
        raise ValueError(f"unknown coordinate {coord!r}")
    out = []
    if coord == "pools":
        moves = _pool_moves(c.pools, space.max_pools)
        for i in rng.permutation(len(moves))[:2]:
            out.append(replace(c, pools=moves[i]))
    elif coord == "depth":
        if c.depth + 1 in space.depth:
            out.append(replace(c, depth=c.depth + 1, pools=c.pools + (False,)))
        if c.depth - 1 in space.depth:
            pools = c.pools[:-1]
            if c.pools[-1] and False in pools:  # keep the dropped bundle's down-sampling
                last_free = max(i for i, p in enumerate(pools) if not p)
                pools = pools[:last_free] + (True,) + pools[last_free + 1 :]
            out.append(replace(c, depth=c.depth - 1, pools=pools))
    else:
        choices = space.choices(coord)
        value = getattr(c, coord)
        i = choices.index(value) if value in choices else int(np.argmin([abs(v - value) for v in choices]))
        for j in (i + 1, i - 1):
            if 0 <= j < len(choices):
                out.append(replace(c, **{coord: choices[j]}))
    return [n for n in out if is_valid(n, space, image_hw)]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (higher is better on both)."""
    front = []
    for i, (a, b) in enumerate(points):
        if not any((a2 >= a and b2 >= b) and (a2 > a or b2 > b) for a2, b2 in points):
            front.append(i)
    return front
