"""KServe v2 messages over a Unix socket: the fast path between a coordinator and workers on the same machine.

Why: on the project's 2-core VM a Python gRPC call over loopback costs about 1 ms more
transport per branch than this, and 1 ms more coordinator CPU per request
(docs/benchmarks.md), CPU taken from the workers. The local cluster (the embedded default)
therefore also serves each worker on a Unix socket and the coordinator uses it; remote
devices and stock KServe v2 clients keep using gRPC, which every worker still serves.

The messages are the protocol's own ``ModelInferRequest`` / ``ModelInferResponse``
(only the framing differs), so a request is validated and answered by exactly the code
that answers gRPC calls (``transport/calls.py``). A frame is a header
``<body bytes: u32><kind: u8><call id: u64>`` and a body:

    INFER    -> RESULT | FAILED    body: ModelInferRequest -> ModelInferResponse | b"STATUS\\nmessage"
    READY    -> READY_ANSWER       body: model name -> b"\\x01", or b"\\x00" (then, for a model the server does not
                                   have, the server's message saying which it has)
    CANCEL                         the call id's handler is cancelled (the caller stopped waiting)
    REGISTER -> REGISTERED | FAILED  body: b"name\\npath\\nbyte_size": map a shared-memory region for this
                                   connection's requests (``runtime/shm.py``: the input broadcast)

A frame over twice the message limit is answered RESOURCE_EXHAUSTED and skipped unread.

Calls are multiplexed on one connection (many in flight, answered in any order).
Addresses are written ``ipc:///absolute/path.sock``. The socket file is created
mode 0600: only the user who started the worker can connect.

This file holds what both ends share (addresses, framing); the worker's end is
``ipc_server.py``, the coordinator's ``ipc_peer.py``.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from edgesplit.errors import EdgesplitError

SCHEME = "ipc://"
HEADER = struct.Struct("<IBQ")  # body bytes, kind, call id
INFER, READY, CANCEL, RESULT, FAILED, READY_ANSWER, REGISTER, REGISTERED = 1, 2, 3, 4, 5, 6, 7, 8


def socket_path(address: str) -> str:
    if not address.startswith(SCHEME) or not address[len(SCHEME) :].startswith("/"):
        raise EdgesplitError(f"bad Unix socket address {address!r}; write ipc:///absolute/path.sock")
    return address[len(SCHEME) :]


def _frame(kind: int, call_id: int, body: bytes) -> bytes:
    return HEADER.pack(len(body), kind, call_id) + body


class FrameReader:
    """Cuts a byte stream into frames as it arrives. A frame whose body is over ``limit`` bytes is reported with
    body ``None`` and its bytes are dropped as they come, never held."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized frame still to drop

    def feed(self, data: bytes) -> list[tuple[int, int, int, bytes | None]]:
        """The frames completed by ``data``, as (kind, call id, body size in bytes, body or None)."""
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        buf = self._buf
        buf += data
        frames, offset, end = [], 0, len(buf)
        with memoryview(buf) as view:
            while end - offset >= HEADER.size:
                size, kind, call_id = HEADER.unpack_from(view, offset)
                if self.limit is not None and size > self.limit:
                    frames.append((kind, call_id, size, None))
                    dropped = min(size, end - offset - HEADER.size)
                    self._skip = size - dropped
                    offset += HEADER.size + dropped
                    continue
                if end - offset - HEADER.size < size:
                    break
                frames.append((kind, call_id, size, bytes(view[offset + HEADER.size : offset + HEADER.size + size])))
                offset += HEADER.size + size
        del buf[:offset]
        return frames


def _accepting(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
