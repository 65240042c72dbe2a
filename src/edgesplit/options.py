"""Config dataclass fields that are also command-line options: their help, flag, unit and type live with the field,
so each default is written once (``cli.common.add_dataclass_options`` builds the options from them)."""

from __future__ import annotations

from dataclasses import field
from typing import Callable

from edgesplit.errors import EdgesplitError

MIB = 1 << 20


def option(
    default,
    help: str,
    flag: str | None = None,
    *,
    aliases: tuple[str, ...] = (),
    scale: int = 1,
    type=None,
    metavar: str | None = None,
    parse: Callable[[str], object] | None = None,
    text: str | None = None,
    choices: tuple[str, ...] | None = None,
    dest: str | None = None,
):
    """A dataclass field that is an option: ``--field-name`` (or ``flag``, plus ``aliases``), given in units of
    ``scale`` (``MIB`` for a byte count given in MiB), parsed with ``type`` (default: the default's type).
    ``parse`` turns the text given into the field's value after parsing (its errors are one-line
    :class:`EdgesplitError`), and ``text`` is the default as one would type it (``parse(text) == default``).
    A bool is a flag: ``--name`` turns a False default on, ``--no-name`` (give it as ``flag``) a True one off.
    ``dest``: the parsed attribute, where two configs of one command share a field name."""
    return field(
        default=default,
        metadata={
            "help": help,
            "flag": flag,
            "aliases": aliases,
            "scale": scale,
            "type": type,
            "metavar": metavar,
            "parse": parse,
            "text": text,
            "choices": choices,
            "dest": dest,
        },
    )


def parse_duration(text: str, flag: str = "--time-budget") -> float:
    """'30m', '1h', '90s' -> seconds. A unit is required: a bare number is ambiguous (seconds? minutes?)."""
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1:].isdigit():
        raise EdgesplitError(f"{flag} needs a unit: {text}s, {text}m or {text}h")
    try:
        if not text or text[-1] not in units:
            raise ValueError
        value = float(text[:-1]) * units[text[-1]]
    except ValueError:
        raise EdgesplitError(f"{flag} must look like 30m, 1h or 90s, got {text!r}") from None
    if value <= 0:
        raise EdgesplitError(f"{flag} must be positive, got {text!r}")
    return value


def comma_list(text: str) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'); empty items are dropped."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_sizes(text: str, count: int, what: str, example: str) -> tuple[int, ...]:
    """'3x224x224' -> (3, 224, 224): ``count`` positive sizes joined by x; ``what`` and ``example`` name them in errors."""
    try:
        sizes = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        sizes = ()
    if len(sizes) != count:
        raise EdgesplitError(f"bad {what} {text!r}; write it as {example}")
    if min(sizes) <= 0:
        raise EdgesplitError(f"bad {what} {text!r}; every size must be positive")
    return sizes
