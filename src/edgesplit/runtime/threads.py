"""Thread pools that busy-wait or multiply must stay small in runtime processes.

Measured here: OpenMP/BLAS threads spinning in one process doubled the latency of a
neighbouring worker. Workers and the coordinator run with one such thread; this must
happen before numpy (and its BLAS) is imported, so this module imports nothing heavy.
"""
import os

SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def limit_threads() -> None:
    """Apply :data:`SINGLE_THREAD_ENV` to this process (values the user set explicitly are kept)."""
    for key, value in SINGLE_THREAD_ENV.items():
        os.environ.setdefault(key, value)
