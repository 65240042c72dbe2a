"""Latency statistics: medians and percentiles of a list of milliseconds."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def latency_summary(latencies_ms: Sequence[float]) -> dict:
    a = np.asarray(latencies_ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size),
        "mean_ms": float(a.mean()),
        "std_ms": float(a.std()),
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }
