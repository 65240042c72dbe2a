"""Config dataclass fields that are also command-line options: their help, flag, unit and type live with the field,
so each default is written once (``cli.common.add_dataclass_options`` builds the options from them)."""

from __future__ import annotations

from dataclasses import field

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
):
    """A dataclass field that is an option: ``--field-name`` (or ``flag``, plus ``aliases``), given in units of
    ``scale`` (``MIB`` for a byte count given in MiB), parsed with ``type`` (default: the default's type)."""
    return field(
        default=default,
        metadata={"help": help, "flag": flag, "aliases": aliases, "scale": scale, "type": type, "metavar": metavar},
    )
