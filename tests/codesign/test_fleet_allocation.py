"""Fleet allocation by kinds of devices (issue 20 part 1): the same throughput as trying every set of devices."""

import numpy as np
import pytest
import yaml

from edgesplit.codesign.fleet import allocate, allocate_exhaustive, load_fleet, rate_table

BITS = [(8, 8), (6, 6)]


def fleet_file(tmp_path, counts: dict[str, int], link_mbps: float = 1000.0):
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"link_mbps": link_mbps, "devices": [{"device": d, "count": n} for d, n in counts.items()]}))
    return load_fleet(path)


def synthetic_rate(seed: int):
    """A stand-in for the hardware model (the collaborator; the allocation is what is tested): each kind of device
    and width a base FPS, falling as the share of the width grows (with a fixed cost per frame); an FPGA branch
    at 6 bits faster than at 8; some shares that do not fit (0 FPS)."""
    rng = np.random.default_rng(seed)
    base = {}

    def rate(device, bits, share: float) -> float:
        key = (device.name, bits)
        if key not in base:
            base[key] = (rng.uniform(20, 400), rng.uniform(0.0, 0.004), rng.uniform(0.5, 1.01))
        fps, overhead_s, fits_up_to = base[key]
        if share > fits_up_to:
            return 0.0
        speedup = 1.3 if bits == (6, 6) else 1.0
        return speedup / (share / fps + overhead_s)

    return rate


KINDS = ["pynq-z1", "ultra96-v2", "raspberry-pi-4", "jetson-nano-cpu"]


@pytest.mark.parametrize("seed", range(12))
def test_allocation_by_kinds_matches_every_set_of_devices(tmp_path, seed):
    """Small fleets of unequal devices, FPGA bit widths to choose, links from ample to tight: the best option of
    each number of branches, and the best of all, reach the exhaustive search's rate."""
    rng = np.random.default_rng(100 + seed)
    kinds = rng.choice(KINDS, size=rng.integers(1, 4), replace=False)
    counts = {str(k): int(rng.integers(1, 4)) for k in kinds}
    fleet = fleet_file(tmp_path, counts, link_mbps=float(rng.choice([1000.0, 100.0, 10.0])))
    table = rate_table(synthetic_rate(seed), fleet, BITS)
    fast = allocate(table, fleet, 3 * 32 * 32, 4 * 256)
    slow = allocate_exhaustive(table, fleet, 3 * 32 * 32, 4 * 256)
    assert bool(fast) == bool(slow)
    if not slow:
        return
    assert fast[0]["fps"] >= slow[0]["fps"] - 1e-9
    for k in {o["k"] for o in slow}:
        assert max(o["rate"] for o in fast if o["k"] == k) >= max(o["rate"] for o in slow if o["k"] == k) - 1e-9
    for o in fast:
        assert sum(o["shares"]) == pytest.approx(1.0) and len(set(o["addresses"])) == o["k"]
        # every branch really reaches the option's rate at the share it is given (shares only shrink when scaled)
        for name, bits, share in zip(o["devices"], o["branch_bits"], o["shares"]):
            rates = table[(name, tuple(bits) if bits else None)]
            at_least = min((s for s in rates if s >= share - 1e-9), default=None)
            assert at_least is not None and rates[at_least] >= o["rate"] - 1e-9


def test_the_link_bounds_a_fleet_and_says_so(tmp_path):
    """At 10 Mbit/s a 32x32 colour input sent to each of k branches caps the fleet, whatever the devices."""
    fleet = fleet_file(tmp_path, {"raspberry-pi-4": 8}, link_mbps=10.0)
    table = rate_table(lambda device, bits, share: 50.0 / share, fleet, BITS)
    options = allocate(table, fleet, 3 * 32 * 32, 4 * 256)
    best = options[0]
    assert best["bound"] == "link"
    assert best["link_fps"] == pytest.approx(10e6 / 8 / (best["k"] * 3 * 32 * 32 + 4 * 256))
    assert all(o["fps"] <= o["link_fps"] for o in options)


def test_a_thousand_devices(tmp_path):
    """1,000 devices of four kinds: the rates' table has a row per kind and width, whatever the count (how long it
    takes is measured by `edgesplit bench scale`)."""
    counts = {"pynq-z1": 400, "ultra96-v2": 100, "raspberry-pi-4": 400, "jetson-nano-cpu": 100}
    fleet = fleet_file(tmp_path, counts)
    table = rate_table(synthetic_rate(0), fleet, BITS)
    assert len(table) == 2 * 2 + 2  # FPGA kinds at two widths, CPU kinds in float
    options = allocate(table, fleet, 3 * 32 * 32, 4 * 256)
    assert options and max(o["k"] for o in options) <= len(fleet.devices)
    assert len({o["k"] for o in options}) == len(options)  # one option per number of branches
