"""The CLI of ``testbed``: emulated devices and links on this machine (network namespaces, shaped links, CPU quotas)."""

from __future__ import annotations

from dataclasses import asdict

from edgesplit.cli.common import write_json
from edgesplit.testbed import DEFAULT_NAME


def cmd_testbed_up(args) -> None:
    from edgesplit.runtime.plan import make_plan
    from edgesplit.testbed import Testbed

    tb = Testbed(args.fleet, args.name, args.link_mbps, args.devices_dir)
    devices = tb.up()
    try:
        addresses = []
        if args.export:
            parts = _parts(args.export)
            if len(parts) > len(devices):
                raise _too_few(parts, devices)
            for d, part in zip(devices, parts):
                addresses.append(tb.start_worker(d.index, args.export, part, die_with_us=False))
            make_plan(args.export, addresses).write(args.out)
    except BaseException:
        tb.down()
        raise
    for d in devices:
        print(
            f"{d.namespace}: {d.device}, link {d.link_mbps:g} Mbit/s, {d.cpu_share:.0%} of a core, "
            f"worker address {d.address}" + (f" ({parts[d.index]})" if args.export and d.index < len(parts) else "")
        )
    if args.export:
        print(f"wrote {args.out}; serve it with `edgesplit serve --plan {args.out}`; remove it all with `edgesplit testbed down`")
    if args.json:
        write_json({"name": args.name, "devices": [asdict(d) for d in devices]}, args.json)


def _parts(export: str) -> list[str]:
    from edgesplit.manifest import load_manifest

    return [p for s in load_manifest(export).stages if not s.local for p in s.parts]


def _too_few(parts, devices):
    from edgesplit.errors import EdgesplitError

    return EdgesplitError(
        f"the export has {len(parts)} remote parts and the fleet {len(devices)} devices; give a fleet with more"
    )


def cmd_testbed_down(args) -> None:
    from edgesplit.testbed import down

    removed = down(args.name)
    print(f"testbed {args.name}: removed " + (", ".join(removed) if removed else "nothing (it was not up)"))


def register(sub) -> None:
    s = sub.add_parser("testbed", help="emulated devices on this machine: namespaces, shaped links, CPU quotas (root)")
    tb = s.add_subparsers(dest="testbed", required=True, metavar="ACTION")
    b = tb.add_parser("up", help="make a fleet file's devices; with --export, start a worker for each part and write a plan")
    b.add_argument("fleet", help="fleet YAML (the format of `codesign --fleet`; an entry may set cpu_share)")
    b.add_argument("--name", default=DEFAULT_NAME, help="testbed name, 1-6 lower-case letters or digits")
    b.add_argument("--link-mbps", type=float, help="every link's rate in Mbit/s (default: the fleet file's link_mbps)")
    b.add_argument("--export", help="an export folder: one worker per remote part, on the devices in order")
    b.add_argument("--out", default="plan.yaml", help="the plan written with --export (default plan.yaml)")
    b.add_argument("--devices-dir", help="a folder of your own device YAML files")
    b.add_argument("--json", nargs="?", const="-", help="write the devices as JSON (to a file, or stdout with no value)")
    b.set_defaults(func=cmd_testbed_up)
    b = tb.add_parser("down", help="stop the workers and remove the namespaces, links, qdiscs and cgroups")
    b.add_argument("--name", default=DEFAULT_NAME, help="testbed name")
    b.set_defaults(func=cmd_testbed_down)
