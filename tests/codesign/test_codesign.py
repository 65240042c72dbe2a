"""Co-design: the search space, fleet balancing, the CPU roofline, and one small real search end to end."""

import json
import os
import socket
from dataclasses import replace

import numpy as np
import pytest

import edgesplit
from edgesplit.cli import main, parse_duration
from edgesplit.codesign.evaluate import Targets
from edgesplit.codesign.records import HardwareCost
from edgesplit.codesign.fleet import balance, load_fleet
from edgesplit.codesign.space import COORDINATES, Candidate, SearchSpace, is_valid, neighbours, pareto_front
from edgesplit.errors import EdgesplitError
from edgesplit.hardware.catalog import get_device
from edgesplit.hardware.cpu import CPU_COMPUTE_EFFICIENCY, CPU_MEMORY_EFFICIENCY, estimate_cpu
from edgesplit.hardware.graph import Graph, Layer
from edgesplit.models import create_model

SPACE = SearchSpace()
HW = (28, 28)


def test_channels_follow_the_seed_pattern():
    c = Candidate("dw3-pw1", depth=4, base_chs=48, growth=2.0, pools=(True, True, True, False))
    assert c.channels == (48, 96, 192, 384)  # DNN-A's 48P-96P-192P-384
    assert Candidate("conv3", depth=3, base_chs=12, growth=1.5, pools=(True, False, True)).channels == (12, 16, 16)
    assert Candidate.from_dict(c.to_dict()) == c
    assert c.arch_key in c.key and "w8f8" in c.key


@pytest.mark.parametrize("coord", COORDINATES)
def test_neighbours_are_one_valid_step(coord):
    rng = np.random.default_rng(0)
    start = Candidate("conv3-res", depth=4, base_chs=16, growth=1.5, pools=(True, False, True, False))
    found = neighbours(start, coord, SPACE, HW, rng)
    assert found, coord
    for n in found:
        assert n != start and is_valid(n, SPACE, HW)
        changed = {k for k in start.to_dict() if start.to_dict()[k] != n.to_dict()[k]} - {"channels"}
        if coord == "depth":
            assert changed <= {"depth", "pools"} and abs(n.depth - start.depth) == 1
        elif coord == "pools":
            assert changed == {"pools"} and abs(sum(n.pools) - sum(start.pools)) <= 1
        else:
            assert changed == {coord}
            choices = SPACE.choices(coord)
            assert abs(choices.index(getattr(n, coord)) - choices.index(getattr(start, coord))) == 1


def test_invalid_candidates_are_never_proposed():
    rng = np.random.default_rng(1)
    c = Candidate("conv3", depth=3, pools=(True, True, True))  # 28 -> 3 px: a fourth pool would leave 1 px
    for _ in range(20):
        for n in neighbours(c, "pools", SPACE, HW, rng):
            assert sum(n.pools) <= 3 and is_valid(n, SPACE, HW)
    assert not is_valid(Candidate("conv3", depth=2, pools=(True, True, True)), SPACE, HW)


def test_pareto_front():
    pts = [(0.9, 100), (0.8, 200), (0.85, 90), (0.7, 150), (0.9, 100)]
    assert pareto_front(pts) == [0, 1, 4]  # (0.85, 90) and (0.7, 150) are beaten on both


def test_targets_violation():
    t = Targets(fps=100, max_watts=2.0)
    assert t.violation(HardwareCost(fps=150, fits=True, macs=1, watts=1.5)) == 0
    assert t.violation(HardwareCost(fps=50, fits=True, macs=1, watts=1.5)) == pytest.approx(1.0)
    assert t.violation(HardwareCost(fps=100, fits=True, macs=1, watts=3.0)) == pytest.approx(0.5)
    assert t.violation(HardwareCost(fps=0.0, fits=False, macs=1)) >= 1


def test_balance_equalises_and_covers_the_width():
    grid = [i / 4 for i in range(1, 5)]
    fast = {s: 100 / s for s in grid}  # rate inversely proportional to the share of work
    slow = {s: 50 / s for s in grid}
    rate, shares = balance([fast, slow])
    assert sum(shares) == pytest.approx(1.0)
    assert shares[0] > shares[1]  # the faster device gets the wider branch
    assert rate == pytest.approx(100 / 0.75)  # shares 0.75 + 0.25: both at least 133 FPS
    assert balance([{0.25: 0.0, 0.5: 0.0}]) is None  # nothing fits: no allocation


