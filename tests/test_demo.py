"""The main job end to end on a tiny model: train, export, local workers, report files."""
import json

from edgesplit.demo import DemoConfig, run_demo


def test_demo_end_to_end(tmp_path):
    cfg = DemoConfig(work_dir=str(tmp_path), limit=200, width_mult=0.125, epochs=1, max_train_samples=1024, throughput_images=100,
                     unplug_images=100)
    report = run_demo(cfg, json_path=str(tmp_path / "demo.json"))
    results = report["results"]
    assert set(results) == {"split", "in-process", "nonsplit"}
    # the distributed and in-process runs of one export give the same predictions
    assert results["split"]["accuracy"] == results["in-process"]["accuracy"]
    for r in results.values():
        assert r["n"] == 200 and 0 <= r["accuracy"] <= 1 and r["p50_ms"] <= r["p99_ms"] and r["throughput_rps"] > 0
    assert (tmp_path / "latency.png").read_bytes()[:4] == b"\x89PNG"
    assert "split" in (tmp_path / "report.html").read_text()
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["images"] == 200
    # one worker unplugged: every answer still comes, flagged degraded, and the worker is used again after restart
    unplugged = saved["unplugged"]
    assert unplugged["degraded"] == unplugged["images"] == 100 and unplugged["errors"] == 0 and unplugged["readmitted"]
    # a second run reuses the cached checkpoints (nothing retrained)
    mtime = (tmp_path / "split" / "checkpoint.pt").stat().st_mtime
    run_demo(DemoConfig(**{**cfg.__dict__, "modes": ("in-process",)}))
    assert (tmp_path / "split" / "checkpoint.pt").stat().st_mtime == mtime
