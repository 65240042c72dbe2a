"""Secrets the runtime reads: the bearer token, from a file (never from a command line, never echoed)."""

from __future__ import annotations

import stat
from pathlib import Path

from edgesplit.errors import EdgesplitError


def read_token_file(path: str, what: str = "--token-file") -> str:
    """The bearer token in ``path``: one line for a missing, unreadable, world-readable or empty file, never the
    token itself."""
    try:
        if Path(path).stat().st_mode & stat.S_IROTH:
            raise EdgesplitError(
                f"{what} {path} can be read by every user of this machine; make it yours alone (chmod 600 {path})"
            )
        token = Path(path).read_text().strip()
    except FileNotFoundError:
        raise EdgesplitError(f"{what} {path} does not exist; write the bearer token in that file") from None
    except OSError as err:
        raise EdgesplitError(f"cannot read {what} {path} ({err.strerror}); check its permissions") from None
    if not token:
        raise EdgesplitError(f"{what} {path} is empty; write the bearer token in it (an empty token would let anyone in)")
    return token