def test_cpu_roofline_hand_computed():
    dev = get_device("raspberry-pi-4")
    conv = Layer("c", "conv", (8, 10, 10), (16, 10, 10), kernel=(3, 3), inputs=("input",))
    est = estimate_cpu(Graph("g", (8, 10, 10), (conv,)), dev)
    macs = 16 * 100 * 8 * 9
    compute_ms = 2 * macs / (dev.peak_gflops * 1e9 * CPU_COMPUTE_EFFICIENCY) * 1e3
    mem_ms = (16 * 8 * 9 + 800 + 1600) * 4 / (dev.mem_bandwidth_gbs * 1e9 * CPU_MEMORY_EFFICIENCY) * 1e3
    assert est["totals"]["image_ms"] == pytest.approx(max(compute_ms, mem_ms))
    with pytest.raises(EdgesplitError, match="CPU device"):
        estimate_cpu(Graph("g", (8, 10, 10), (conv,)), get_device("pynq-z1"))


def test_fleet_bit_widths_and_quantizer_overrides():
    from edgesplit.codesign.fleet import bit_options, quant_overrides

    c = Candidate("conv3", wbits=10, fbits=8)
    assert bit_options(c) == [(10, 8), (8, 8), (6, 6)]  # never wider than the searched network
    assert bit_options(replace(c, wbits=6, fbits=6)) == [(6, 6)]
    assert quant_overrides({"branch_bits": [[8, 8], None]}) == {"/branches.0/": (8, 8), "/branches.1/": None, "": None}


def test_fleet_file(tmp_path):
    f = tmp_path / "fleet.yaml"
    f.write_text("devices:\n  - {device: pynq-z1, count: 2}\n  - {device: raspberry-pi-4, addresses: ['10.0.0.5:7000']}\n")
    fleet = load_fleet(f)
    assert [d.address for d in fleet.devices] == ["127.0.0.1:50051", "127.0.0.1:50052", "10.0.0.5:7000"]
    f.write_text("devices:\n  - {device: pynq-z1, count: 2, addresses: ['a:1']}\n")
    with pytest.raises(EdgesplitError, match="count 2 but 1 addresses"):
        load_fleet(f)
    f.write_text("devices:\n  - {device: pynq-z1, count: 0}\n")
    with pytest.raises(EdgesplitError, match="count must be a whole number of at least 1, got 0"):
        load_fleet(f)
    f.write_text("devices: []\n")
    with pytest.raises(EdgesplitError, match="lists no devices"):
        load_fleet(f)
    f.write_text("devices:\n  - {device: no-such-board}\n")
    with pytest.raises(EdgesplitError, match="unknown device"):
        load_fleet(f)
    with pytest.raises(EdgesplitError, match="not found"):
        load_fleet(tmp_path / "missing.yaml")


@pytest.mark.parametrize("bundle", ["dw3-pw1", "conv3", "pw1-dw3-pw1", "conv3-res", "fire"])
def test_every_bundle_is_costed_and_quantized(bundle):
    """Each bundle of the pool goes through the hardware model and the bit-exact integer reference."""
    import torch

    from edgesplit.hardware.accelerator import COARSE_PAR_CHOICES, COARSE_TILE_CHOICES, AccelConfig, tune
    from edgesplit.hardware.graph import graph_from_model
    from edgesplit.quant.fixed import run_integer
    from edgesplit.quant.qnet import QuantNet, qgraph_from_model

    torch.manual_seed(0)
    model = create_model("bundlenet", num_classes=10, in_chans=1, bundle=bundle, channels=[8, 16], pools=[True, False]).eval()
    est = tune(
        graph_from_model(model, (1, 28, 28)),
        get_device("pynq-z1"),
        AccelConfig(wbits=8, fbits=8),
        COARSE_PAR_CHOICES,
        COARSE_TILE_CHOICES,
    ).best
    assert est.fits and est.totals.fps > 0
    qnet = QuantNet(qgraph_from_model(model, (1, 28, 28)))
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (qnet(x) - model(x)).abs().max() < 1e-4
        qnet.calibrate([torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(2))], 8, 8)
        fake = qnet.double()(x.double()).numpy()
    y_int, fmt = run_integer(qnet.float().export_graph(), qnet.scheme, x.numpy())
    assert np.array_equal(fake, y_int.reshape(len(x), -1) / 2.0**fmt.frac)


def test_bundlenet_split_widths_add_up():
    m = create_model(
        "bundlenet-split",
        num_classes=10,
        in_chans=1,
        bundle="conv3",
        channels=[16, 32],
        pools=[True, False],
        k=2,
        branch_widths=[3, 1],
    )
    assert m.feature_dims == [24, 8]


def test_parse_duration():
    assert parse_duration("30m") == 1800 and parse_duration("1h") == 3600 and parse_duration("90s") == 90
    with pytest.raises(EdgesplitError, match="30m"):
        parse_duration("soon")
    with pytest.raises(EdgesplitError, match="needs a unit: 5s, 5m or 5h"):
        parse_duration("5")


