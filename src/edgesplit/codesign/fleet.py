"""Fleet allocation: the chosen network split into branches over a fleet of devices.

For every number of branches k and every set of k devices from the fleet, the
branch widths are balanced so that all branches reach the same rate: each device's
FPS as a function of its branch's share of the channels comes from the hardware
model (the accelerator model for FPGA boards, the roofline for CPUs), and the
highest rate whose shares add up to the full width wins. The link carries one
uint8 input per branch and the float32 features back. Each FPGA branch may also run
at narrower bit widths than the searched network (faster on its board, so it takes a
wider share); CPU branches run float32. Options are then tried from the highest
throughput down: the split network is trained with the finalists' recipe and kept
when its fixed-point validation accuracy, each branch at its own widths, reaches the floor.

Fleet file (YAML)::

    link_mbps: 1000                       # shared link of the coordinator (optional)
    devices:
      - {device: pynq-z1, count: 2, addresses: ["10.0.0.11:50051", "10.0.0.12:50051"]}
      - {device: ultra96-v2, addresses: ["10.0.0.13:50051"]}
      - {device: raspberry-pi-4}          # addresses default to 127.0.0.1:50051, 50052, ...
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from edgesplit.codesign.space import Candidate
from edgesplit.errors import EdgesplitError

SHARE_STEPS = 16  # branch widths are searched in sixteenths of the full width
MAX_TRAINED_OPTIONS = 2  # split shapes trained before falling back to the best single device
MAX_CHECKED_OPTIONS = 8  # (shape, per-branch widths) options whose fixed-point accuracy is measured
SHOWN_OPTIONS = 10
FPGA_BITS = ((16, 16), (16, 8), (12, 8), (10, 8), (8, 8), (6, 6))  # (weight, feature-map) widths an FPGA branch may use
DEFAULT_PORT = 50051


@dataclass(frozen=True)
class FleetDevice:
    device: object  # FpgaDevice | CpuDevice
    address: str
    cpu_share: float | None = None  # the testbed: the share of one core that emulates it (None: from the catalog)


@dataclass(frozen=True)
class Fleet:
    devices: tuple[FleetDevice, ...]
    link_mbps: float = 1000.0


def load_fleet(path: str | Path, devices_dir: str | None = None) -> Fleet:
    from edgesplit.hardware.catalog import get_device

    path = Path(path)
    if not path.exists():
        raise EdgesplitError(f"fleet file {path} not found; see `edgesplit codesign --help` for its format")
    try:
        d = yaml.safe_load(path.read_text())
        entries = d["devices"]
        link = float(d.get("link_mbps", 1000.0))
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        raise EdgesplitError(
            f"{path} is not a valid fleet file ({type(err).__name__}: {err}); it needs a devices: list"
        ) from None
    out, port = [], DEFAULT_PORT
    for i, e in enumerate(entries or []):
        if not isinstance(e, dict) or "device" not in e:
            raise EdgesplitError(f"{path}: devices[{i}] needs a device: name")
        try:
            count = int(e.get("count", len(e.get("addresses", [])) or 1))
        except (TypeError, ValueError):
            count = 0
        if count < 1:
            raise EdgesplitError(f"{path}: devices[{i}] count must be a whole number of at least 1, got {e.get('count')!r}")
        addresses = list(e.get("addresses", []))
        if addresses and len(addresses) != count:
            raise EdgesplitError(f"{path}: devices[{i}] has count {count} but {len(addresses)} addresses")
        dev = get_device(e["device"], devices_dir)
        if not addresses:
            addresses = [f"127.0.0.1:{port + j}" for j in range(count)]
            port += count
        share = e.get("cpu_share")
        if share is not None and not isinstance(share, (int, float)):
            raise EdgesplitError(f"{path}: devices[{i}] cpu_share must be a number (a share of one core), got {share!r}")
        out.extend(FleetDevice(dev, a, float(share) if share is not None else None) for a in addresses)
    if not out:
        raise EdgesplitError(f"{path} lists no devices")
    if link <= 0:
        raise EdgesplitError(f"{path}: link_mbps must be positive")
    return Fleet(tuple(out), link)


def balance(rates: list[dict[float, float]]) -> tuple[float, list[float]] | None:
    """Shares (summing to 1) that maximise the slowest device's rate; ``rates[i][share]`` is device i's FPS.

    Returns (rate on the share grid, shares) or None when the devices cannot cover the full width.
    """
    levels = sorted({r for table in rates for r in table.values() if r > 0}, reverse=True)
    for t in levels:  # the highest common rate whose widest affordable shares cover the network
        shares = [max((s for s, r in table.items() if r >= t), default=0.0) for table in rates]
        if min(shares) > 0 and sum(shares) >= 1.0 - 1e-9:
            total = sum(shares)
            return t, [s / total for s in shares]
    return None


def bit_options(chosen: Candidate) -> list[tuple[int, int]]:
    """Widths an FPGA branch may use: the searched network's, and the cheaper ones of :data:`FPGA_BITS`
    (never wider: the search measured accuracy at the chosen widths)."""
    cheaper = [(w, f) for w, f in FPGA_BITS if w <= chosen.wbits and f <= chosen.fbits]
    return sorted({(chosen.wbits, chosen.fbits), *cheaper}, reverse=True)


RateTable = dict  # (device name, bits or None) -> {share of the width: FPS}


def rate_table(rate, fleet: Fleet, options_bits: list[tuple[int, int]]) -> RateTable:
    """FPS of each kind of device of ``fleet`` (at each of ``options_bits`` for an FPGA board, float for a CPU) for
    each share of the width on the grid: ``rate(device, bits, share)``. Devices of one kind are interchangeable,
    so the table grows with the kinds, not with the fleet."""
    grid = [i / SHARE_STEPS for i in range(1, SHARE_STEPS + 1)]
    table: RateTable = {}
    for fd in fleet.devices:
        for bits in options_bits if fd.device.kind == "fpga" else [None]:
            key = (fd.device.name, bits)
            if key not in table:
                table[key] = {s: rate(fd.device, bits, s) for s in grid}
    return table


def _link_fps(fleet: Fleet, k: int, in_bytes: float, feat_bytes: float) -> float:
    """Requests/s the coordinator's link carries with k branches: the input sent to each (unicast: k copies) and
    the features back."""
    return fleet.link_mbps * 1e6 / 8 / (k * in_bytes + feat_bytes)


def _option(fleet: Fleet, members: list[tuple[int, tuple[int, int] | None, float]], rate: float, link_fps: float) -> dict:
    """One allocation: (device index, bits, share on the grid) per branch, the shares scaled to add up to 1."""
    total = sum(s for _, _, s in members)
    return {
        "k": len(members),
        "devices": [fleet.devices[i].device.name for i, _, _ in members],
        "addresses": [fleet.devices[i].address for i, _, _ in members],
        "shares": [s / total for _, _, s in members],
        "rate": rate,  # every branch reaches at least this FPS (the grid's)
        "link_fps": link_fps,
        "fps": min(rate, link_fps),
        "bound": "link" if link_fps < rate else "devices",
        "branch_bits": [list(b) if b else None for _, b, _ in members],
        "bits": [f"W{b[0]}/F{b[1]}" if b else "float32" for _, b, _ in members],
    }


def allocate(table: RateTable, fleet: Fleet, in_bytes: float, feat_bytes: float) -> list[dict]:
    """For each number of branches k, the devices and bit widths with the highest balanced rate; highest
    throughput first (ties: fewer branches). Devices of one kind are interchangeable and a branch's rate falls
    as its share grows, so for a rate t each device takes the widest share that still reaches t (at its best
    widths: wider bits on ties) and the k devices with the widest shares are the best k: t is feasible with k
    branches when their shares add up to the full width. Each rate on the table is tried once, from the highest
    down, and every k takes the first that is feasible for it: the same rate as trying every set of devices
    (``allocate_exhaustive``), in time that grows with the kinds of devices, not 2^n. No more than
    ``SHARE_STEPS`` branches: each takes at least one step of the width."""
    max_k = min(len(fleet.devices), SHARE_STEPS)  # every share is at least one step: more branches add nothing
    by_kind: dict[str, list[int]] = {}
    for i, fd in enumerate(fleet.devices):
        by_kind.setdefault(fd.device.name, []).append(i)
    levels = sorted({r for t in table.values() for r in t.values() if r > 0}, reverse=True)
    best: dict[int, dict] = {}
    for t in levels:
        widest = []  # per kind: (share, bits, kind) at rate t
        for kind in by_kind:
            choices = [
                (max((s for s, r in rates.items() if r >= t), default=0.0), sum(bits or (0, 0)), bits)
                for (name, bits), rates in table.items()
                if name == kind
            ]
            share, _, bits = max(choices, key=lambda c: (c[0], c[1]))
            if share > 0:
                widest.append((share, bits, kind))
        widest.sort(key=lambda w: -w[0])
        members, covered = [], 0.0
        for share, bits, kind in widest:
            for i in by_kind[kind][: max_k - len(members)]:
                members.append((i, bits, share))
                covered += share
                k = len(members)
                if covered >= 1.0 - 1e-9 and k not in best:
                    best[k] = _option(fleet, list(members), t, _link_fps(fleet, k, in_bytes, feat_bytes))
        if len(best) == max_k:
            break
    return sorted(best.values(), key=lambda o: (-o["fps"], o["k"]))


def allocate_exhaustive(table: RateTable, fleet: Fleet, in_bytes: float, feat_bytes: float) -> list[dict]:
    """Every set of devices and, per FPGA branch, bit widths, balanced (:func:`balance`); highest throughput first.
    2^n sets: the reference :func:`allocate` is tested against, on small fleets."""
    options, seen = [], set()
    n = len(fleet.devices)
    bit_choices = {
        name: sorted({b for (d, b) in table if d == name}, key=lambda b: b or (0, 0), reverse=True) for name, _ in table
    }
    for k in range(1, n + 1):
        for subset in itertools.combinations(range(n), k):
            names = [fleet.devices[i].device.name for i in subset]
            for bits in itertools.product(*(bit_choices[name] for name in names)):
                key = tuple(sorted(zip(names, (b or (0, 0) for b in bits))))
                if key in seen:  # the same kinds and widths in another order, or another copy of a board
                    continue
                seen.add(key)
                found = balance([table[(name, b)] for name, b in zip(names, bits)])
                if found is None:
                    continue
                t, shares = found
                members = [(i, b, s) for i, b, s in zip(subset, bits, shares)]
                options.append(_option(fleet, members, t, _link_fps(fleet, k, in_bytes, feat_bytes)))
    return sorted(options, key=lambda o: (-o["fps"], o["k"], -sum(b[0] + b[1] for b in o["branch_bits"] if b)))


def fleet_options(ev, chosen: Candidate, fleet: Fleet) -> list[dict]:
    """:func:`allocate` with the hardware model of ``ev`` for the chosen network, each option's branches then
    costed at their exact shares (``branch_fps``; ``fps`` is their slowest or the link's)."""
    options_bits = bit_options(chosen)

    def rate(device, bits, share: float) -> float:
        hw = ev.hardware(_at_bits(chosen, bits), device=device, width_mult=share)
        return hw.fps if hw.fits else 0.0

    h, w = chosen.input_size(ev.image_hw)
    in_bytes = ev.in_chans * h * w  # uint8
    feat_bytes = 4 * chosen.channels[-1]
    table = rate_table(rate, fleet, options_bits)
    options = allocate(table, fleet, in_bytes, feat_bytes)
    searched = (chosen.wbits, chosen.fbits)  # the searched network whole on one board: the fallback
    alone = [(r[1.0], i) for i, d in enumerate(fleet.devices) if (r := table.get((d.device.name, searched))) and r[1.0] > 0]
    if alone and not any(o["k"] == 1 and o["branch_bits"] == [list(searched)] for o in options):
        fps, i = max(alone)
        options.append(_option(fleet, [(i, searched, 1.0)], fps, _link_fps(fleet, 1, in_bytes, feat_bytes)))
        options.sort(key=lambda o: (-o["fps"], o["k"]))
    devices = {d.device.name: d.device for d in fleet.devices}
    for o in options[:SHOWN_OPTIONS]:  # the ones shown and tried first: the exact rate at their shares
        o["branch_fps"] = [
            rate(devices[d], tuple(b) if b else None, s) for d, b, s in zip(o["devices"], o["branch_bits"], o["shares"])
        ]
        o["fps"] = min(min(o["branch_fps"]), o["link_fps"])
    return options


def _at_bits(chosen: Candidate, bits: tuple[int, int] | None) -> Candidate:
    """The network at an FPGA branch's widths (None: a CPU branch, costed as the chosen network in float)."""
    return chosen if bits is None else replace(chosen, wbits=bits[0], fbits=bits[1])


def quant_overrides(option: dict) -> dict[str, tuple[int, int] | None]:
    """QuantNet overrides for a split option: each branch at its device's widths (float on a CPU); the
    concatenation and the head, which the coordinator runs in float32, in float."""
    per_branch = {f"/branches.{i}/": tuple(b) if b else None for i, b in enumerate(option["branch_bits"])}
    return {**per_branch, "": None}


def _branch_accelerators(ev, option: dict, out: Path, fleet) -> list[dict]:
    """Each FPGA branch's accelerator (HLS project, C simulation), at its own widths and the tiling tuned for its board."""
    from edgesplit.hls.build import build_for_design
    from edgesplit.training.checkpoint import load_model

    devices = {d.device.name: d.device for d in fleet.devices}
    model, _ = load_model(option["accuracy"]["run_dir"])
    built = []
    for i, (name, bits) in enumerate(zip(option["devices"], option["branch_bits"])):
        dev = devices[name]
        if dev.kind != "fpga" or not bits:
            continue
        accel = ev.cost_graph(_branch_graph(model, i, ev), dev, tuple(bits), fine=True).accelerator
        if accel is None:
            built.append({"branch": i, "device": name, "error": "no design of this branch fits the board"})
            continue
        part = i if hasattr(model, "branches") else None  # k=1: the whole network
        built.append(
            {
                "branch": i,
                "device": name,
                **build_for_design(option["accuracy"]["run_dir"], out / f"branch{i}", tuple(bits), accel, dev, part, ev.data_dir),
            }
        )
    return built


def _branch_graph(model, i: int, ev):
    from edgesplit.hardware.graph import graph_from_model

    part = model.branches[i] if hasattr(model, "branches") else model  # k=1: the unsplit network is the one part
    return graph_from_model(part, (ev.in_chans, *ev.image_hw), f"branch{i}")


def plan_fleet(
    ev, cfg, chosen_final: dict, epochs: int, out: Path, progress, images: int | None = None, until_s: float = float("inf")
) -> dict:
    """Allocate; then, from the highest throughput down, train each split shape (at most
    :data:`MAX_TRAINED_OPTIONS` of them) and check its fixed-point validation accuracy at the option's
    per-branch widths until one reaches the floor (no more once the journal's time passes ``until_s``); export it
    and write plan.yaml."""
    from edgesplit.codesign.evaluate import train_final
    from edgesplit.manifest import load_manifest
    from edgesplit.export.onnx_export import export_model
    from edgesplit.runtime.plan import PartPlacement, Plan, load_plan
    from edgesplit.training.checkpoint import load_model

    fleet = load_fleet(cfg.fleet, cfg.devices_dir)
    chosen = Candidate.from_dict(chosen_final["candidate"])
    bits = (chosen.wbits, chosen.fbits)
    floor = cfg.accuracy_floor if cfg.accuracy_floor is not None else chosen_final["val"]["ptq_top1"] - 0.02
    options = fleet_options(ev, chosen, fleet)
    progress(f"{len(options)} fleet options; the fastest:")
    for o in options[:SHOWN_OPTIONS]:
        progress(
            f"  k={o['k']}: {', '.join(f'{d} {b}' for d, b in zip(o['devices'], o['bits']))}, shares "
            f"{', '.join(f'{s:.2f}' for s in o['shares'])} -> {o['fps']:.1f} FPS"
        )
    accepted, trained, checked = None, {}, 0
    for o in options:
        if o["k"] == 1 and o["branch_bits"] == [list(bits)]:
            o["accuracy"] = {"val": chosen_final["val"], "test": chosen_final["test"], "run_dir": chosen_final["run_dir"]}
        elif o["k"] == 1 or checked >= MAX_CHECKED_OPTIONS or (checked and ev.journal.spent_s >= until_s):
            continue  # one device at other widths: not searched; or enough options checked, or the time is spent
        else:
            shape = tuple(round(s, 4) for s in o["shares"])
            if shape in trained:
                r = ev.val_and_test(Path(trained[shape]), bits, quant_overrides(o))
                r["run_dir"] = trained[shape]
            elif len(trained) < MAX_TRAINED_OPTIONS:
                kw = {**chosen.model_kwargs(), "k": o["k"], "branch_widths": o["shares"]}
                run = out / f"split{o['k']}_{'-'.join(f'{s:.3f}' for s in shape)}_e{epochs}_n{images}"
                progress(
                    f"training the {o['k']}-branch split (shares {', '.join(f'{s:.2f}' for s in shape)}) for {epochs} epoch(s)"
                )
                r = train_final(
                    ev,
                    "bundlenet-split",
                    kw,
                    chosen.input_size(ev.image_hw),
                    epochs,
                    run,
                    bits,
                    progress,
                    images,
                    quant_overrides(o),
                )
                trained[shape] = r["run_dir"]
            else:
                continue
            o["accuracy"] = {"val": r["val"], "test": r["test"], "run_dir": r["run_dir"]}
            checked += 1
        o["meets_floor"] = o["accuracy"]["val"]["ptq_top1"] >= floor
        progress(
            f"  k={o['k']} ({', '.join(o['bits'])}): val {o['accuracy']['val']['ptq_top1']:.4f} (floor {floor:.4f}), "
            f"test {o['accuracy']['test']['ptq_top1']:.4f}"
        )
        if o["meets_floor"]:
            accepted = o
            break
    if accepted is None:
        raise EdgesplitError(f"no fleet option reached the accuracy floor {floor:.4f}; lower --accuracy-floor")
    model, ckpt = load_model(accepted["accuracy"]["run_dir"])
    export_model(model, ckpt, out / "export")
    parts = load_manifest(out / "export", verify=False).remote_parts
    plan = Plan("export", tuple(PartPlacement(p, (addr,)) for p, addr in zip(parts, accepted["addresses"])))
    plan.write(out / "plan.yaml")
    load_plan(out / "plan.yaml")  # the runtime accepts it
    accepted["hls"] = _branch_accelerators(ev, accepted, out / "hls", fleet)
    return {
        "floor": floor,
        "options": [o for i, o in enumerate(options) if i < SHOWN_OPTIONS or "accuracy" in o],
        "accepted": accepted,
        "plan": str(out / "plan.yaml"),
    }
