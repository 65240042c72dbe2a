"""The CLI of ``codesign``: a network and its accelerator for a speed target, and a fleet plan."""

from __future__ import annotations

import sys
from pathlib import Path

from edgesplit.cli.common import add_dataclass_options, dataclass_from_args, write_json
from edgesplit.codesign.config import CodesignConfig, ProxyTraining
from edgesplit.options import parse_duration  # noqa: F401 (the CLI's API: tests use it)


def cmd_codesign(args) -> None:
    from edgesplit.codesign.report import summary_text
    from edgesplit.codesign.search import run_codesign

    proxy = dataclass_from_args(ProxyTraining, args)
    cfg = dataclass_from_args(CodesignConfig, args, device=args.device, target_fps=args.target_fps, proxy=proxy)
    try:
        r = run_codesign(cfg, args.out, resume=args.resume, progress=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(
            f"edgesplit: codesign interrupted; everything evaluated is kept in {args.out}/search.json: "
            "run the same command with --resume to continue",
            file=sys.stderr,
        )
        raise
    print(summary_text(r, Path(args.out)))
    if args.json:
        write_json(r, args.json)


def register(sub) -> None:
    s = sub.add_parser(
        "codesign",
        help="search a network and its FPGA accelerator for a speed target; plan a fleet",
        description="Bundle selection, stochastic coordinate descent with the hardware model in the loop, "
        "finalists trained longer; writes OUT/chosen/, report.md, pareto.png. Interrupt it "
        "any time and rerun with --resume.",
    )
    s.add_argument("--device", required=True, help="the FPGA board the accelerator is designed for")
    s.add_argument("--target-fps", type=float, required=True, help="lowest acceptable frames per second")
    add_dataclass_options(s, CodesignConfig)
    add_dataclass_options(s, ProxyTraining)
    s.add_argument("--out", required=True, help="output folder (also the resume state)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted search in --out")
    s.add_argument("--json", nargs="?", const="-", help="write the result as JSON (to a file, or stdout with no value)")
    s.set_defaults(func=cmd_codesign)
