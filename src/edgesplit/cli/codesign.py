"""The CLI of ``codesign``: a network and its accelerator for a speed target, and a fleet plan."""

from __future__ import annotations

import sys
from pathlib import Path

from edgesplit.cli.common import write_json
from edgesplit.errors import EdgesplitError


def parse_duration(text: str) -> float:
    """'30m', '1h', '90s' -> seconds. A unit is required: a bare number is ambiguous (seconds? minutes?)."""
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1:].isdigit():
        raise EdgesplitError(f"--time-budget needs a unit: {text}s, {text}m or {text}h")
    try:
        if not text or text[-1] not in units:
            raise ValueError
        value = float(text[:-1]) * units[text[-1]]
    except ValueError:
        raise EdgesplitError(f"--time-budget must look like 30m, 1h or 90s, got {text!r}") from None
    if value <= 0:
        raise EdgesplitError(f"--time-budget must be positive, got {text!r}")
    return value


def cmd_codesign(args) -> None:
    from edgesplit.codesign.evaluate import ProxyTraining
    from edgesplit.codesign.search import CodesignConfig, run_codesign

    cfg = CodesignConfig(
        device=args.device,
        target_fps=args.target_fps,
        dataset=args.data,
        data_dir=args.data_dir,
        time_budget_s=parse_duration(args.time_budget),
        max_watts=args.max_watts,
        arch=args.arch,
        bundles=tuple(args.bundles.split(",")) if args.bundles else None,
        finalists=args.finalists,
        final_epochs=args.final_epochs,
        final_images=args.final_images,
        proxy=ProxyTraining(samples=args.proxy_images, val_images=args.proxy_val_images),
        fleet=args.fleet,
        accuracy_floor=args.accuracy_floor,
        baselines=tuple(args.baselines.split(",")) if args.baselines else (),
        seed=args.seed,
        devices_dir=args.devices_dir,
    )
    try:
        r = run_codesign(cfg, args.out, resume=args.resume, progress=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(
            f"edgesplit: codesign interrupted; everything evaluated is kept in {args.out}/search.json: "
            "run the same command with --resume to continue",
            file=sys.stderr,
        )
        raise
    c = r["chosen"]
    print(
        f"chosen: {c['key']}: {c['hardware']['fps']:.1f} FPS on {r['device']}, test top-1 {c['test']['ptq_top1']:.4f} "
        f"(fixed point W{c['wbits']}/F{c['fbits']}), float {c['test']['float_top1']:.4f}"
    )
    if "fleet" in r:
        a = r["fleet"]["accepted"]
        print(f"fleet: {a['k']} branch(es) on {', '.join(a['devices'])}, {a['fps']:.1f} FPS; plan {r['fleet']['plan']}")
    print(
        f"search took {r['wall_time_s'] / 60:.1f} min; report {Path(args.out) / 'report.md'}, plot {Path(args.out) / 'pareto.png'}"
    )
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
    s.add_argument("--max-watts", type=float, help="highest acceptable board power (model estimate)")
    s.add_argument("--data", default="fashion-mnist", help="dataset (default fashion-mnist)")
    s.add_argument("--data-dir", help="dataset folder")
    s.add_argument(
        "--time-budget",
        default="30m",
        help="wall time for the whole run (search, finalists, baselines, fleet), with a unit: 90s, 30m, 1h (default "
        "30m); every training is sized to fit, and a budget too small is refused with the minimum",
    )
    s.add_argument("--out", required=True, help="output folder (also the resume state)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted search in --out")
    s.add_argument("--arch", default="bundle", help="accelerator architecture: bundle or pipeline")
    s.add_argument(
        "--bundles", help="comma-separated subset of the layer pool (default all: dw3-pw1,conv3,pw1-dw3-pw1,conv3-res,fire)"
    )
    s.add_argument("--finalists", type=int, default=2, help="architectures trained longer at the end (default 2)")
    s.add_argument("--final-epochs", type=int, help="epochs for finalists (default: what the budget allows, 1-10)")
    s.add_argument(
        "--final-images",
        type=int,
        help="train finalists on at most the first N training images (default: as many as the budget allows)",
    )
    s.add_argument(
        "--proxy-images",
        type=int,
        default=6000,
        help="training images for each short training, at most (default 6000; fewer when the budget needs it)",
    )
    s.add_argument("--proxy-val-images", type=int, default=2000, help="validation images scoring each candidate (default 2000)")
    s.add_argument("--fleet", help="YAML fleet file: split the chosen network over these devices and write plan.yaml")
    s.add_argument("--accuracy-floor", type=float, help="fleet: lowest fixed-point validation top-1 (default chosen - 0.02)")
    s.add_argument(
        "--baselines", help="comma-separated models trained with the same recipe for comparison, e.g. resnet18-split2,squeezenet"
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the search and of every training (default 0)")
    s.add_argument("--devices-dir", help="a folder of your own device YAML files")
    s.add_argument("--json", nargs="?", const="-", help="write the result as JSON (to a file, or stdout with no value)")
    s.set_defaults(func=cmd_codesign)