# ------------------------------------------------------------ one small real search, end to end
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SMALL = [
    "codesign",
    "--device",
    "pynq-z1",
    "--target-fps",
    "2000",
    "--time-budget",
    "200s",
    "--bundles",
    "conv3,dw3-pw1",
    "--proxy-images",
    "256",
    "--proxy-val-images",
    "128",
    "--final-epochs",
    "1",
    "--final-images",
    "512",
    "--finalists",
    "1",
]


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    out = tmp_path_factory.mktemp("codesign")
    ports = [_free_port(), _free_port()]
    fleet = out / "fleet.yaml"
    fleet.write_text(
        f"devices:\n  - {{device: ultra96-v2, addresses: ['127.0.0.1:{ports[0]}']}}\n"
        f"  - {{device: raspberry-pi-4, addresses: ['127.0.0.1:{ports[1]}']}}\n"
    )
    run = out / "run"
    assert (
        main([*SMALL, "--out", str(run), "--fleet", str(fleet), "--accuracy-floor", "0", "--json", str(out / "result.json")]) == 0
    )
    return run, json.loads((out / "result.json").read_text()), fleet


def test_search_writes_every_output(search):
    run, result, _ = search
    for name in (
        "report.md",
        "pareto.png",
        "result.json",
        "search.json",
        "chosen/checkpoint.pt",
        "chosen/network.json",
        "chosen/accelerator.json",
        "chosen/export/manifest.json",
        "fleet/plan.yaml",
    ):
        assert (run / name).exists(), name
    chosen = result["chosen"]
    assert chosen["hardware"]["fps"] >= 2000 and chosen["hardware"]["fits"]
    assert 0.1 < chosen["test"]["ptq_top1"] <= 1 and chosen["test"]["images"] == 10000
    journal = json.loads((run / "search.json").read_text())
    assert len(journal["trace"]) >= 2 and set(journal["phases"]["bundles"]["evaluated"]) == {"conv3", "dw3-pw1"}
    report = (run / "report.md").read_text()
    assert "Co-design for pynq-z1" in report and "trained 1 epoch(s) on 512 training images" in report
    assert "full training set" not in report
    assert result["wall_time_s"] <= result["time_budget_s"]  # every stage inside the budget
    accel = json.loads((run / "chosen/accelerator.json").read_text())
    assert accel["fits"] and accel["config"]["wbits"] == chosen["wbits"]
    hls = chosen["hls"]  # the chosen network's accelerator, generated and checked in C simulation
    assert hls["bit_exact"] and hls["config"]["tm"] == accel["config"]["tm"] and (run / "chosen/hls/net.cpp").exists()
    fpga_branches = result["fleet"]["accepted"]["hls"]
    assert fpga_branches and all(b["device"] == "ultra96-v2" and b["bit_exact"] for b in fpga_branches)
    assert (run / f"fleet/hls/branch{fpga_branches[0]['branch']}/net.cpp").exists()


def test_resume_redoes_nothing_and_refuses_other_settings(search, capsys):
    run, result, fleet = search
    journal = json.loads((run / "search.json").read_text())
    before, search_s = journal["trace"], journal["phases"]["search_time_s"]
    assert main([*SMALL, "--out", str(run), "--resume"]) == 0
    journal = json.loads((run / "search.json").read_text())
    assert journal["trace"][: len(before)] == before
    assert journal["phases"]["search_time_s"] == search_s  # finalists and fleet of earlier sessions not counted as search
    assert journal["result"]["search_time_s"] == search_s
    assert main([*SMALL, "--out", str(run)]) == 2  # without --resume
    assert "--resume" in capsys.readouterr().err
    changed = [a if a != "2000" else "500" for a in SMALL]
    assert main([*changed, "--out", str(run), "--resume"]) == 2
    assert "target_fps" in capsys.readouterr().err


