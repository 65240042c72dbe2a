"""Shared memory for the input broadcast to workers on the same machine.

A split model sends the same image to every branch. Over Unix sockets that is one
serialisation and one kernel copy per branch, in the coordinator, before the last
branch can start (docs/benchmarks.md). With an :class:`InputRing` the coordinator
writes the image once into a slot of a shared-memory file; each local worker gets a
small request that names the slot, in the parameters of Triton's system shared-memory
extension to KServe v2 (``shared_memory_region``, ``shared_memory_offset``,
``shared_memory_byte_size``), and reads the pixels from its read-only mapping.

Slots are handed out per stage and taken back when the stage is over: every call that
reads a slot has answered, failed or been cancelled (a cancelled worker may still read
a reused slot, but its answer is never used). Inputs larger than a slot, or arriving
when every slot is taken, are sent inline as before. The ring's file lives in
``/dev/shm``, mode 0600, and is removed by :meth:`InputRing.close`; rings left by a
process that died are removed by the next ring created.
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
PREFIX = "edgesplit-"
SUFFIX = ".ring"
SLOT_ALIGN = 4096
DEFAULT_SLOTS = 32  # more requests in flight than this send their inputs inline
MIN_SHARED_BYTES = 64 << 10  # smaller inputs are cheaper inline than a slot and a registration


@dataclass(frozen=True)
class SharedRegion:
    name: str  # the region name workers know it by
    path: str  # the file workers map
    byte_size: int


@dataclass(frozen=True)
class SharedTensor:
    """An input written into a ring slot. Peers that can map the ring send the reference;
    any other peer sends ``array`` inline."""

    array: np.ndarray
    region: SharedRegion
    offset: int


def plain(inputs: dict) -> dict[str, np.ndarray]:
    """The inputs as arrays, for peers that cannot use shared memory."""
    return {k: v.array if isinstance(v, SharedTensor) else v for k, v in inputs.items()}


def available() -> bool:
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


class InputRing:
    """Slots of one size in a shared-memory file, sized by the first input put in it."""

    def __init__(self, slots: int = DEFAULT_SLOTS, min_bytes: int = MIN_SHARED_BYTES):
        self.slots, self.min_bytes = slots, min_bytes
        self.region: SharedRegion | None = None
        self._map: mmap.mmap | None = None
        self._free: list[int] = []
        self._slot_bytes = 0
        self._closed = False

    def put(self, array: np.ndarray) -> SharedTensor | None:
        """``array`` copied into a free slot, or None (too small, too large for a slot, all taken, closed)."""
        if self._closed or array.nbytes < self.min_bytes:
            return None
        if self._map is None:
            self._create(array.nbytes)
        if array.nbytes > self._slot_bytes or not self._free:
            return None
        slot = self._free.pop()
        offset = slot * self._slot_bytes
        view = np.frombuffer(self._map, np.uint8, array.nbytes, offset)
        view[:] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        return SharedTensor(array, self.region, offset)

    def release(self, ref: SharedTensor) -> None:
        if not self._closed:
            self._free.append(ref.offset // self._slot_bytes)

    @property
    def free_slots(self) -> int:
        return len(self._free) if self._map is not None else self.slots

    def _create(self, nbytes: int) -> None:
        _remove_stale_rings()
        self._slot_bytes = -(-nbytes // SLOT_ALIGN) * SLOT_ALIGN
        size = self._slot_bytes * self.slots
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        path = SHM_DIR / f"{name}{SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.region = SharedRegion(name, str(path), size)
        self._free = list(range(self.slots - 1, -1, -1))
        log.debug("input ring %s: %d slots of %d bytes", path, self.slots, self._slot_bytes)

    def close(self) -> None:
        self._closed = True
        if self.region is not None:
            Path(self.region.path).unlink(missing_ok=True)
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still alive somewhere; the mapping goes with it
                pass
            self._map = None


def _remove_stale_rings() -> None:
    """Remove ring files whose creating process is gone (it was killed before it could close them)."""
    for path in SHM_DIR.glob(f"{PREFIX}*{SUFFIX}"):
        try:
            pid = int(path.name[len(PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists() and path.stat().st_uid == os.getuid():
            path.unlink(missing_ok=True)


class RegionMap:
    """A worker's read-only mappings of the regions its callers registered, by name."""

    def __init__(self):
        self._maps: dict[str, tuple[mmap.mmap, int]] = {}  # name -> (mapping, the file's descriptor)

    def register(self, name: str, path: str, byte_size: int) -> None:
        """Map ``path`` read-only, or :class:`ValueError` saying why not. Only regular ring files of the worker's own
        user are mapped: the caller names the file, so nothing else may be read through a region (a FIFO would
        block the worker in open(); O_NONBLOCK makes that open return at once, and the type check refuses it)."""
        p = Path(path)
        if p.parent != SHM_DIR or not p.name.startswith(PREFIX) or not p.name.endswith(SUFFIX):
            raise ValueError(f"shared memory region {name[:64]!r}: {path[:200]} is not an edgesplit ring in {SHM_DIR}")
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"shared memory region {name[:64]!r}: {path} is not a regular file")
            if st.st_uid != os.getuid():
                raise ValueError(f"shared memory region {name[:64]!r}: {path} belongs to another user")
            if st.st_size < byte_size or byte_size <= 0:
                raise ValueError(f"shared memory region {name[:64]!r}: {path} has {st.st_size} bytes, not {byte_size}")
            mapping = mmap.mmap(fd, byte_size, prot=mmap.PROT_READ)
        except BaseException:
            os.close(fd)
            raise
        old = self._maps.pop(name, None)
        if old is not None:
            _close_mapping(*old)
        self._maps[name] = (mapping, fd)

    def get(self, name: str) -> memoryview | None:
        """The region's bytes, or None if it is not registered. :class:`ValueError` if its file is now shorter than
        its mapping: reading past a file's end through a mapping kills the process (SIGBUS). The file is checked
        on every use; a truncation between the check and the read still needs a process of the worker's own user
        (the socket and the ring are theirs alone)."""
        entry = self._maps.get(name)
        if entry is None:
            return None
        mapping, fd = entry
        size = os.fstat(fd).st_size
        if size < len(mapping):
            raise ValueError(
                f"shared memory region {name[:64]!r} shrank to {size} bytes since it was registered "
                f"({len(mapping)}); register it again"
            )
        return memoryview(mapping)

    def check(self) -> None:
        """:class:`ValueError` if any region's file is now shorter than its mapping (as :meth:`get`)."""
        for name in self._maps:
            self.get(name)

    def close(self) -> None:
        for mapping, fd in self._maps.values():
            _close_mapping(mapping, fd)
        self._maps.clear()


def _close_mapping(mapping: mmap.mmap, fd: int) -> None:
    os.close(fd)
    try:
        mapping.close()
    except BufferError:  # an array of a request still in flight views it; it goes with that array
        pass
