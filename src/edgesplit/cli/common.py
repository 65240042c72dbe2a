"""What every subcommand module shares: the parser class, JSON output, model arguments."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path

from edgesplit.errors import EdgesplitError

_JSON_OUT: list = []  # with `--json` and no value: where the JSON goes (the real stdout; see json_alone)


def write_json(obj, path: str | None) -> None:
    text = json.dumps(obj, indent=2, default=str)
    if path in (None, "-"):
        print(text, file=_JSON_OUT[-1] if _JSON_OUT else sys.stdout)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
        print(f"wrote {path}")


def model_kwargs(args) -> dict:
    kw = {}
    for item in getattr(args, "model_arg", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise EdgesplitError(f"bad --model-arg {item!r}; write KEY=VALUE, e.g. width_mult=0.5")
        kw[key] = model_arg_value(value)
    return kw


def model_arg_value(text: str):
    """A --model-arg value: JSON (0.5, [0.75,0.25], true), a comma-separated list of them (0.75,0.25), or a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return [model_arg_value(item.strip()) for item in text.split(",")]
    return text


class DefaultsShown(argparse.HelpFormatter):
    """Every option's default in its help, where the help text does not say it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        flag = action.nargs == 0  # on/off: its help says what it does
        unset = flag or d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, (str, tuple)) and not d)
        if action.option_strings and "(default" not in text and not unset:
            text += " (default %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """No prefix matching anywhere (``--token`` must never be taken for ``--token-file``); every default shown;
    subcommands inherit both."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsShown)
        super().__init__(*args, **kwargs)


@contextlib.contextmanager
def json_alone(args):
    """Every command's `--json` with no value puts the JSON alone on stdout: what else it prints goes to stderr."""
    if getattr(args, "json", None) != "-":
        yield
        return
    _JSON_OUT.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _JSON_OUT.pop()


def add_dataclass_options(group, cls, only: tuple[str, ...] | None = None) -> None:
    """An option for each field of the dataclass ``cls`` declared with :func:`edgesplit.options.option` (or for the
    fields named in ``only``): its default and help come from the field, so they are written once."""
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or (only is not None and f.name not in only):
            continue
        m = f.metadata
        flag = m["flag"] or "--" + f.name.replace("_", "-")
        names, dest = (flag, *m["aliases"]), m["dest"] or f.name
        if isinstance(f.default, bool):
            group.add_argument(*names, dest=dest, action="store_false" if f.default else "store_true", help=m["help"])
            continue
        default = f.default
        if m["text"] is not None:
            default = m["text"]  # shown as typed; ``parse`` turns it into the field's value
        elif default is not None and m["scale"] != 1:
            default = default / m["scale"]
            if default.is_integer():
                default = int(default)  # shown as 256, not 256.0
        kind = str if m["parse"] else m["type"] or (type(f.default) if f.default is not None else str)
        metavar = m["metavar"] or (None if m["choices"] else flag.lstrip("-").replace("-", "_").upper())
        group.add_argument(*names, dest=dest, default=default, type=kind, metavar=metavar, choices=m["choices"], help=m["help"])


def dataclass_from_args(cls, args, only: tuple[str, ...] | None = None, **fixed):
    """``cls`` from the options :func:`add_dataclass_options` added (values back in the field's unit), and ``fixed``."""
    kw = dict(fixed)
    for f in dataclasses.fields(cls):
        if "help" in f.metadata and f.name not in fixed and (only is None or f.name in only):
            m = f.metadata
            value = getattr(args, m["dest"] or f.name)
            if value is not None and m["parse"] is not None:
                value = m["parse"](value)
            elif value is not None and m["scale"] != 1:
                value = int(value * m["scale"])
            kw[f.name] = value
    return cls(**kw)
