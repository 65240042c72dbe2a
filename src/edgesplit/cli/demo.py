"""The CLI of ``demo``: the main job."""

from __future__ import annotations


from edgesplit.cli.common import add_dataclass_options, dataclass_from_args, write_json
from edgesplit.demo.config import DemoConfig


def cmd_demo(args) -> None:
    from edgesplit.demo.run import run_demo
    from edgesplit.runtime.tuning import keep_heap

    keep_heap()  # the coordinator (and the in-process baselines) run in this process

    modes = ("split",) if args.split_only else ("nonsplit",) if args.nonsplit else ("in-process",) if args.in_process else None
    cfg = dataclass_from_args(DemoConfig, args, interactive=args.interactive, **({"modes": modes} if modes else {}))
    report = run_demo(cfg, json_path=None if args.json == "-" else args.json)
    if args.json == "-":
        write_json(report, "-")


def register(sub) -> None:
    s = sub.add_parser("demo", help="the main job: split model over local workers vs unsplit, on the test set")
    add_dataclass_options(s, DemoConfig)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--split-only", action="store_true", help="only the split model over local workers")
    g.add_argument("--nonsplit", action="store_true", help="only the unsplit model (ONNX Runtime, all cores)")
    g.add_argument("--in-process", action="store_true", help="only the split model in this process (Capella's --cpu)")
    g.add_argument("--interactive", action="store_true", help="type image paths, get the top-3 classes")
    s.add_argument("--json", nargs="?", const="-", help="write the numbers as JSON (to a file, or stdout with no value)")
    s.set_defaults(func=cmd_demo)