def test_fleet_plan_serves_on_real_workers(search):
    """The plan codesign writes runs unchanged: workers on its addresses, the coordinator from the plan."""
    from edgesplit.data import load_dataset
    from edgesplit.runtime.cluster import LocalCluster
    from edgesplit.runtime.local import LocalModel
    from edgesplit.runtime.plan import load_plan

    run, result, _ = search
    plan = load_plan(run / "fleet" / "plan.yaml")
    accepted = result["fleet"]["accepted"]
    assert [p.replicas[0] for p in plan.parts] == accepted["addresses"]
    for o in result["fleet"]["options"]:  # each branch at its device's widths: FPGA fixed point, CPU float32
        for device, bits, b in zip(o["devices"], o["bits"], o["branch_bits"]):
            assert (bits == "float32") == (b is None) == (device == "raspberry-pi-4")
    images = load_dataset("fashion-mnist", "test").data[:16]
    local = LocalModel(run / "fleet" / "export")
    ref = local(local.prepare(images))
    cluster = LocalCluster(run / "fleet" / "export", pin=False)
    try:
        for p in plan.parts:
            cluster.start_worker(p.name, port=int(p.replicas[0].rsplit(":", 1)[1]))
        with edgesplit.connect(plan) as client:
            got = client.infer(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    finally:
        cluster.stop()
    assert np.abs(got - ref).max() < 1e-4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target-fps", "-1"], "--target-fps must be positive"),
        (["--time-budget", "0s"], "--time-budget must be positive"),
        (["--time-budget", "5"], "--time-budget needs a unit"),
        (["--bundles", "conv5"], "unknown bundle"),
    ],
)
def test_bad_arguments_one_line(tmp_path, capsys, args, message):
    base = ["--device", "pynq-z1", "--target-fps", "100", "--out", str(tmp_path / "o")]
    assert main(["codesign", *base, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_budget_too_small_is_refused_with_the_minimum_and_leaves_nothing(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "o"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgesplit",
            "codesign",
            "--device",
            "pynq-z1",
            "--target-fps",
            "100",
            "--time-budget",
            "10s",
            "--bundles",
            "conv3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = [line for line in proc.stderr.strip().splitlines() if not line.startswith("INFO ")]
    assert proc.returncode == 2 and len(err) == 1 and "Traceback" not in proc.stderr
    assert "too small on this machine" in err[0] and "need at least" in err[0]
    assert not out.exists()  # the measurement's files went with the refusal: the same --out can be used again


def test_budget_sizes_fit_their_shares():
    from edgesplit.codesign import budget

    speed = budget.Speed(train_s_per_image=1e-3, eval_s_per_image=1e-3, fixed_s=2.0, eval_fixed_s=1.0, probe_macs=1000)
    shares = budget.Shares.for_run(extras=False)
    stages = budget.StageBudget.plan(200, shares, speed, finalists=2, extra_trainings=0, final_eval_images=15_000)
    assert stages.explore_s + stages.finals_s == pytest.approx(200 * (1 - shares.wrapup))  # scoring set aside, then shares
    assert stages.finals_s > 2 * speed.eval_s(15_000)
    n = budget.proxy_images(stages.explore_s, speed, bundles=3, wanted=100_000, val_images=1000)
    per_candidate_s = speed.train_s(n) + speed.eval_s(1000)
    assert 0 < n < 100_000 and per_candidate_s * (3 + budget.DESCENT_CANDIDATES) <= stages.explore_s + 1e-6
    epochs, images = budget.final_sizes(120, [1e-3, 2e-3], speed, eval_images=15_000, available=55_000)
    spent = sum(epochs * (speed.fixed_s + images * s) + speed.eval_s(15_000) for s in (1e-3, 2e-3))
    assert epochs == 1 and budget.MIN_FINAL_IMAGES <= images < 55_000 and spent <= 120 + 1e-6
    assert budget.final_sizes(1e6, [1e-3], speed, 15_000, 55_000) == (10, 55_000)  # all images, at most 10 epochs
    need = budget.minimum_budget_s(shares, speed, 3, 1000, 2, 15_000)
    with pytest.raises(EdgesplitError, match="need at least"):
        budget.check_budget(need * 0.9, shares, speed, 3, 1000, 2, 15_000)
    budget.check_budget(need * 1.01, shares, speed, 3, 1000, 2, 15_000)


def test_cpu_device_is_refused_as_the_accelerator_target(tmp_path, capsys):
    assert main(["codesign", "--device", "raspberry-pi-4", "--target-fps", "10", "--out", str(tmp_path / "o")]) == 2
    assert "put CPU devices in --fleet" in capsys.readouterr().err


def test_interrupted_search_resumes_where_it_stopped(tmp_path):
    """Ctrl-C in the middle of the search keeps every evaluation; --resume replays none of them."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = [*SMALL, "--out", str(out)]
    args[args.index("conv3,dw3-pw1")] = "conv3"
    args[args.index("200s")] = "90s"  # one bundle, one finalist, no fleet: a smaller budget does
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # a child that hangs is made to say where (SIGABRT below)
    # Ctrl-C reaches the child even when this test runs in a background job, whose children inherit SIGINT ignored
    # (then the child would run to the end, or past the wait below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgesplit", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "search.json").exists() and json.loads((out / "search.json").read_text())["trace"]:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=30)
            pytest.fail("codesign did not stop on Ctrl-C within 120 s; where it was:\n" + err.decode(errors="replace")[-4000:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode == 0:
        pytest.skip("the search finished before it could be interrupted")
    assert proc.returncode == 130 and b"--resume" in err
    before = json.loads((out / "search.json").read_text())
    assert before["trace"] and "result" not in before
    assert main([*args, "--resume"]) == 0
    after = json.loads((out / "search.json").read_text())
    assert after["trace"][: len(before["trace"])] == before["trace"]
    assert after["spent_s"] >= before["spent_s"] and "result" in after
