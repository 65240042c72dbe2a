"""The CLI of the distributed runtime: ``worker``, ``serve``, ``plan``."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from edgesplit.cli.common import add_dataclass_options, dataclass_from_args, write_json
from edgesplit.runtime.config import WAIT_READY_S, FaultConfig, WorkerConfig
from edgesplit.runtime.plan import STRATEGIES, PartPlacement, Plan
from edgesplit.errors import EdgesplitError


class _TokenOnCommandLine(argparse.Action):
    """``--token VALUE``: refused without echoing the value (a secret on a command line shows in ps and history)."""

    def __call__(self, parser, namespace, values, option_string=None):
        raise EdgesplitError(
            "there is no --token option (a token on the command line shows in `ps` and shell history): "
            "write it in a file readable only by you and pass --token-file FILE"
        )


def _security_args(s) -> None:
    s.add_argument("--token-file", help="file holding the bearer token every call must carry")
    s.add_argument("--token", action=_TokenOnCommandLine, help=argparse.SUPPRESS)
    s.add_argument("--tls-cert", help="server certificate (PEM)")
    s.add_argument("--tls-key", help="server private key (PEM)")
    s.add_argument("--tls-client-ca", help="require client certificates signed by this CA (PEM)")
    s.add_argument("--insecure", action="store_true", help="allow a non-loopback address without TLS or token")


def _limits_args(s) -> None:
    from edgesplit.runtime.transport.limits import ServerLimits

    add_dataclass_options(s.add_argument_group("limits (what a hostile or broken client can make the server hold)"), ServerLimits)


def _server_limits(args):
    from edgesplit.runtime.transport.limits import ServerLimits

    try:
        return dataclass_from_args(ServerLimits, args)
    except ValueError as err:
        raise EdgesplitError(
            f"{err}; check --max-message-mb, --max-batch, --max-inflight-mb, --idle-timeout-s, "
            f"--max-connections and --max-connection-age-s"
        ) from None


def _server_security(args):
    from edgesplit.runtime.transport.grpc_server import ServerSecurity

    from edgesplit.runtime.secrets import read_token_file

    token = read_token_file(args.token_file) if args.token_file else None
    return ServerSecurity(token, args.tls_cert, args.tls_key, args.tls_client_ca, args.insecure)


def cmd_worker(args) -> None:
    from edgesplit.runtime.tuning import tune_runtime_process

    tune_runtime_process()  # before numpy loads
    import asyncio

    from edgesplit.runtime.worker import die_with_parent, serve_worker

    die_with_parent()
    faults = dataclass_from_args(FaultConfig, args)
    cfg = dataclass_from_args(WorkerConfig, args, source=args.source, part=args.part, limits=_server_limits(args), faults=faults)
    asyncio.run(serve_worker(cfg, _server_security(args)))


def cmd_serve(args) -> None:
    from edgesplit.runtime.tuning import tune_runtime_process

    tune_runtime_process()  # before numpy loads: the coordinator must not take cores from local workers
    import asyncio

    from edgesplit.runtime.serve import serve

    if bool(args.plan) == bool(args.local):
        raise EdgesplitError("pass either --plan plan.yaml or --local EXPORT_DIR")
    if args.poll_ms < 0 or (args.poll_ms and not args.local):
        raise EdgesplitError(
            "--poll-ms takes 0 or more milliseconds and only goes with --local (for remote workers, "
            "pass it to `edgesplit worker`)"
        )
    if args.wait_ready_s <= 0:
        raise EdgesplitError(f"--wait-ready-s must be positive, got {args.wait_ready_s}")
    if args.coordinators < 1:
        raise EdgesplitError(f"--coordinators takes 1 or more processes, got {args.coordinators}")
    if args.dashboard and args.http_port is None:
        raise EdgesplitError("--dashboard is served on the HTTP port: add --http-port PORT (0: any free one)")
    if args.dashboard and args.coordinators > 1:
        raise EdgesplitError("--dashboard shows one coordinator: leave out --coordinators")
    common = (args.plan, args.local, args.host, args.port, _server_security(args), _server_limits(args))
    if args.coordinators > 1:
        from edgesplit.runtime.coordinators import serve_coordinators
        from edgesplit.runtime.serve import READY_LINE

        ready = f"{READY_LINE} model={{model}} coordinators={args.coordinators}{{http}} port={{port}}"
        serve_coordinators(args.coordinators, *common, args.poll_ms, args.wait_ready_s, args.http_port, ready)
    else:
        asyncio.run(serve(*common, args.poll_ms, args.wait_ready_s, args.http_port, dashboard=args.dashboard))


def cmd_plan(args) -> None:
    from edgesplit.runtime.plan import coded_tolerance, make_plan, parts_by_address

    if args.streams is not None or args.fps is not None:
        _plan_groups(args)
        return
    if bool(args.workers) == bool(args.fleet):
        raise EdgesplitError("give the devices either as --workers HOST:PORT ... or as --fleet FLEET.yaml")
    if args.strategy == "auto" and not args.fleet:
        raise EdgesplitError("--strategy auto predicts from the device catalog: give the devices as --fleet FLEET.yaml")
    if args.strategy != "auto" and len(args.exports) > 1:
        raise EdgesplitError(f"{len(args.exports)} exports given; give one, or several with --strategy auto")
    if args.strategy != "auto" and (args.slo_ms is not None or args.json):
        raise EdgesplitError("--slo-ms and --json go with --strategy auto (predict every strategy and pick one)")
    if args.fleet:
        export, strategy, workers, speeds = _plan_from_fleet(args)
    else:
        try:
            speeds = [float(v) for v in args.speeds.split(",")] if args.speeds else None
        except ValueError:
            raise EdgesplitError(
                f"bad --speeds {args.speeds!r}; give one number per worker, comma-separated, e.g. 1,2.5"
            ) from None
        export, strategy, workers = args.exports[0], args.strategy, args.workers
    plan = make_plan(export, workers, speeds, args.timeout_ms, args.input_dtype, strategy)
    plan = replace(plan, export=str(Path(export).resolve()))  # written relative to the plan's own folder
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plan.write(args.out)
    for p in plan.parts:
        print(f"{p.name}: {', '.join(p.replicas)}")
    for address, names in parts_by_address(plan).items():
        print(f"worker at {address}: --part {','.join(names)}")
    for line in coded_tolerance(plan):
        print(line)
    print(f"wrote {args.out}")


def _plan_groups(args) -> None:
    """``--streams S --fps F``: groups of the fleet's devices, a plan each, and the group file naming them."""
    import yaml

    from edgesplit.codesign.fleet import load_fleet
    from edgesplit.codesign.strategies import catalog_cost, fleet_nodes, size_groups

    if args.streams is None or args.fps is None or not args.fleet or len(args.exports) != 1 or args.strategy:
        raise EdgesplitError("--streams S --fps F go together, with --fleet FLEET.yaml and one export (no --strategy)")
    nodes = fleet_nodes(load_fleet(args.fleet, args.devices_dir), args.link_mbps)
    groups = size_groups(args.exports[0], nodes, catalog_cost(args.devices_dir), args.streams, args.fps, in_flight=args.in_flight)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (p, streams) in enumerate(groups):
        plan = Plan(str(Path(p.export).resolve()), tuple(PartPlacement(n, tuple(r)) for n, r in p.placement.items()),
                    timeout_ms=args.timeout_ms, input_dtype=args.input_dtype)  # fmt: skip
        files.append(f"{out.stem}-group{i}.yaml")
        plan.write(out.parent / files[-1])
        print(f"group {i}: {', '.join(a for r in p.placement.values() for a in r)}: {p.throughput_rps:.1f} req/s "
              f"predicted, {streams} stream(s)")  # fmt: skip
    body = {"groups": files, "streams": args.streams, "fps": args.fps, "streams_per_group": [s for _, s in groups]}
    out.write_text(yaml.safe_dump(body, sort_keys=False))
    print(f"wrote {out} ({len(files)} group(s)): `edgesplit serve --plan {out}` spreads the streams over them")


