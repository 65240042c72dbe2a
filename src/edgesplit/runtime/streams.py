"""Many streams on one fleet: groups of devices, each serving its own copy of the split model, as one model.

A fleet larger than one split model needs is divided into groups (``edgesplit plan --streams S --fps F`` sizes
them and writes a plan per group and a group file naming them; ``load_groups`` reads it). ``StreamRouter`` serves
the groups' coordinators as one KServe v2 model:

- a request with a ``stream`` parameter (``model.STREAM``) goes to the group its stream is on; a new stream goes
  to the healthy group with the fewest streams, and stays there while that group answers in full;
- a group whose answer comes back degraded, or that fails, is suspect: its streams move to the other groups from
  their next frame on (a failed frame is asked again on another group: nothing is lost), and it takes no stream
  until it has answered in full for ``hold_s`` and every part of it is healthy again;
- requests without a stream go to the healthy groups in turn.

Each answer says which group made it (parameter ``group``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict
from pathlib import Path

from edgesplit.errors import EdgesplitError
from edgesplit.runtime.errors import DeadlineExceeded, PartUnavailable
from edgesplit.runtime.model import InferResult

log = logging.getLogger(__name__)

MAX_STREAMS = 10_000  # streams remembered (the least recently seen is forgotten first: a client cannot grow it)
HOLD_S = 2.0  # a suspect group takes no stream for this long after its last degraded or failed answer


class StreamRouter:
    def __init__(self, groups: list, hold_s: float = HOLD_S):
        """``groups``: coordinators of the same export (one per group of devices)."""
        if not groups:
            raise EdgesplitError("a stream router needs at least one group")
        names = {g.meta.name for g in groups}
        if len(names) != 1:
            raise EdgesplitError(f"the groups serve different models ({', '.join(sorted(names))}); give groups of one export")
        self.groups, self.hold_s = groups, hold_s
        self.meta = groups[0].meta
        self.streams: OrderedDict[str, int] = OrderedDict()  # stream -> its group
        self._suspect_until: dict[int, float] = {}
        self._turn = itertools.count()

    def ready(self) -> bool:
        return any(g.ready() for g in self.groups)

    def healthy(self, i: int) -> bool:
        until = self._suspect_until.get(i)
        if until is None:
            return True
        if time.monotonic() < until or not all(h.healthy for hs in self.groups[i].peers.values() for h in hs):
            return False
        del self._suspect_until[i]
        log.info("group %d answers in full again: it takes streams", i)
        return True

    def _suspect(self, i: int, why: str) -> None:
        if i not in self._suspect_until:
            log.warning("group %d %s: its streams move to the other groups", i, why)
        self._suspect_until[i] = time.monotonic() + self.hold_s

    def _load(self) -> list[int]:
        load = [0] * len(self.groups)
        for i in self.streams.values():
            load[i] += 1
        return load

    def _place(self, stream: str | None, exclude: set[int]) -> int:
        """The group for a new or moved stream (or a request without one): a healthy group not tried yet with the
        fewest streams; a suspect one only when no healthy one is left."""
        left = [i for i in range(len(self.groups)) if i not in exclude]
        if not left:
            raise PartUnavailable("every group failed this request")
        healthy = [i for i in left if self.healthy(i)] or left
        if stream is None:
            return healthy[next(self._turn) % len(healthy)]
        load = self._load()
        i = min(healthy, key=lambda j: (load[j], j))
        self.streams[stream] = i
        self.streams.move_to_end(stream)
        while len(self.streams) > MAX_STREAMS:
            self.streams.popitem(last=False)
        return i

    async def infer(self, inputs: dict) -> InferResult:
        return await self._ask(inputs, None)

    async def infer_stream(self, inputs: dict, stream: str) -> InferResult:
        return await self._ask(inputs, stream)

    async def _ask(self, inputs: dict, stream: str | None) -> InferResult:
        i = self.streams.get(stream) if stream is not None else None
        if i is None or not self.healthy(i):
            i = self._place(stream, set())
        else:
            self.streams.move_to_end(stream)
        tried = set()
        while True:
            tried.add(i)
            try:
                result = await self.groups[i].infer(inputs)
            except (PartUnavailable, DeadlineExceeded) as err:
                self._suspect(i, f"failed ({err})")
                try:
                    i = self._place(stream, tried)
                except PartUnavailable:
                    raise err from None
                continue
            if result.parameters.get("degraded"):
                self._suspect(i, "answered degraded")
            result.parameters["group"] = i
            return result

    async def close(self) -> None:
        for g in self.groups:
            await g.close()


def load_groups(path: str | Path):
    """The plans of a group file (``edgesplit plan --streams``): ``groups: [plan files, relative to it]``."""
    import yaml

    from edgesplit.runtime.plan import load_plan

    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text())
        files = [path.parent / f for f in d["groups"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise EdgesplitError(
            f"{path} is not a valid group file ({type(err).__name__}: {err}); see `edgesplit plan --streams`"
        ) from None
    if not files:
        raise EdgesplitError(f"{path} lists no groups")
    return [load_plan(f) for f in files]


def is_group_file(path: str | Path) -> bool:
    import yaml

    try:
        d = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(d, dict) and "groups" in d
