"""The hardware model against published FPGA designs: the table in docs/hardware-model.md stays true.

Every design is re-run (graphs built with onnx.helper, tuned where the source gives no
parallelism); a prediction error that grows past the one recorded in
docs/hardware/published.json fails, so a change to the model that moves it away from
real boards is caught, and one that moves it closer asks for the record to be updated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgesplit.hardware.published import DESIGNS, summary, table

RECORD = Path(__file__).parents[2] / "docs" / "hardware" / "published.json"
SLACK = 0.005  # half a point: room for float noise, not for a model change


@pytest.fixture(scope="module")
def rows():
    return table()


def test_no_error_grew_past_the_recorded_one(rows):
    recorded = {(r["design"], r["figure"]): r["error"] for r in json.loads(RECORD.read_text())["rows"]}
    assert set(recorded) == {(r["design"], r["figure"]) for r in rows}, (
        "designs changed: re-run python -m edgesplit.hardware.published --json"
    )
    for r in rows:
        assert abs(r["error"]) <= abs(recorded[r["design"], r["figure"]]) + SLACK, (r["design"], r["figure"], r["error"])


def test_calibration_and_validation_are_kept_apart():
    roles = {d.role for d in DESIGNS}
    assert roles == {"calibration", "validation"}
    for d in DESIGNS:
        assert (d.role == "calibration") == bool(d.fitted), d.key  # only calibration designs had constants fitted to them


def test_the_calibration_design_is_met_by_the_committed_constants(rows):
    for r in rows:
        if r["role"] == "calibration":
            assert abs(r["error"]) <= 0.01, r  # re-run `python -m edgesplit.hardware.published --calibrate` if this fails


def test_summary_reads_the_rows(rows):
    import statistics

    s = summary(rows)
    fps = [abs(r["error"]) for r in rows if r["role"] == "validation" and r["figure"] == "fps"]
    assert len(fps) >= 3 and s["validation_fps_median_abs_error"] == statistics.median(fps)