def _plan_from_fleet(args) -> tuple[str, str | None, list[str], list[float]]:
    """The export, strategy, addresses and speeds for a fleet file: with ``auto``, every strategy the exports are
    made for is predicted from the device catalog and the best one chosen (the comparison is printed)."""
    from edgesplit.codesign.fleet import load_fleet
    from edgesplit.codesign.strategies import catalog_cost, fleet_nodes, predict_all, recommend, text_report, whole_ms

    fleet = load_fleet(args.fleet, args.devices_dir)
    nodes = fleet_nodes(fleet, args.link_mbps)
    cost = catalog_cost(args.devices_dir)
    if args.strategy == "auto":
        options = {"timeout_ms": args.timeout_ms, "input_dtype": args.input_dtype}
        predictions = predict_all(args.exports, nodes, cost, in_flight=args.in_flight, plan_options=options)
        choice = recommend(predictions, args.slo_ms)
        print(text_report(predictions, choice))
        if args.json:
            write_json({s: p.to_dict() for s, p in predictions.items()}, args.json)
        export, strategy = predictions[choice[0]].export, choice[0]
    else:
        export, strategy = args.exports[0], args.strategy
    speeds = [1e3 / max(1e-6, whole_ms(export, n, cost)) for n in nodes]
    return export, strategy, [n.address for n in nodes], speeds


