"""The coordinator's decisions with scripted peers: no worker process, no socket, deterministic and fast.

Each peer is a test double for a worker: it answers (the part's real output, computed with ONNX Runtime from
the export's file), fails, or never answers, after a scripted delay. The coordinator under test is the real one.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from edgesplit.export.coded import reference_forward
from edgesplit.manifest import load_manifest
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.engines import OnnxRuntimeEngine
from edgesplit.runtime.errors import DeadlineExceeded, PartUnavailable
from edgesplit.runtime.model import InferResult
from edgesplit.runtime.plan import PartPlacement, Plan


class ScriptedPeer:
    """Answers with ``engine`` after ``delay_s``; or fails with ``fail``; or never answers (``never``: honouring its
    timeout as a worker does, unless ``ignore_timeout``)."""

    def __init__(
        self,
        name: str,
        engine: OnnxRuntimeEngine | None,
        delay_s: float = 0.0,
        fail: Exception | None = None,
        never: bool = False,
        ignore_timeout: bool = False,
    ):
        self.address, self.engine, self.delay_s, self.fail = f"scripted://{name}", engine, delay_s, fail
        self.never, self.ignore_timeout = never, ignore_timeout
        self.calls = self.cancelled = 0

    def start(self, inputs, timeout_s=None, request_id="", parameters=None) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.calls += 1

        def settle(result=None, error=None):
            if not fut.done():
                fut.set_exception(error) if error is not None else fut.set_result(result)

        if self.never:
            handle = (
                None
                if self.ignore_timeout or timeout_s is None
                else loop.call_later(timeout_s, settle, None, DeadlineExceeded(f"{self.address}: no answer in time"))
            )
        elif timeout_s is not None and self.delay_s > timeout_s:
            handle = loop.call_later(timeout_s, settle, None, DeadlineExceeded(f"{self.address}: no answer in time"))
        elif self.fail is not None:
            handle = loop.call_later(self.delay_s, settle, None, self.fail)
        else:
            out = self.engine.run(inputs)
            handle = loop.call_later(self.delay_s, settle, InferResult(out, {"compute_ms": 1.0}))

        def on_done(f):
            if f.cancelled():
                self.cancelled += 1
                if handle is not None:
                    handle.cancel()

        fut.add_done_callback(on_done)
        return fut

    async def infer(self, inputs, timeout_s=None, request_id="", parameters=None):
        return await self.start(inputs, timeout_s, request_id, parameters)

    async def ready(self, timeout_s=1.0):
        return not self.never and self.fail is None

    async def close(self):
        pass


def _run(coro):
    return asyncio.run(coro)


def _coordinator(export, scripts: dict, **plan_kw) -> tuple[Coordinator, dict]:
    """A coordinator over scripted peers: ``scripts`` part -> list of ScriptedPeer kwargs (one per replica)."""
    m = load_manifest(export, verify=False)
    peers = {}
    for part in m.remote_parts:
        engine = OnnxRuntimeEngine(m.path(m.part(part)))
        peers[part] = [ScriptedPeer(f"{part}.{i}", engine, **kw) for i, kw in enumerate(scripts.get(part, [{}]))]
    plan = Plan(
        str(export),
        tuple(PartPlacement(p, tuple(x.address for x in ps)) for p, ps in peers.items()),
        input_dtype="float32",
        **plan_kw,
    )
    return Coordinator(plan, peers), peers


async def _infer(coord: Coordinator, x: np.ndarray):
    try:
        return await coord.infer({"input": x})
    finally:
        await coord.close()


# ------------------------------------------------------------------ coded stages: any k of k + r (conftest: 3 + 1)
@pytest.fixture
def coded(coded_export):
    return coded_export


def _x():
    return np.random.default_rng(5).standard_normal((4, 64)).astype(np.float32)


def _exact(got, want):
    return np.linalg.norm(got - want) <= 1e-4 * np.linalg.norm(want)


def test_every_block_answers_exact(mlp, coded):
    coord, _ = _coordinator(coded, {})
    r = _run(_infer(coord, _x()))
    assert _exact(r.outputs["logits"], reference_forward(mlp, _x()))
    assert not r.parameters["degraded"] and r.parameters["decode_ms"] > 0
    assert not r.parameters["recovered"]  # every data block answered: the parity's answer, there too, is not used


def test_any_k_answers_decode_and_the_rest_is_cancelled(mlp, coded):
    slow = {"delay_s": 5.0}  # data block 1 of l1 is far slower: the parity block stands in for it
    coord, peers = _coordinator(coded, {"l1.1": [slow]}, timeout_ms=3000)
    t0 = time.monotonic()
    r = _run(_infer(coord, _x()))
    assert time.monotonic() - t0 < 1.0 and _exact(r.outputs["logits"], reference_forward(mlp, _x()))
    assert r.parameters["recovered"] and not r.parameters["degraded"]
    assert peers["l1.1"][0].cancelled == 1  # no call left running for an answer nobody reads


def test_a_failed_block_is_recovered_from_parity(mlp, coded):
    coord, _ = _coordinator(coded, {"l2.0": [{"fail": RuntimeError("boom")}]})
    r = _run(_infer(coord, _x()))
    assert _exact(r.outputs["logits"], reference_forward(mlp, _x())) and r.parameters["recovered"]


def test_fewer_than_k_degrades_with_zeros_or_fails(mlp, coded):
    two_down = {"l1.0": [{"fail": RuntimeError("down")}], "l1.2": [{"fail": RuntimeError("down")}]}
    coord, _ = _coordinator(coded, two_down)
    r = _run(_infer(coord, _x()))
    assert r.parameters["degraded"] and set(r.parameters["missing"].split(",")) == {"l1.0", "l1.2"}
    coord, _ = _coordinator(coded, two_down, on_missing="fail")
    with pytest.raises(PartUnavailable, match="stage l1"):
        _run(_infer(coord, _x()))


def test_lazy_parity_is_asked_only_when_a_data_block_fails(mlp, coded):
    # a slack no scheduling delay reaches: only a failure asks the parity (lateness: the next test)
    coord, peers = _coordinator(coded, {}, parity="lazy", parity_slack=1e6)
    r = _run(_infer(coord, _x()))
    assert peers["l1.3"][0].calls == 0 and peers["l2.3"][0].calls == 0 and "parity_asked" not in r.parameters
    coord, peers = _coordinator(coded, {"l1.1": [{"fail": RuntimeError("down")}]}, parity="lazy", parity_slack=1e6)
    r = _run(_infer(coord, _x()))
    assert peers["l1.3"][0].calls == 1 and peers["l2.3"][0].calls == 0 and r.parameters["parity_asked"] == 1
    assert _exact(r.outputs["logits"], reference_forward(mlp, _x())) and r.parameters["recovered"]


def test_lazy_parity_is_asked_when_a_data_block_is_late(mlp, coded):
    async def go():
        coord, peers = _coordinator(coded, {}, parity="lazy", parity_slack=0.5, timeout_ms=5000)
        try:
            await coord.infer({"input": _x()})  # learns when the first data block typically answers
            peers["l1.2"][0].delay_s = 2.0  # now one data block is far behind the others
            t0 = time.monotonic()
            r = await coord.infer({"input": _x()})
            return r, time.monotonic() - t0, peers
        finally:
            await coord.close()

    r, took_s, peers = _run(go())
    # l1's parity is asked for its late block; l2's may be too if a loaded machine delays its (instant) blocks
    assert peers["l1.3"][0].calls == 1 and r.parameters["parity_asked"] >= 1 and took_s < 1.0
    assert _exact(r.outputs["logits"], reference_forward(mlp, _x()))


# ------------------------------------------------------------------ replicas: hedging
def test_a_slow_replica_is_hedged_by_the_next(mlp, coded):
    # two replicas of one data block, the first slow; the parity block is down, so that block's answer is needed
    scripts = {"l1.0": [{"delay_s": 2.0}, {}], "l1.3": [{"fail": RuntimeError("down")}]}
    coord, peers = _coordinator(coded, scripts, hedge_ms=20, timeout_ms=5000)
    t0 = time.monotonic()
    r = _run(_infer(coord, _x()))
    assert time.monotonic() - t0 < 1.0 and _exact(r.outputs["logits"], reference_forward(mlp, _x()))
    first, second = peers["l1.0"]
    assert first.calls == second.calls == 1 and first.cancelled == 1  # the slow one asked first, then cancelled


# ------------------------------------------------------------------ concat stages: branches of a split model
def _head(export, feats: list[np.ndarray]) -> np.ndarray:
    head = OnnxRuntimeEngine(export / "head.onnx")
    return next(iter(head.run({head.inputs[0].name: np.concatenate(feats, axis=1)}).values()))


def _image(n=2):
    return np.random.default_rng(1).standard_normal((n, 1, 28, 28)).astype(np.float32)


def _features(export, part, x):
    return OnnxRuntimeEngine(export / f"{part}.onnx").run({"input": x})["features"]


def test_a_missing_branch_is_zeros_and_flagged(random_export):
    x = _image()
    coord, _ = _coordinator(random_export, {"branch1": [{"fail": RuntimeError("unplugged")}]})
    r = _run(_infer(coord, x))
    zeros = np.zeros_like(_features(random_export, "branch1", x))
    assert r.parameters["degraded"] and r.parameters["missing"] == "branch1"
    assert np.abs(r.outputs["logits"] - _head(random_export, [_features(random_export, "branch0", x), zeros])).max() < 1e-4
    coord, _ = _coordinator(random_export, {"branch1": [{"fail": RuntimeError("unplugged")}]}, on_missing="fail")
    with pytest.raises(PartUnavailable, match="unplugged"):
        _run(_infer(coord, x))


def test_every_branch_answers_exactly(random_export):
    x = _image()
    coord, _ = _coordinator(random_export, {})
    r = _run(_infer(coord, x))
    want = _head(random_export, [_features(random_export, p, x) for p in ("branch0", "branch1")])
    assert np.abs(r.outputs["logits"] - want).max() < 1e-4 and not r.parameters["degraded"]
    assert {"branch0_arrival_ms", "branch1_arrival_ms", "branch0_compute_ms"} <= set(r.parameters)


@pytest.mark.parametrize("ignore_timeout", [False, True])
def test_a_branch_that_never_answers_ends_at_the_deadline(random_export, ignore_timeout):
    coord, _ = _coordinator(random_export, {"branch0": [{"never": True, "ignore_timeout": ignore_timeout}]}, timeout_ms=300)
    t0 = time.monotonic()
    r = _run(_infer(coord, _image()))
    assert 0.25 < time.monotonic() - t0 < 1.0  # never past the deadline, even when the peer ignores it
    assert r.parameters["degraded"] and r.parameters["missing"] == "branch0"
    coord, _ = _coordinator(
        random_export, {"branch0": [{"never": True, "ignore_timeout": ignore_timeout}]}, timeout_ms=300, on_missing="fail"
    )
    with pytest.raises(DeadlineExceeded):
        _run(_infer(coord, _image()))


def test_a_peer_failing_repeatedly_is_skipped_then_probed(random_export):
    async def go():
        coord, peers = _coordinator(
            random_export, {"branch1": [{"fail": RuntimeError("down")}]}, unhealthy_after=2, probe_interval_ms=10_000
        )
        try:
            for _ in range(4):
                await coord.infer({"input": _image()})
            return peers["branch1"][0].calls, coord.peers["branch1"][0].healthy
        finally:
            await coord.close()

    calls, healthy = _run(go())
    assert calls == 2 and not healthy  # asked until marked unhealthy, then skipped (its branch counted missing)


def test_a_learned_code_waits_for_its_data_blocks_unless_one_fails_or_is_late(mlp, coded, tmp_path):
    """Parity branches approximate their code (training/parity.py): a stage marked ``code_exact: false`` takes an
    on-time data block over a parity block that answered first; a failed or late one is rebuilt from the parity."""
    import json
    import shutil

    learned = tmp_path / "learned"
    shutil.copytree(coded, learned)
    manifest = json.loads((learned / "manifest.json").read_text())
    for stage in manifest["stages"]:
        if stage["merge"] == "decode":
            stage["code_exact"] = False
    (learned / "manifest.json").write_text(json.dumps(manifest))
    want = reference_forward(mlp, _x())

    async def go(script, **plan):
        coord, _ = _coordinator(learned, script, timeout_ms=5000, **plan)
        try:
            return await _infer(coord, _x())
        finally:
            await coord.close()

    # every block of l1 answers in 20 ms (the parity l1.3 too), l1.2 in 60: on time for a slack of 10 (late after
    # 11 x 20 ms), so it is waited for although the parity gave k answers first
    slow = {p: [{"delay_s": 0.02}] for p in ("l1.0", "l1.1", "l1.3")}
    r = _run(go({**slow, "l1.2": [{"delay_s": 0.06}]}, parity_slack=10.0))
    assert not r.parameters["recovered"] and _exact(r.outputs["logits"], want)
    # the default slack (late after 1.5 x 20 ms): rebuilt from the parity
    r = _run(go({**slow, "l1.2": [{"delay_s": 0.06}]}))
    assert r.parameters["recovered"] and _exact(r.outputs["logits"], want)
    # failed: rebuilt at once
    r = _run(go({**slow, "l1.2": [{"fail": RuntimeError("down")}]}, parity_slack=10.0))
    assert r.parameters["recovered"] and _exact(r.outputs["logits"], want)
