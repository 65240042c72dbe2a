"""Frames from a source through a split model at the source's pace, with a bounded queue.

A reader thread decodes frames (PyAV) and paces a file or folder by its timestamps (``speed``; a camera or a
network stream paces itself), handing each to the event loop. At most ``queue`` frames wait: when the fleet falls
behind, the oldest waiting frame is dropped and counted, so that what is answered stays close to live and memory
stays bounded. ``in_flight`` frames are in the split model at once. Every frame ends in one record: answered
(latency from its arrival to its answer, degraded / recovered, the top classes), dropped, or an error (a frame
that could not be decoded, a request that failed): the stream goes on past each.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import Awaitable, Callable

import numpy as np

from edgesplit.errors import EdgesplitError
from edgesplit.runtime.errors import DeadlineExceeded, InferError, PartUnavailable
from edgesplit.runtime.stats import latency_summary
from edgesplit.stream.config import StreamConfig
from edgesplit.stream.sources import Frame, SourceLost, open_source

log = logging.getLogger(__name__)


def _top(logits: np.ndarray, classes: tuple[str, ...], k: int) -> list[list]:
    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z) / np.exp(z).sum()
    best = np.argsort(-p)[:k]
    return [[classes[i] if i < len(classes) else str(i), float(p[i])] for i in best]


async def run_stream(
    infer: Callable[[np.ndarray], Awaitable],
    manifest,
    cfg: StreamConfig,
    on_answer: Callable[[dict, Frame, float | None], None] | None = None,
    on_drop: Callable[[], None] | None = None,
) -> dict:
    """Run ``cfg.source`` through ``infer`` ((1, C, H, W) uint8 -> ``InferResult``: an ``AsyncClient``'s
    ``infer_result``) for the model of ``manifest``; the records and a summary. ``on_answer(record, frame,
    source_fps)`` is called for each answered frame, in the order answers come (``source_fps``: the source's frame
    rate, None when it does not say); ``on_drop()`` for each frame dropped."""
    source = open_source(cfg.source, manifest.input_shape, cfg.fps)
    loop = asyncio.get_running_loop()
    waiting: collections.deque = collections.deque()
    wake = asyncio.Event()
    records: dict[int, dict] = {}
    state = {"read": 0, "done": False, "lost": None, "deepest": 0}
    stop = threading.Event()

    def offer(frame: Frame) -> None:  # on the loop
        state["read"] += 1
        if len(waiting) >= cfg.queue:
            old, _ = waiting.popleft()
            records[old.index] = {"frame": old.index, "t_s": old.t_s, "dropped": True}
            if on_drop:
                on_drop()
        waiting.append((frame, time.monotonic()))
        state["deepest"] = max(state["deepest"], len(waiting))
        wake.set()

    def finish(lost: str | None) -> None:
        state["done"], state["lost"] = True, lost
        wake.set()

    def read() -> None:  # a thread: decoding and pacing block
        lost, t0, first = None, time.monotonic(), None
        try:
            for frame in source.frames():
                if stop.is_set() or (cfg.max_frames is not None and frame.index >= cfg.max_frames):
                    break
                if not source.live and cfg.speed > 0:
                    first = frame.t_s if first is None else first
                    delay = t0 + (frame.t_s - first) / cfg.speed - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                loop.call_soon_threadsafe(offer, frame)
        except SourceLost as err:
            lost = str(err)
        except EdgesplitError as err:
            lost = str(err)
        finally:
            source.close()
            loop.call_soon_threadsafe(finish, lost)

    async def answer() -> None:
        while True:
            while not waiting:
                if state["done"]:
                    return
                wake.clear()
                await wake.wait()
            frame, arrived = waiting.popleft()
            record = {"frame": frame.index, "t_s": frame.t_s}
            if frame.image is None:
                records[frame.index] = {**record, "error": frame.error}
                continue
            x = np.ascontiguousarray(frame.image.transpose(2, 0, 1)[None])  # (1, C, H, W) uint8
            try:
                result = await infer(x)
            except (InferError, DeadlineExceeded, PartUnavailable) as err:
                records[frame.index] = {**record, "error": str(err)}
                continue
            record.update(
                latency_ms=(time.monotonic() - arrived) * 1e3,
                degraded=bool(result.parameters.get("degraded", False)),
                recovered=bool(result.parameters.get("recovered", False)),
                top=_top(result.outputs["logits"][0], manifest.classes, cfg.top),
            )
            records[frame.index] = record
            if on_answer:
                on_answer(record, frame, source.fps)

    reader = threading.Thread(target=read, name="edgesplit-stream-reader", daemon=True)
    t0 = time.monotonic()
    reader.start()
    try:
        await asyncio.gather(*(answer() for _ in range(cfg.in_flight)))
    finally:
        stop.set()
    wall_s = time.monotonic() - t0
    reader.join(5.0)
    frames = [records[i] for i in sorted(records)]
    answered = [r for r in frames if "latency_ms" in r]
    return {
        "source": cfg.source,
        "model": manifest.model,
        "summary": {
            "frames_read": state["read"],
            "answered": len(answered),
            "dropped": sum(1 for r in frames if r.get("dropped")),
            "errors": sum(1 for r in frames if "error" in r),
            "degraded": sum(1 for r in answered if r["degraded"]),
            "recovered": sum(1 for r in answered if r["recovered"]),
            "deepest_queue": state["deepest"],
            "wall_s": wall_s,
            "answered_fps": len(answered) / wall_s if wall_s > 0 else 0.0,
            "source_fps": getattr(source, "fps", None),
            "latency": latency_summary([r["latency_ms"] for r in answered]),
            "stopped_early": state["lost"],
        },
        "frames": frames,
    }


def frame_line(record: dict) -> str:
    """One answered frame, as ``stream`` prints it."""
    flags = " DEGRADED" if record["degraded"] else " recovered" if record["recovered"] else ""
    top = ", ".join(f"{c} {p:.2f}" for c, p in record["top"])
    return f"frame {record['frame']:>5} {record['latency_ms']:7.1f} ms{flags}  {top}"


def summary_text(r: dict) -> str:
    s = r["summary"]
    lat = s["latency"]
    lines = [
        f"{s['frames_read']} frames read from {r['source']}: {s['answered']} answered ({s['degraded']} degraded, "
        f"{s['recovered']} recovered), {s['dropped']} dropped (the fleet behind), {s['errors']} errors",
        f"{s['answered_fps']:.1f} answered frames/s over {s['wall_s']:.1f} s"
        + (f"; latency p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms" if lat["n"] else ""),
    ]
    if s["stopped_early"]:
        lines.append(f"the source stopped: {s['stopped_early']}")
    return "\n".join(lines)
