"""The ``edgesplit`` command: parses arguments, calls the library, prints or writes JSON.

Errors the user can fix are :class:`EdgesplitError`: printed as one line, exit code 2,
no traceback unless ``--debug``. Heavy imports (torch, onnxruntime, grpc) happen inside
the subcommand that needs them, so ``edgesplit worker`` never loads torch.
"""

from __future__ import annotations

import logging
import os
import sys

from edgesplit.cli import bench, codesign, demo, hardware, models, runtime, stream, testbed
from edgesplit.cli.codesign import parse_duration  # noqa: F401 (part of the CLI's API: tests and scripts use it)
from edgesplit.cli.common import Parser, json_alone
from edgesplit.errors import EdgesplitError

log = logging.getLogger("edgesplit")

SUBCOMMANDS = (models, runtime, stream, hardware, codesign, bench, testbed, demo)  # each adds its subcommands, in this order


def build_parser():
    p = Parser(prog="edgesplit", description="Split CNNs over small edge devices: models, training, export, runtime.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except EdgesplitError as err:  # an option refused while parsing (e.g. --token), said in one line
        print(f"edgesplit: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with json_alone(args):
            args.func(args)
    except EdgesplitError as err:
        if args.debug:
            raise
        print(f"edgesplit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgesplit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # a socket or pipe of the command's own: a bug, not our reader leaving
        # our reader went away (`edgesplit plan ... | head`): stop quietly, as a Unix tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reading end is closed (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (OSError, ValueError):
        return False
