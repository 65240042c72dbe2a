"""Predicted latency, throughput and bytes of each way to spread a model (issue 19 part 4): codesign/strategies.py
and `edgesplit plan --strategy auto`. The bench (`edgesplit bench strategies`) checks them against the testbed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgesplit.codesign.strategies import (
    CallCost,
    FleetNode,
    Overheads,
    Prediction,
    closed_loop_rate,
    predict_all,
    recommend,
)
from edgesplit.errors import EdgesplitError
from edgesplit.manifest import load_manifest
from edgesplit.runtime.plan import load_plan

CALL = CallCost(latency_ms=1.0, latency_per_part_ms=1.0, busy_ms=0.5, busy_per_part_ms=1.0)


@pytest.fixture(scope="module")
def unsplit(tmp_path_factory):
    """resnet18 at width 0.25 (random weights), exported whole and cut into 2 stages."""
    from edgesplit.export.onnx_export import export_model
    from edgesplit.models import create_model

    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "in_chans": 1, "input_size": (28, 28), "width_mult": 0.25}
    model = create_model("resnet18", **kwargs).eval()
    ckpt = {"model": "resnet18", "model_kwargs": kwargs, "state_dict": model.state_dict(),
            "classes": [str(i) for i in range(10)], "preprocess": {"size": [28, 28], "mean": [0.3], "std": [0.35]}}  # fmt: skip
    root = tmp_path_factory.mktemp("unsplit")
    export_model(model, ckpt, root / "whole")
    export_model(model, ckpt, root / "pipeline", pipeline=2)
    return root


def nodes(n: int, link_mbps: float = 1000.0, call: CallCost = CALL) -> list[FleetNode]:
    return [FleetNode(f"10.0.0.{i + 1}:50051", "raspberry-pi-4", link_mbps, call) for i in range(n)]


def one_ms(path, node) -> float:
    """Every part takes 1 ms on a device; the coordinator's (the head) nothing."""
    return 1.0 if node else 0.0


def test_closed_loop_rate_is_mean_value_analysis():
    # one queue of 1 ms per request behind a 1 ms delay: 1 / 2 ms alone, 2 / 2.5 ms with two in flight (exact MVA)
    assert closed_loop_rate(2.0, {"queue": 1.0}, 1) == pytest.approx(500.0)
    assert closed_loop_rate(2.0, {"queue": 1.0}, 2) == pytest.approx(800.0)
    assert closed_loop_rate(2.0, {"queue": 1.0}, 200) == pytest.approx(1000.0, rel=1e-3)  # the queue's rate, never more
    # two queues a request visits at once (a split model's branches) wait as one, not one after the other
    both = {"a": 1.0, "b": 1.0}
    at_once = closed_loop_rate(1.0, both, 8, [[{"a": 1.0}, {"b": 1.0}]])
    in_turn = closed_loop_rate(2.0, both, 8)
    assert at_once == pytest.approx(closed_loop_rate(1.0, {"a": 1.0}, 8)) and at_once > in_turn


def test_latency_and_bytes_follow_the_messages(unsplit):
    """One device, one part: the input out as uint8 pixels, the logits back as float32, each message with its
    protocol bytes and TCP/IP headers; the link's time is those bytes at its rate."""
    overheads = Overheads(message_bytes=100.0)
    fast = predict_all([unsplit / "whole"], nodes(1), one_ms, overheads, in_flight=1)["single"]
    slow = predict_all([unsplit / "whole"], nodes(1, link_mbps=10.0), one_ms, overheads, in_flight=1)["single"]
    wire = overheads.wire_bytes(28 * 28) + overheads.wire_bytes(4 * 10)
    assert wire == 28 * 28 + 66 + 100 + 40 + 66 + 100
    assert fast.bytes_per_inference == pytest.approx(wire)
    assert fast.latency_ms == pytest.approx(wire * 8 / 1e6 + CALL.latency(1.0))
    assert slow.latency_ms - fast.latency_ms == pytest.approx(wire * 8 / 1e4 - wire * 8 / 1e6)
    assert fast.throughput_rps == pytest.approx(1e3 / fast.latency_ms)  # one in flight: one after the other


def test_replicas_add_throughput_not_latency(unsplit):
    p = predict_all([unsplit / "whole"], nodes(3), one_ms, Overheads(coordinator_ms=0.05), in_flight=32)
    single, spread = p["single"], p["data-parallel"]
    assert spread.latency_ms == pytest.approx(single.latency_ms)
    assert single.throughput_rps == pytest.approx(1e3 / CALL.busy(1.0), rel=0.02)  # its device's rate
    assert spread.throughput_rps > 2.5 * single.throughput_rps
    assert (single.devices_used, spread.devices_used) == (1, 3)
    slow_coordinator = predict_all([unsplit / "whole"], nodes(3), one_ms, Overheads(coordinator_ms=2.0), in_flight=32)
    assert slow_coordinator["data-parallel"].bound == "coordinator"
    assert slow_coordinator["data-parallel"].throughput_rps == pytest.approx(500.0, rel=0.02)


