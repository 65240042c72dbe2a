"""Progress of long work: on a terminal a bar (tqdm) with what is happening and the time left; in a log or CI,
where a bar's carriage returns would be noise, a plain line at most every ``LINE_EVERY_S`` and one at the end."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("edgesplit.progress")

LINE_EVERY_S = 10.0


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")


class Progress:
    """``total`` steps of ``what``; ``update(n, **figures)`` after each; ``close()`` (or a ``with`` block) at the end."""

    def __init__(self, total: int, what: str, unit: str = "step", stream=None, enabled: bool = True):
        self.total, self.what, self.unit, self.done = total, what, unit, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.t0 = self._last_line = time.monotonic()
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit=unit, file=self.stream, mininterval=0.5, dynamic_ncols=True)

    def update(self, n: int = 1, **figures) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            if figures:
                self.bar.set_postfix(figures, refresh=False)
            self.bar.update(n)
        elif time.monotonic() - self._last_line >= LINE_EVERY_S:
            self._line(figures)

    def _line(self, figures: dict) -> None:
        self._last_line = now = time.monotonic()
        elapsed = now - self.t0
        left = elapsed / self.done * (self.total - self.done) if self.done else None
        extra = "".join(f", {k} {v}" for k, v in figures.items())
        eta = f", about {_clock(left)} left" if left is not None and self.done < self.total else ""
        print(
            f"{self.what}: {self.done}/{self.total} {_plural(self.unit)} ({self.done / max(self.total, 1):.0%}) in "
            f"{_clock(elapsed)}{eta}{extra}",
            file=self.stream,
            flush=True,
        )

    def close(self, **figures) -> None:
        if self.bar is not None:
            if figures:
                self.bar.set_postfix(figures, refresh=False)
            self.bar.close()
            self.bar = None
        elif self.enabled and self.done:
            self._line(figures)
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
