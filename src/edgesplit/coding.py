"""Coded distributed computing for linear layers (Lee et al., "Speeding Up Distributed Machine Learning Using
Codes", 2018; coded FC layers as in the edge-collaboration slides, DAC'19). Pure numpy functions.

A Linear layer ``y = W x + b`` (W: out x in) is split by output rows into k equal
blocks (padded), one per data worker. r parity workers hold coded combinations
``P_j = sum_i G[j, i] [W_i | b_i]``. Because the layer is linear, worker i returns
``y_i = W_i x + b_i`` and parity j returns ``sum_i G[j, i] y_i``: any k of the k+r
answers determine every block. The activation is applied after decoding.

The code is systematic (the data blocks are themselves among the answers, so the
common case needs no arithmetic) and real-valued MDS: every k x k submatrix of the
generator ``[I_k; P]`` is invertible. r = 1 uses the plain sum (the slides' code). For
r >= 2 three constructions are built and the best conditioned over all erasure
patterns is kept (float32 decoding error grows with that condition number):

* Cauchy: ``P[j, i] = 1 / (x_j - y_i)``, nodes interleaved Chebyshev points; every
  minor is nonzero.
* Vandermonde on positive nodes ``P[j, i] = t_i ** j`` with ``0 < t_1 < ... < t_k``:
  totally positive, so every minor is positive.
* Gaussian: first row all ones, others drawn from seeded normals; the seed with the
  smallest worst-case condition is kept, and it is MDS because every k x k
  submatrix was checked and is invertible (it is the best conditioned at larger k and r:
  docs/results.md, "Conditioning of the codes").
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

MAX_CONDITION = 1e4  # a code whose worst k x k submatrix is worse than this is refused
GAUSSIAN_SEEDS = 200


@dataclass(frozen=True)
class SystematicCode:
    k: int
    r: int
    kind: str  # sum | cauchy | vandermonde | gaussian
    parity: np.ndarray = field(repr=False)  # (r, k) float64
    worst_condition: float

    @property
    def n(self) -> int:
        return self.k + self.r

    @property
    def generator(self) -> np.ndarray:  # (k + r, k)
        return np.vstack([np.eye(self.k), self.parity])

    def decode(self, answers: dict[int, np.ndarray]) -> np.ndarray:
        """Blocks ``(k, ...)`` from answers ``{index: block}`` (index < k: data, >= k: parity).

        All data blocks present: returned as they are (exact). Otherwise the blocks are
        solved from every available answer (least squares when more than k), in float64.
        """
        if len(answers) < self.k:
            raise ValueError(f"need {self.k} of {self.n} answers to decode, got {len(answers)}")
        if all(i in answers for i in range(self.k)):
            return np.stack([answers[i] for i in range(self.k)])
        idx = tuple(sorted(answers))
        decoder = _decoder(self.k, self.r, self.kind, idx, self.parity.tobytes())  # (k, |idx|)
        stacked = np.stack([answers[i] for i in idx]).astype(np.float64)  # (|idx|, ...)
        out = np.tensordot(decoder, stacked, axes=(1, 0))
        return out.astype(answers[idx[0]].dtype, copy=False)


@lru_cache(maxsize=4096)
def _decoder(k: int, r: int, kind: str, idx: tuple[int, ...], parity_bytes: bytes) -> np.ndarray:
    parity = np.frombuffer(parity_bytes, dtype=np.float64).reshape(r, k)
    gen = np.vstack([np.eye(k), parity])[list(idx)]
    return np.linalg.pinv(gen)


def worst_condition(parity: np.ndarray) -> float:
    """Largest condition number over every choice of k rows of ``[I_k; parity]``."""
    r, k = parity.shape
    gen = np.vstack([np.eye(k), parity])
    return max(float(np.linalg.cond(gen[list(rows)])) for rows in itertools.combinations(range(k + r), k))


def _cauchy(k: int, r: int) -> np.ndarray:
    pts = np.cos(np.pi * (np.arange(k + r) + 0.5) / (k + r))  # distinct Chebyshev points
    parity_at = set(np.round(np.linspace(0, k + r - 1, r + 2)[1:-1]).astype(int).tolist())
    x = pts[sorted(parity_at)]
    y = pts[[i for i in range(k + r) if i not in parity_at]]
    p = 1.0 / (x[:, None] - y[None, :])
    return p / np.abs(p).max(axis=1, keepdims=True)  # row scaling keeps MDS, evens magnitudes


def _vandermonde(k: int, r: int, low: float = 0.1) -> np.ndarray:
    t = low + (1 - low) * (np.cos(np.pi * (np.arange(k)[::-1] + 0.5) / k) + 1) / 2  # increasing, positive
    return np.stack([t**j for j in range(r)])


def _gaussian(k: int, r: int) -> np.ndarray:
    best, best_cond = None, np.inf
    for seed in range(GAUSSIAN_SEEDS):
        p = np.random.default_rng(seed).standard_normal((r, k))
        p[0] = 1.0  # the first parity is the slides' plain sum
        c = worst_condition(p)
        if c < best_cond:
            best, best_cond = p, c
    return best


CONSTRUCTIONS = {"cauchy": _cauchy, "vandermonde": _vandermonde, "gaussian": _gaussian}


@lru_cache(maxsize=64)
def make_code(k: int, r: int, kind: str = "auto") -> SystematicCode:
    """The (k + r, k) systematic code; ``kind`` auto picks the best conditioned construction."""
    if k < 1 or r < 0:
        raise ValueError(f"need k >= 1 and r >= 0, got k={k}, r={r}")
    if r == 0:
        return SystematicCode(k, 0, "none", np.zeros((0, k)), 1.0)
    if r == 1 and kind in ("auto", "sum"):
        p = np.ones((1, k))
        return SystematicCode(k, 1, "sum", p, worst_condition(p))
    kinds = list(CONSTRUCTIONS) if kind == "auto" else [kind]
    candidates = []
    for name in kinds:
        if name not in CONSTRUCTIONS:
            raise ValueError(f"unknown code kind {name!r}; use auto, sum, {', '.join(CONSTRUCTIONS)}")
        p = CONSTRUCTIONS[name](k, r)
        candidates.append((worst_condition(p), name, p))
    cond, name, p = min(candidates, key=lambda c: c[0])
    if not np.isfinite(cond) or cond > MAX_CONDITION:
        raise ValueError(f"no well-conditioned ({k}+{r}) code (worst condition {cond:.3g}); use fewer parity blocks")
    return SystematicCode(k, r, name, p, cond)


def split_linear(
    weight: np.ndarray, bias: np.ndarray | None, k: int, code: SystematicCode
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(W_i, b_i)`` for the k data blocks then the r parity blocks, each ``ceil(out/k)`` rows.

    Rows are padded with zeros to a multiple of k. Parity weights are computed in float64
    and stored in the weights' dtype.
    """
    out_features, in_features = weight.shape
    rows = -(-out_features // k)
    w = np.zeros((k * rows, in_features), dtype=np.float64)
    b = np.zeros(k * rows, dtype=np.float64)
    w[:out_features] = weight
    if bias is not None:
        b[:out_features] = bias
    wb = np.concatenate([w, b[:, None]], axis=1).reshape(k, rows, in_features + 1)  # [W_i | b_i]
    coded = np.concatenate([wb, np.tensordot(code.parity, wb, axes=(1, 0))])  # (k + r, rows, in + 1)
    return [(blk[:, :-1].astype(weight.dtype), blk[:, -1].astype(weight.dtype)) for blk in coded]


def merge_blocks(blocks: np.ndarray, out_features: int) -> np.ndarray:
    """Decoded blocks ``(k, B, rows)`` -> layer output ``(B, out_features)``, padding dropped."""
    k, batch, rows = blocks.shape
    return blocks.transpose(1, 0, 2).reshape(batch, k * rows)[:, :out_features]


def erasure_patterns(k: int, r: int) -> list[tuple[int, ...]]:
    """Every set of k answer indices out of k + r."""
    return list(itertools.combinations(range(k + r), k))


def recoverable(answered: Sequence[int], k: int) -> bool:
    return len(set(answered)) >= k
