"""The testbed with real namespaces, shaped links, cgroups and worker processes (root only: CI runs as root)."""

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists(),
    reason="the testbed needs root (CI runs as root) and the cgroup v1 CPU controller",
)

SHAPE = (3, 96, 96)  # large enough that the payload, not the protocol's headers, is most of what a link carries
LINK_MBPS = 20
REQUESTS = 20


def _fleet(tmp_path: Path, cpu_share: float = 0.5) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(f"link_mbps: {LINK_MBPS}\ndevices:\n  - {{device: raspberry-pi-4, count: 2, cpu_share: {cpu_share}}}\n")
    return path


def _left_behind(name: str) -> list[str]:
    netns = [
        n
        for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        if n.startswith(f"es-{name}-")
    ]
    links = [
        ln
        for ln in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
        if f" es{name}" in ln
    ]
    cgroups = list(Path("/sys/fs/cgroup/cpu/edgesplit-testbed").glob(f"{name}-*"))
    state = list(Path("/run/edgesplit").glob(f"testbed-{name}*"))
    return [*netns, *links, *map(str, cgroups), *map(str, state)]


@pytest.fixture(scope="module")
def export_96(tmp_path_factory):
    from edgesplit.bench.serve import _export_random

    return _export_random("resnet18-split2", SHAPE, 10, tmp_path_factory.mktemp("tb") / "split")


def test_a_split_model_over_two_emulated_devices(export_96, tmp_path):
    """Two namespaced workers behind 20 Mbit/s links answer as the model in this process does; the links carry the
    bytes the profile counts (within 10%), no faster than their rate; down leaves nothing."""
    import torch

    import edgesplit
    from edgesplit.models import create_model
    from edgesplit.models.profile import communication
    from edgesplit.runtime.local import LocalModel
    from edgesplit.runtime.plan import make_plan
    from edgesplit.testbed import Testbed

    x = np.random.default_rng(0).integers(0, 256, (REQUESTS, 1, *SHAPE), dtype=np.uint8)  # (N, 1, C, H, W)
    local = LocalModel(export_96)
    with Testbed(_fleet(tmp_path), "ci") as tb:
        assert [d.namespace for d in tb.devices] == ["es-ci-0", "es-ci-1"] and all(d.cpu_share == 0.5 for d in tb.devices)
        addresses = [tb.start_worker(i, export_96, f"branch{i}") for i in range(2)]
        pids = list(tb.workers.values())
        with edgesplit.connect(make_plan(str(export_96), addresses)) as client:
            client.infer(x[0])  # connections up before counting
            before, t0 = tb.link_bytes(), time.perf_counter()
            got = [client.infer(xi) for xi in x]
            wall_s, after = time.perf_counter() - t0, tb.link_bytes()
    for xi, g in zip(x, got):
        np.testing.assert_allclose(g, local(local.pre.normalize(xi)), rtol=1e-4, atol=1e-4)
    carried = sum(after[ns][k] - before[ns][k] for ns in after for k in after[ns])
    kw = {"num_classes": 10, "in_chans": SHAPE[0], "input_size": SHAPE[1:]}
    with torch.no_grad():
        counted = communication(create_model("resnet18-split2", **kw), create_model("resnet18", **kw), SHAPE, 1)
    expected = REQUESTS * counted["split"]["total_bytes"]
    assert expected <= carried <= 1.10 * expected, (carried, expected)
    per_link_bits = max(after[ns]["to_device"] - before[ns]["to_device"] for ns in after) * 8
    assert wall_s >= 0.9 * per_link_bits / (LINK_MBPS * 1e6)  # the shaper held each link to its rate
    assert _left_behind("ci") == []
    assert all(not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text() for pid in pids)


def test_down_cleans_what_a_crashed_run_left(export_96, tmp_path):
    """A testbed whose process died without `down` (its record, namespaces, cgroups and a detached worker left
    behind) is cleaned by the next `down` of its name; `up` of the same name does the same first."""
    from edgesplit.testbed import Testbed, down

    tb = Testbed(_fleet(tmp_path), "crash")
    tb.up()
    tb.start_worker(0, export_96, "branch0", die_with_us=False)  # outlives us, as `testbed up --export` does
    pid = tb.workers[0]
    assert _left_behind("crash")
    Testbed(_fleet(tmp_path), "crash").up()  # the stale one is removed before the new one is made
    time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    removed = down("crash")
    assert any(r.startswith("namespace es-crash-") for r in removed) and _left_behind("crash") == []
    assert down("crash") == []  # nothing left to remove


def test_bad_testbed_names_and_fleets_are_one_line(tmp_path, capsys):
    from edgesplit.cli import main

    assert main(["testbed", "up", str(_fleet(tmp_path)), "--name", "Has-Caps"]) == 2
    assert "1 to 6 lower-case letters or digits" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("link_mbps: 10\ndevices:\n  - {device: raspberry-pi-4, cpu_share: 3}\n")
    assert main(["testbed", "up", str(tmp_path / "bad.yaml"), "--name", "bad"]) == 2
    assert "cpu_share of device 0 must be between 0.01 and 1" in capsys.readouterr().err
    assert _left_behind("bad") == []
