"""Progress: a bar on a terminal, plain lines with the time left elsewhere."""

import io

from edgesplit import progress
from edgesplit.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_in_a_log_with_what_and_the_time_left(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)  # a line at every step
    with Progress(4, "bench faults", unit="scenario", stream=out) as bar:
        bar.update(1, done="coded/fault_free")
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("bench faults: 1/4 scenarios (25%) in 0:00, about 0:00 left, done coded/fault_free")
    assert lines[-1].startswith("bench faults: 2/4 scenarios (50%)") and "\r" not in out.getvalue()


def test_quiet_between_lines_and_a_last_line_at_the_end():
    out = io.StringIO()
    with Progress(1000, "epoch 1/2", unit="batch", stream=out) as bar:
        for _ in range(1000):
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines == [lines[-1]] and lines[-1].startswith("epoch 1/2: 1000/1000 batches (100%)")


def test_a_bar_on_a_terminal():
    out = _Terminal()
    with Progress(10, "quantization sweep", unit="width", stream=out) as bar:
        for _ in range(10):
            bar.update(1, last="W8/F16 0.91")
    text = out.getvalue()
    assert "\r" in text and "quantization sweep" in text and "10/10" in text