def register(sub) -> None:
    s = sub.add_parser("worker", help="serve one model part over KServe v2 gRPC (no torch needed)")
    s.add_argument("source", help="export directory (with --part) or a bare .onnx file")
    s.add_argument("--part", help="part name(s), comma-separated: branch0, branch1, ..., head, model, fc6.0, ...")
    add_dataclass_options(s, WorkerConfig)
    _security_args(s)
    _limits_args(s)
    add_dataclass_options(s.add_argument_group("fault injection (tests and benchmarks)"), FaultConfig)
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("serve", help="serve the whole split model as one KServe v2 endpoint")
    s.add_argument(
        "--plan",
        help="plan.yaml: where each part runs; or a group file (`plan --streams`): a group of devices per copy of the model, streams spread over them",
    )
    s.add_argument("--local", metavar="EXPORT_DIR", help="start local worker processes for this export instead")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)")
    s.add_argument("--port", type=int, default=8001, help="KServe v2 gRPC port (default 8001; 0: any free one)")
    s.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="also serve the KServe v2 HTTP/REST API, and Prometheus /metrics, on this port (0: any free one; default: off)",
    )
    s.add_argument(
        "--poll-ms",
        type=float,
        default=WorkerConfig.poll_ms,
        help="with --local: the workers' --poll-ms (poll for the next request this long after each answer)",
    )
    s.add_argument(
        "--wait-ready-s",
        type=float,
        default=WAIT_READY_S,
        help="wait this long for every worker (progress every 5 s); then a plan with on_missing: degrade "
        "starts without the missing ones and takes each in when it comes up, and one with fail stops",
    )
    s.add_argument(
        "--dashboard",
        action="store_true",
        help="a live page at http://HOST:HTTP_PORT/dashboard: the devices, latency, the last request, degraded "
        "answers; with --local, unplug and restore a worker (needs --http-port)",
    )
    s.add_argument(
        "--coordinators",
        type=int,
        default=1,
        help="coordinator processes on this one address (SO_REUSEPORT: each client connection lands on one of "
        "them); past one core's worth of requests/s",
    )
    _security_args(s)
    _limits_args(s)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser(
        "plan",
        help="write a plan.yaml placing an export's parts on worker addresses; "
        "with --strategy auto --fleet, predict every strategy and pick one",
    )
    s.add_argument(
        "exports",
        nargs="+",
        metavar="EXPORT_DIR",
        help="an export folder (`edgesplit export`); with --strategy auto, one per strategy to compare: a split "
        "model's (split), an unsplit one's (data-parallel, single), one cut into stages (pipeline)",
    )
    devices = s.add_mutually_exclusive_group()
    devices.add_argument(
        "--workers",
        nargs="+",
        metavar="HOST:PORT",
        help="the workers' addresses, one per device (a part goes to each)",
    )
    devices.add_argument(
        "--fleet", metavar="FLEET.yaml", help="the devices as a fleet file: addresses, and speeds from the device catalog"
    )
    s.add_argument("--speeds", help="with --workers: relative device speeds, one per worker, e.g. 2,1")
    add_dataclass_options(s, Plan)
    s.add_argument(
        "--strategy",
        choices=(*STRATEGIES, "auto"),
        help="how the model is spread over the workers (default: what the export is made for): "
        + "; ".join(f"{k}: {v}" for k, v in STRATEGIES.items())
        + "; auto (with --fleet): predict each from the device catalog and the links, print the comparison, "
        "and plan the best (the lowest latency, or with --slo-ms the highest throughput within it)",
    )
    s.add_argument("--slo-ms", type=float, help="with auto: the latency a request must meet, ms")
    s.add_argument("--in-flight", type=int, default=4, help="with auto: requests in flight for the throughput (default 4)")
    s.add_argument("--link-mbps", type=float, help="with --fleet: every device's link rate (default: the fleet file's)")
    s.add_argument("--devices-dir", help="with --fleet: a folder of your own device files (see `edgesplit devices`)")
    s.add_argument("--streams", type=int, help="with --fleet: size groups of devices for this many streams")
    s.add_argument("--fps", type=float, help="with --streams: frames per second of each stream")
    s.add_argument(
        "--json", nargs="?", const="-", help="with auto: write the predictions as JSON (to a file, or stdout with no value)"
    )
    s.add_argument(
        "--out",
        default="plan.yaml",
        help="plan file to write (default plan.yaml); the export path in it is relative to the plan's folder",
    )
    s.set_defaults(func=cmd_plan)