def test_a_split_request_waits_for_its_slowest_branch(random_export):
    """Branches run in parallel: the latency is the slower branch's call, then the head in the coordinator."""
    cost = {"branch0.onnx": 3.0, "branch1.onnx": 1.0, "head.onnx": 0.25}
    p = predict_all([random_export], nodes(2), lambda path, node: cost[path.name], in_flight=1)["split"]
    m = load_manifest(random_export, verify=False)
    features = 4 * m.feature_dims[0]
    wire = Overheads().wire_bytes(28 * 28) + Overheads().wire_bytes(features)
    assert p.latency_ms == pytest.approx(wire * 8 / 1e6 + CALL.latency(3.0) + 0.25)
    assert p.bytes_per_inference == pytest.approx(2 * wire)


def test_pipeline_stages_add_up_and_its_activations_cross_the_links(unsplit):
    p = predict_all([unsplit / "pipeline"], nodes(2), one_ms, in_flight=1)["pipeline"]
    single = predict_all([unsplit / "whole"], nodes(2), one_ms, in_flight=1)["single"]
    assert p.latency_ms > 2 * CALL.latency(1.0)
    assert p.bytes_per_inference > 2 * single.bytes_per_inference  # an activation out and back in between


def test_what_a_lost_device_costs(unsplit, random_export):
    p = predict_all([unsplit / "whole", unsplit / "pipeline", random_export], nodes(2), one_ms)
    assert {s: x.device_lost for s, x in p.items()} == {
        "split": "degraded",  # the head answers from the branch left
        "pipeline": "fails",  # a stage has no spare
        "data-parallel": "exact",  # the other replica answers
        "single": "fails",
    }
    failing = predict_all([random_export], nodes(2), one_ms, plan_options={"on_missing": "fail"})
    assert failing["split"].device_lost == "fails"
    assert predict_all([random_export], nodes(4), one_ms)["split"].device_lost == "exact"  # every branch replicated


def test_recommend_by_latency_or_by_throughput_within_the_objective():
    def p(strategy, latency, rps, lost="exact"):
        return Prediction(strategy, "x", 2, latency, rps, 1e3, "device", lost, 4)

    options = {"split": p("split", 5.0, 100.0, "degraded"), "data-parallel": p("data-parallel", 9.0, 300.0)}
    assert recommend(options)[0] == "split"
    assert recommend(options, slo_ms=10)[0] == "data-parallel"
    assert recommend(options, slo_ms=6)[0] == "split"
    choice, why = recommend(options, slo_ms=1)
    assert choice == "split" and "none meets 1 ms" in why
    with pytest.raises(EdgesplitError, match="no strategy to compare"):
        recommend({})


def test_two_exports_for_one_strategy_are_refused(unsplit):
    with pytest.raises(EdgesplitError, match="two exports are made for data-parallel"):
        predict_all([unsplit / "whole", unsplit / "whole"], nodes(2), one_ms)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edgesplit", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_plan_auto_predicts_from_the_catalog_and_writes_the_chosen_plan(unsplit, random_export, tmp_path):
    fleet = tmp_path / "fleet.yaml"
    addresses = ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"]
    fleet.write_text(f"link_mbps: 100\ndevices:\n  - {{device: raspberry-pi-4, count: 3, addresses: {json.dumps(addresses)}}}\n")
    out, preds = tmp_path / "plan.yaml", tmp_path / "predicted.json"
    exports = (random_export, unsplit / "whole", unsplit / "pipeline")
    proc = cli("plan", *exports, "--strategy", "auto", "--fleet", fleet, "--slo-ms", 1000, "--json", preds, "--out", out)
    assert proc.returncode == 0, proc.stderr
    predicted = json.loads(preds.read_text())
    assert set(predicted) == {"split", "pipeline", "data-parallel", "single"}
    assert predicted["data-parallel"]["throughput_rps"] > 1.5 * predicted["single"]["throughput_rps"]
    best = max(predicted, key=lambda s: predicted[s]["throughput_rps"])  # every one meets 1000 ms here
    assert f"recommended: {best}: the highest predicted throughput" in proc.stdout
    plan = load_plan(out)
    assert Path(plan.export).resolve() == Path(predicted[best]["export"]).resolve()
    assert {p.name: list(p.replicas) for p in plan.parts} == predicted[best]["placement"]
    assert {a for p in plan.parts for a in p.replicas} == set(addresses)

    proc = cli("plan", *exports, "--strategy", "auto", "--fleet", fleet, "--out", out)  # no objective: the fastest
    assert proc.returncode == 0 and "recommended: split: the lowest predicted latency" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("--strategy", "auto", "--workers", "a:1"), "give the devices as --fleet"),
        (("{whole}", "--workers", "a:1", "b:2"), "2 exports given; give one"),
        (("--workers", "a:1", "--slo-ms", "5"), "--slo-ms and --json go with --strategy auto"),
        (("--strategy", "auto", "--fleet", "{tmp}/missing.yaml"), "fleet file"),
    ],
)
def test_plan_auto_bad_input_is_one_line(unsplit, tmp_path, args, message):
    args = [a.format(whole=unsplit / "whole", tmp=tmp_path) for a in args]
    proc = cli("plan", unsplit / "whole", *args, "--out", tmp_path / "p.yaml")
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr


