"""The CLI of ``bench``: the benchmarks that write JSON (docs/benchmarks.md)."""

from __future__ import annotations


from edgesplit.bench.config import AbuseBench, FaultsBench, Int8Bench, ParityBench, ScaleBench, ServeBench, StrategiesBench
from edgesplit.cli.common import add_dataclass_options, dataclass_from_args, write_json


def cmd_bench_serve(args) -> None:
    from edgesplit.bench.serve import bench_serve, text_report
    from edgesplit.runtime.tuning import keep_heap

    cfg = dataclass_from_args(ServeBench, args)
    keep_heap()  # the coordinator and the unsplit baseline run in this process: both get the same heap settings
    _report(bench_serve(cfg), text_report, args)


def cmd_bench_faults(args) -> None:
    from edgesplit.bench.faults import bench_faults, text_report

    _report(bench_faults(dataclass_from_args(FaultsBench, args)), text_report, args)


def cmd_bench_abuse(args) -> None:
    from edgesplit.bench.abuse import bench_abuse, text_report

    _report(bench_abuse(dataclass_from_args(AbuseBench, args)), text_report, args)


def cmd_bench_int8(args) -> None:
    from edgesplit.bench.int8 import bench_int8, text_report

    _report(bench_int8(dataclass_from_args(Int8Bench, args, checkpoint=args.checkpoint)), text_report, args)


def cmd_bench_strategies(args) -> None:
    from edgesplit.bench.strategies import bench_strategies, text_report

    _report(bench_strategies(dataclass_from_args(StrategiesBench, args)), text_report, args)


def cmd_bench_scale(args) -> None:
    from edgesplit.bench.scale import bench_scale, text_report

    _report(bench_scale(dataclass_from_args(ScaleBench, args)), text_report, args)


def cmd_bench_parity(args) -> None:
    from edgesplit.bench.parity import bench_parity, text_report

    _report(bench_parity(dataclass_from_args(ParityBench, args, export=args.export)), text_report, args)


def _report(r: dict, text_report, args) -> None:
    print(text_report(r))
    if args.json:
        write_json(r, args.json)


JSON_HELP = "write the numbers as JSON (to a file, or stdout with no value)"


def register(sub) -> None:
    s = sub.add_parser("bench", help="benchmarks that write JSON (see docs/benchmarks.md)")
    bench = s.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, helptext, cls, func in (
        ("serve", "branch compute vs end-to-end latency and throughput over local workers", ServeBench, cmd_bench_serve),
        ("faults", "coded vs uncoded AlexNet FC layers under stragglers and a killed worker", FaultsBench, cmd_bench_faults),
        ("abuse", "a worker under malformed, oversized and slow clients beside good traffic", AbuseBench, cmd_bench_abuse),
        ("int8", "float32 vs int8 QDQ parts in ONNX Runtime: latency per part and test accuracy", Int8Bench, cmd_bench_int8),
        (
            "strategies",
            "split, pipeline, data-parallel and single on emulated devices and links (root)",
            StrategiesBench,
            cmd_bench_strategies,
        ),
        ("scale", "planning time against fleet size: hardware model table and allocation", ScaleBench, cmd_bench_scale),
        ("parity", "learned parity branches: a data branch's worker killed or frozen mid-run", ParityBench, cmd_bench_parity),
    ):
        b = bench.add_parser(name, help=helptext)
        if cls is ParityBench:
            b.add_argument("export", help="an export of a split model with parity branches (`add-parity`, then `export`)")
        if cls is Int8Bench:
            b.add_argument(
                "checkpoint", help="a checkpoint (speed and accuracy), or a model name with --input (random weights, speed only)"
            )
        add_dataclass_options(b, cls)
        b.add_argument("--json", nargs="?", const="-", help=JSON_HELP)
        b.set_defaults(func=func)
