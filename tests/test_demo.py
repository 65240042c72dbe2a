"""The main job end to end on a tiny model: train, export, local workers, report files."""

import json

import numpy as np

from edgesplit.demo.config import DemoConfig
from edgesplit.demo.run import run_demo


def test_demo_end_to_end(tmp_path, capsys):
    cfg = DemoConfig(
        work_dir=str(tmp_path),
        limit=200,
        width_mult=0.125,
        epochs=1,
        max_train_samples=1024,
        throughput_images=100,
        unplug_images=100,
        dashboard_port=0,
    )
    report = run_demo(cfg, json_path=str(tmp_path / "demo.json"))
    assert "[demo] dashboard: http://127.0.0.1:" in capsys.readouterr().out  # the live page, served while it ran
    results = report["results"]
    assert set(results) == {"split", "in-process", "nonsplit"}
    # the distributed and in-process runs of one export give the same predictions
    assert results["split"]["accuracy"] == results["in-process"]["accuracy"]
    for r in results.values():
        assert r["n"] == 200 and 0 <= r["accuracy"] <= 1 and r["p50_ms"] <= r["p99_ms"] and r["throughput_rps"] > 0
    assert (tmp_path / "latency.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "report.html").read_text()
    assert "split" in page and "worker unplugged (SIGKILL): 100 images answered" in page
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["images"] == 200
    # one worker unplugged: every answer still comes, flagged degraded, and the worker is used again after restart
    unplugged = saved["unplugged"]
    assert unplugged["degraded"] == unplugged["images"] == 100 and unplugged["errors"] == 0 and unplugged["readmitted"]
    # a second run reuses the cached checkpoints (nothing retrained)
    mtime = (tmp_path / "split" / "checkpoint.pt").stat().st_mtime
    run_demo(DemoConfig(**{**cfg.__dict__, "modes": ("in-process",)}))
    assert (tmp_path / "split" / "checkpoint.pt").stat().st_mtime == mtime
    # ... and writes its own files, leaving the full run's report as it was
    assert (tmp_path / "report_inprocess.html").exists() and (tmp_path / "report.html").read_text() == page
    # --images: folder names matched without case or punctuation, an unknown folder named, accuracy over the rest
    from PIL import Image

    from edgesplit.data import load_dataset

    test = load_dataset("fashion-mnist", "test")
    folders = {"T-shirt_top": 0, "trouser": 1, "holiday-photos": 9}  # the last names no class
    for folder, cls in folders.items():
        (tmp_path / "imgs" / folder).mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(test.targets == cls)[:3]):
            Image.fromarray(test.data[i, :, :, 0]).save(tmp_path / "imgs" / folder / f"{j}.png")
    capsys.readouterr()
    r = run_demo(DemoConfig(**{**cfg.__dict__, "modes": ("in-process",), "images_dir": str(tmp_path / "imgs"), "limit": None}))
    out = capsys.readouterr().out
    assert "folders that name no class" in out and "holiday-photos" in out
    acc = r["results"]["in-process"]["accuracy"]
    assert r["images"] == 9 and acc in {i / 9 for i in range(10)}  # over the 9 images of the 3 folders that match
    assert "->" in out and "(T-shirt/top" in out  # each image's prediction, with its folder's class
