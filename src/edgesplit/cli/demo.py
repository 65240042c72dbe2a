"""The CLI of ``demo``: the main job."""

from __future__ import annotations


from edgesplit.cli.common import write_json


def cmd_demo(args) -> None:
    from edgesplit.demo import DemoConfig, run_demo
    from edgesplit.runtime.tuning import keep_heap

    keep_heap()  # the coordinator (and the in-process baselines) run in this process

    modes = ("split",) if args.split_only else ("nonsplit",) if args.nonsplit else ("in-process",) if args.in_process else None
    cfg = DemoConfig(
        work_dir=args.work_dir,
        data_dir=args.data_dir,
        limit=args.limit,
        retrain=args.retrain,
        images_dir=args.images,
        interactive=args.interactive,
        **({"modes": modes} if modes else {}),
    )
    report = run_demo(cfg, json_path=None if args.json == "-" else args.json)
    if args.json == "-":
        write_json(report, "-")


def register(sub) -> None:
    s = sub.add_parser("demo", help="the main job: split model over local workers vs unsplit, on the test set")
    s.add_argument("--work-dir", default="runs/demo", help="where the cached checkpoints and exports live")
    s.add_argument("--data-dir", help="Fashion-MNIST folder")
    s.add_argument(
        "--test-images", "--limit", dest="limit", type=int, metavar="N", help="use only the first N test images (default: all)"
    )
    s.add_argument("--images", metavar="DIR", help="a folder of JPEG/PNG images instead of the test set")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--split-only", action="store_true", help="only the split model over local workers")
    g.add_argument("--nonsplit", action="store_true", help="only the unsplit model (ONNX Runtime, all cores)")
    g.add_argument("--in-process", action="store_true", help="only the split model in this process (Capella's --cpu)")
    g.add_argument("--interactive", action="store_true", help="type image paths, get the top-3 classes")
    s.add_argument("--retrain", action="store_true", help="ignore the cached checkpoints")
    s.add_argument("--json", nargs="?", const="-", help="write the numbers as JSON (to a file, or stdout with no value)")
    s.set_defaults(func=cmd_demo)