def test_plan_from_a_fleet_file_without_auto(random_export, tmp_path):
    """--fleet instead of --workers: the fleet's addresses, its devices' catalog speeds; the export's own strategy."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        'devices:\n  - {device: jetson-nano-cpu, addresses: ["10.0.0.9:1"]}\n  - {device: raspberry-pi-4, count: 2}\n'
    )
    out = tmp_path / "plan.yaml"
    proc = cli("plan", random_export, "--fleet", fleet, "--out", out)
    assert proc.returncode == 0, proc.stderr
    plan = load_plan(out)
    placed = {a for p in plan.parts for a in p.replicas}
    assert placed == {"10.0.0.9:1", "127.0.0.1:50051", "127.0.0.1:50052"}  # the spare device became a replica
    from edgesplit.codesign.fleet import load_fleet
    from edgesplit.codesign.strategies import catalog_cost, fleet_nodes, whole_ms

    nodes = fleet_nodes(load_fleet(fleet))
    by_speed = sorted(nodes, key=lambda n: whole_ms(random_export, n, catalog_cost()))
    assert plan.parts[0].replicas[0] == by_speed[0].address  # the fastest device takes the first branch
    assert by_speed[-1].address in [a for p in plan.parts for a in p.replicas[1:]]  # the slowest is a spare replica


def test_the_benches_plots_are_drawn_from_their_results(tmp_path):
    """`bench strategies --plot` and `bench scale --plot`: a PNG from a result (the committed ones, read back)."""
    from edgesplit.bench import scale, strategies

    docs = Path(__file__).resolve().parents[2] / "docs" / "bench"
    strategies.plot(json.loads((docs / "strategies_mixed.json").read_text()), tmp_path / "s.png")
    scale.plot(json.loads((docs / "scale.json").read_text()), tmp_path / "c.png")
    for png in ("s.png", "c.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_streams_sizes_groups_or_says_what_is_missing(random_export, tmp_path):
    """`plan --fleet F --streams S --fps F`: groups of two devices (one per branch), the fastest first, as many as
    the streams need, each its own plan; a group file for `serve --plan`. Too many streams: one line saying what
    the fleet would need."""
    import yaml

    from edgesplit.codesign.fleet import load_fleet
    from edgesplit.codesign.strategies import catalog_cost, fleet_nodes, size_groups
    from edgesplit.runtime.streams import load_groups

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("link_mbps: 100\ndevices:\n  - {device: raspberry-pi-4, count: 6}\n")
    nodes = fleet_nodes(load_fleet(fleet))
    group_rps = size_groups(random_export, nodes, catalog_cost(), 1, 1.0)[0][0].throughput_rps
    fps = group_rps / 2.5  # two streams per group
    out = tmp_path / "plans" / "groups.yaml"
    proc = cli("plan", random_export, "--fleet", fleet, "--streams", 3, "--fps", fps, "--out", out)
    assert proc.returncode == 0, proc.stderr
    body = yaml.safe_load(out.read_text())
    assert body["streams_per_group"] == [2, 1] and body["groups"] == ["groups-group0.yaml", "groups-group1.yaml"]
    plans = load_groups(out)
    devices = [{a for p in plan.parts for a in p.replicas} for plan in plans]
    assert all(len(d) == 2 for d in devices) and not devices[0] & devices[1]  # two devices each, none shared

    proc = cli("plan", random_export, "--fleet", fleet, "--streams", 9, "--fps", fps, "--out", out)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert "carries 6 of 9 streams" in proc.stderr and "would need about 4 more device(s) like raspberry-pi-4" in proc.stderr
    proc = cli("plan", random_export, "--streams", 3, "--out", out)
    assert proc.returncode != 0 and "--streams S --fps F go together" in proc.stderr
