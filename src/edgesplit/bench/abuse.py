"""``edgesplit bench abuse``: a worker under hostile and broken clients, beside good traffic, on loopback.

One real worker process (a random-weight branch of ``resnet18-split2`` at 1x28x28, as a
Fashion-MNIST branch) serves over gRPC and its Unix socket with ``ServerLimits`` from the
command line. Phases, each bounded in count and time:

* ``clean``: good requests (batch 1) over gRPC, one at a time: latency and correctness
  (against the same part run in this process).
* ``flood`` (``flood_s`` seconds at most), all at once, with the same good traffic and a
  health check every 50 ms beside them:
  - malformed ModelInfer bytes (random, truncated and byte-flipped valid messages),
  - requests between the message limit and twice it (answered by the handler), and over
    twice it (refused by gRPC),
  - valid requests at the message limit from several clients in a loop,
  - typed INT64 contents of a large tensor,
  - Unix socket: malformed frames, and a client that sends requests and never reads its answers,
  - held connections: idle TCP connections, connections that sent only the HTTP/2 preface,
    and streams stalled mid-message (gRPC), idle Unix socket connections.
* ``after``: once the idle timeout has passed, which held connections the worker closed, whether
  a new client gets in, and the worker's memory.

Reported: good requests answered and correct, their p99 against the clean phase; status codes of
every bad request; health-check latency during the flood; the worker's resident memory before,
at its peak (``VmHWM``) and after, against the in-flight cap; connections reclaimed.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from edgesplit.bench.config import AbuseBench
from edgesplit.bench.serve import _export_random, machine_info
from edgesplit.runtime.stats import latency_summary

PART = "branch0"
INPUT_SHAPE = (1, 28, 28)
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _good_request(rng, request_id: str):
    from edgesplit.runtime.transport import codec

    x = rng.integers(0, 256, (1, *INPUT_SHAPE), dtype=np.uint8)
    return x, codec.encode_request(PART, {"input": x}, request_id).SerializeToString()


def _mutants(valid: bytes, rng, n: int) -> list[bytes]:
    """``n`` malformed variants of a valid serialised request: random bytes, truncations, flipped bytes."""
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append(rng.bytes(int(rng.integers(1, 256))))
        elif kind == 1:
            out.append(valid[: int(rng.integers(1, len(valid)))])
        else:
            b = bytearray(valid)
            for at in rng.integers(0, len(b), int(rng.integers(1, 8))):
                b[at] = int(rng.integers(0, 256))
            out.append(bytes(b))
    return out


# HTTP/2 by hand, for clients that stop half-way (nothing else on the machine speaks it that badly)
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _hpack_literal(headers: list[tuple[str, str]]) -> bytes:
    out = bytearray()
    for name, value in headers:  # literal header field without indexing, new name; lengths under 127
        out += bytes([0, len(name)]) + name.encode() + bytes([len(value)]) + value.encode()
    return bytes(out)


def _stalled_stream(port: int) -> bytes:
    """A client's bytes up to a ModelInfer message it never finishes: preface, settings (and the ack of the
    server's), headers, and the first 10 bytes of a message that says it has 1,000."""
    headers = _hpack_literal(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", GRPC_METHOD),
            (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )
    return (
        _PREFACE
        + _h2_frame(4, 0, 0, b"")
        + _h2_frame(4, 1, 0, b"")
        + _h2_frame(1, 4, 1, headers)
        + _h2_frame(0, 0, 1, b"\x00" + struct.pack(">I", 1000) + b"\x0a\x07branch0"[:5])
    )


def _closed_by_peer(sock: socket.socket) -> bool:
    """True if the server closed ``sock`` (reads give EOF or an error; whatever it sent before is drained)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _hold_connections(port: int, unix_path: str, n: int) -> dict[str, list[socket.socket]]:
    held = {"idle_tcp": [], "preface_only": [], "stalled_stream": [], "idle_unix": []}
    for _ in range(n):
        held["idle_tcp"].append(socket.create_connection(("127.0.0.1", port)))
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(_PREFACE)
        held["preface_only"].append(s)
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(_stalled_stream(port))
        held["stalled_stream"].append(s)
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        u.connect(unix_path)
        held["idle_unix"].append(u)
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    u.connect(unix_path)
    held["never_reading"] = [u]
    return held


async def _grpc_call(channel, body: bytes, timeout_s: float = 10.0) -> tuple[str, bytes | None]:
    import grpc

    try:
        return "OK", await channel.unary_unary(GRPC_METHOD)(body, timeout=timeout_s)
    except grpc.aio.AioRpcError as err:
        return err.code().name, None


async def _good_loop(address: str, expected_of, rng, stop_at: float, max_requests: int) -> dict:
    import grpc

    from edgesplit.runtime.transport import codec
    from edgesplit.runtime.transport import kserve_v2_pb2 as pb

    lat, answered, correct, statuses = [], 0, 0, {}
    async with grpc.aio.insecure_channel(address) as channel:
        for i in range(max_requests):
            if time.monotonic() >= stop_at:
                break
            x, body = _good_request(rng, str(i))
            t0 = time.perf_counter()
            status, answer = await _grpc_call(channel, body)
            lat.append((time.perf_counter() - t0) * 1e3)
            statuses[status] = statuses.get(status, 0) + 1
            if answer is not None:
                answered += 1
                outputs, _ = codec.decode_response(pb.ModelInferResponse.FromString(answer))
                correct += bool(np.allclose(outputs["features"], expected_of(x), atol=1e-5))
    return {"sent": len(lat), "answered": answered, "correct": correct, "statuses": statuses, "latency": latency_summary(lat)}


async def _health_loop(address: str, stop_at: float) -> dict:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    lat, failed = [], 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                lat.append((time.perf_counter() - t0) * 1e3)
            except grpc.aio.AioRpcError:
                failed += 1
            await asyncio.sleep(0.05)
    return {"checks": len(lat) + failed, "failed": failed, "latency": latency_summary(lat)}


def _health_process(address: str, stop_at: float) -> dict:
    return asyncio.run(_health_loop(address, stop_at))  # time.monotonic() is the machine's clock: the same here


def _health_in_process(address: str, stop_at: float) -> dict:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_health_process, (address, stop_at))


async def _bad_grpc(address: str, bodies: list[bytes], concurrency: int, stop_at: float) -> dict:
    import grpc

    statuses: dict[str, int] = {}
    queue = list(bodies)

    async def one_client():
        async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 1 << 30)]) as channel:
            while queue and time.monotonic() < stop_at:
                status, _ = await _grpc_call(channel, queue.pop())
                statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return {"sent": sum(statuses.values()), "statuses": statuses}


async def _unix_malformed(path: str, valid: bytes, rng, n: int, stop_at: float) -> dict:
    """Malformed frames on one Unix socket connection, each answer read before the next."""
    from edgesplit.runtime.transport.ipc import FAILED, HEADER, INFER, _frame

    reader, writer = await asyncio.open_unix_connection(path)
    statuses: dict[str, int] = {}
    try:
        for i, body in enumerate(_mutants(valid, rng, n)):
            if time.monotonic() >= stop_at:
                break
            writer.write(_frame(INFER, i, body))
            await writer.drain()
            size, kind, _ = HEADER.unpack(await asyncio.wait_for(reader.readexactly(HEADER.size), 10))
            answer = await reader.readexactly(size)
            status = answer.split(b"\n", 1)[0].decode() if kind == FAILED else "OK"
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()
    return {"sent": sum(statuses.values()), "statuses": statuses}


async def _never_reading(sock: socket.socket, valid: bytes, stop_at: float) -> dict:
    """Send requests on ``sock`` and never read the answers, until the worker stops reading them (the socket stays
    unwritable for 2 s: back-pressure), closes the connection (its idle timeout ran out first), or time is up."""
    from edgesplit.runtime.transport.ipc import INFER, _frame

    sock.setblocking(False)
    sent, blocked_since = 0, None
    while time.monotonic() < stop_at and sent < 1_000_000:
        try:
            sock.sendall(_frame(INFER, sent, valid))
            sent, blocked_since = sent + 1, None
        except BlockingIOError:
            blocked_since = blocked_since or time.monotonic()
            if time.monotonic() - blocked_since > 2.0:
                return {"requests_written": sent, "worker_stopped_reading": True}
            await asyncio.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            return {"requests_written": sent, "worker_stopped_reading": True, "worker_closed": True}
    return {"requests_written": sent, "worker_stopped_reading": False}


def bench_abuse(cfg: AbuseBench) -> dict:
    flood_s, idle_timeout_s, max_inflight_mb = cfg.flood_s, cfg.idle_timeout_s, cfg.max_inflight_mb
    held_connections, seed = cfg.held_connections, cfg.seed
    from edgesplit.runtime.cluster import LocalCluster
    from edgesplit.runtime.transport import codec
    from edgesplit.runtime.transport.limits import ServerLimits
    from edgesplit.runtime.worker import WorkerConfig, load_parts

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="edgesplit-abuse-") as tmp:
        export = _export_random("resnet18-split2", INPUT_SHAPE, 10, Path(tmp) / "split")
        local = load_parts(WorkerConfig(str(export), part=PART))[0]

        def expected_of(x):
            return local.infer_now({"input": x}).outputs["features"]

        # connections are recycled after 3 idle timeouts, so that streams stalled mid-message end within the run
        age_s = 3 * idle_timeout_s
        args = [
            "--idle-timeout-s",
            str(idle_timeout_s),
            "--max-inflight-mb",
            str(max_inflight_mb),
            "--max-connection-age-s",
            str(age_s),
        ]
        with LocalCluster(export, parts=[PART], pin=False, extra_args={PART: args}) as cluster:
            w = cluster.workers[PART]
            pid, address, unix_path = w.proc.pid, w.address, str(w.unix_socket)
            port = int(address.rsplit(":", 1)[1])
            limit = ServerLimits().message_bytes([local])  # the worker's default message limit
            _, valid = _good_request(rng, "v")
            clean = asyncio.run(_good_loop(address, expected_of, rng, time.monotonic() + 30, 300))
            rss_before = _rss_mib(pid)

            # the largest valid request: max_batch float32 images, next to the message limit
            at_limit = codec.encode_request(
                PART, {"input": rng.random((ServerLimits().max_batch, *INPUT_SHAPE), np.float32)}
            ).SerializeToString()
            between = codec.encode_request(
                PART, {"input": np.zeros((3 * limit // 2 // 784, *INPUT_SHAPE), np.uint8)}
            ).SerializeToString()
            over = codec.encode_request(PART, {"input": np.zeros((4 * limit // 784, *INPUT_SHAPE), np.uint8)}).SerializeToString()
            from edgesplit.runtime.transport import kserve_v2_pb2 as pb

            typed = pb.ModelInferRequest(model_name=PART)
            t = typed.inputs.add(name="input", datatype="INT64", shape=[1, 1, 512, 512])
            t.contents.int64_contents.extend([1] * (512 * 512))
            typed = typed.SerializeToString()

            held, held_at = _hold_connections(port, unix_path, held_connections), time.monotonic()
            rss_peak_sampled = [rss_before]

            async def flood():
                stop_at = time.monotonic() + flood_s

                async def sample():
                    while time.monotonic() < stop_at:
                        rss_peak_sampled.append(_rss_mib(pid))
                        await asyncio.sleep(0.05)

                results = await asyncio.gather(
                    _good_loop(address, expected_of, rng, stop_at, 100_000),
                    # in a process of its own: the flood clients here must not delay the health checks' timing
                    asyncio.to_thread(_health_in_process, address, stop_at),
                    _bad_grpc(address, _mutants(valid, rng, 300), 4, stop_at),
                    _bad_grpc(address, [between] * 12 + [over] * 12, 12, stop_at),
                    _bad_grpc(address, [at_limit] * 400, 8, stop_at),
                    _bad_grpc(address, [typed] * 20, 2, stop_at),
                    _unix_malformed(unix_path, valid, rng, 300, stop_at),
                    _never_reading(held["never_reading"][0], valid, stop_at),
                    sample(),
                )
                return results

            t0 = time.monotonic()
            good, health, malformed, oversized, at_limit_r, typed_r, unix_r, deaf, _ = asyncio.run(flood())
            flood_wall = time.monotonic() - t0
            rss_flood_peak = max(rss_peak_sampled)
            # the held connections were opened before the flood: wait until their age limit and its grace have passed
            time.sleep(max(0.0, age_s + idle_timeout_s + 2.0 - (time.monotonic() - held_at)))
            closed = {kind: sum(_closed_by_peer(s) for s in socks) for kind, socks in held.items()}
            after = asyncio.run(_good_loop(address, expected_of, rng, time.monotonic() + 30, 50))
            rss_after, rss_hwm = _rss_mib(pid), _rss_mib(pid, "VmHWM")
            for socks in held.values():
                for s in socks:
                    s.close()
            alive = not cluster.dead()
            log_text = w.log_path.read_text() if w.log_path.exists() else ""
    return {
        "machine": machine_info(),
        "model": f"resnet18-split2 {PART}, random weights, 1x28x28",
        "settings": {
            "flood_s": flood_s,
            "idle_timeout_s": idle_timeout_s,
            "max_connection_age_s": age_s,
            "max_inflight_mb": max_inflight_mb,
            "held_connections_per_kind": held_connections,
            "message_limit_bytes": limit,
        },
        "clean": clean,
        "flood_wall_s": flood_wall,
        "good_during_flood": good,
        "health_during_flood": health,
        "bad": {
            "malformed_grpc": malformed,
            "between_and_over_limit_grpc": oversized,
            "at_limit_grpc": at_limit_r,
            "typed_int64_grpc": typed_r,
            "malformed_unix": unix_r,
            "never_reading_unix": deaf,
        },
        "p99_flood_vs_clean": good["latency"]["p99_ms"] / clean["latency"]["p99_ms"],
        "memory_mib": {
            "before": rss_before,
            "flood_peak_sampled": rss_flood_peak,
            "hwm": rss_hwm,
            "after": rss_after,
            "cap": max_inflight_mb,
            "peak_over_before": rss_flood_peak - rss_before,
        },
        "connections_closed_after_idle_timeout": {k: f"{closed[k]}/{len(v)}" for k, v in held.items()},
        "good_after": after,
        "worker_alive": alive,
        "worker_log": {"lines": len(log_text.splitlines()), "tracebacks": log_text.count("Traceback")},
    }


def text_report(r: dict) -> str:
    """What ``edgesplit bench abuse`` prints of a result."""
    c, g, h, m = r["clean"], r["good_during_flood"], r["health_during_flood"], r["memory_mib"]
    lines = [
        f"{r['model']}; flood {r['flood_wall_s']:.1f} s, idle timeout {r['settings']['idle_timeout_s']:g} s, in-flight cap {m['cap']:g} MiB",
    ]
    lines.append(
        f"good requests: clean p99 {c['latency']['p99_ms']:.2f} ms; during the flood {g['answered']}/{g['sent']} "
        f"answered, {g['correct']} correct, p99 {g['latency']['p99_ms']:.2f} ms ({r['p99_flood_vs_clean']:.1f}x clean)"
    )
    lines.append(
        f"health checks during the flood: {h['checks']}, failed {h['failed']}, p50 {h['latency']['p50_ms']:.1f} ms, "
        f"p99 {h['latency']['p99_ms']:.1f} ms, max {h['latency']['max_ms']:.1f} ms"
    )
    for name, b in r["bad"].items():
        lines.append(
            f"  {name}: "
            + ", ".join(f"{k} {v}" for k, v in b.items() if k != "statuses")
            + ("; " + ", ".join(f"{k} {v}" for k, v in sorted(b["statuses"].items())) if "statuses" in b else "")
        )
    lines.append(
        f"worker memory: {m['before']:.0f} MiB before, peak during the flood {m['flood_peak_sampled']:.0f} MiB "
        f"(+{m['peak_over_before']:.0f}), {m['after']:.0f} MiB after"
    )
    lines.append(
        "held connections closed by the worker after the idle timeout: "
        + ", ".join(f"{k} {v}" for k, v in r["connections_closed_after_idle_timeout"].items())
    )
    a = r["good_after"]
    lines.append(
        f"afterwards: a new client's requests {a['answered']}/{a['sent']} answered, {a['correct']} correct; "
        f"worker alive: {r['worker_alive']}; its log: {r['worker_log']['lines']} lines, "
        f"{r['worker_log']['tracebacks']} tracebacks"
    )
    return "\n".join(lines)
