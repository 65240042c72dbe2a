"""Process settings for runtime processes (workers, the coordinator): thread pools, the heap, and how the
coordinator's thread is scheduled beside workers on the same cores.

All were measured on the project's 2-core VM (docs/benchmarks.md):
* OpenMP/BLAS threads spinning in one process doubled the latency of a neighbouring
  worker. Workers and the coordinator run with one such thread; :func:`limit_threads`
  must run before numpy (and its BLAS) is imported, so this module imports nothing heavy.
* glibc returns every freed buffer over its mmap threshold (128 KiB at start) to the
  kernel, so each request's image, normalised copy and ONNX Runtime scratch are mapped
  afresh and page-faulted in. :func:`keep_heap` serves
  such buffers from the heap and keeps freed memory for the next request.
* A coordinator woken by an answer took the core from the worker computing there at once (Linux
  preempts on wakeup), in many short turns per request, each leaving that worker's caches cold.
  :func:`defer_to_workers` runs the coordinator's thread under ``SCHED_BATCH``: it still runs at
  once on an idle core, and keeps its fair share of a busy one, but waits for the running worker's
  time slice instead of cutting it, and then handles all the answers that arrived meanwhile.
"""

import ctypes
import logging
import os
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)

SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}

# mallopt(3) parameters and the values used: buffers up to 32 MiB come from the heap, and up to
# 64 MiB of freed memory stays with the process (a few requests' worth; a small board can afford it)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_MMAP_THRESHOLD_BYTES = 32 << 20
HEAP_TRIM_THRESHOLD_BYTES = 64 << 20


def limit_threads() -> None:
    """Apply :data:`SINGLE_THREAD_ENV` to this process (values the user set explicitly are kept)."""
    for key, value in SINGLE_THREAD_ENV.items():
        os.environ.setdefault(key, value)


def keep_heap() -> bool:
    """Tune glibc malloc as described above; False where the C library is not glibc (nothing changes)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD_BYTES) == 1
    if not ok:
        log.debug("mallopt refused the heap settings")
    return ok


def tune_runtime_process() -> None:
    """Both settings, for a process that serves or coordinates (call before numpy is imported)."""
    limit_threads()
    keep_heap()


def release_heap() -> bool:
    """Give the kernel back the freed memory glibc keeps (``malloc_trim``): after a burst of large requests, so
    that a worker's resident memory returns to its base. False where the C library is not glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def defer_to_workers() -> bool:
    """Schedule the calling thread under ``SCHED_BATCH`` (see above). For the thread that runs a coordinator's
    event loop next to local workers; ``Client`` and ``edgesplit serve`` do it for theirs. False where the OS
    has no such policy (nothing changes)."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None or not hasattr(os, "sched_setscheduler"):
        return False
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))  # 0: the calling thread (Linux schedules threads)
    except OSError as err:
        log.debug("cannot change the scheduling policy: %s", err)
        return False
    return True


@contextmanager
def deferring_to_workers() -> Iterator[bool]:
    """:func:`defer_to_workers` for the duration of a block; the thread's policy before it is restored."""
    before = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
    applied = defer_to_workers()
    try:
        yield applied
    finally:
        if applied and before is not None:
            os.sched_setscheduler(0, before, os.sched_param(0))
