"""`edgesplit stream` and `edgesplit video`: real test images made into a video with FFmpeg's encoders (PyAV), run
through real local workers; the bounded queue, a worker lost mid-stream, and sources that do not work."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from edgesplit.data.datasets import load_dataset
from edgesplit.manifest import load_manifest
from edgesplit.runtime.client import AsyncClient
from edgesplit.runtime.cluster import LocalCluster
from edgesplit.runtime.local import LocalModel
from edgesplit.stream.config import StreamConfig
from edgesplit.stream.runner import run_stream
from edgesplit.stream.video import write_video


@pytest.fixture(scope="module")
def images():
    return load_dataset("fashion-mnist", "test").data[:40]  # (40, 28, 28, 1) uint8


@pytest.fixture(scope="module")
def lossless_video(images, tmp_path_factory):
    return write_video(images, tmp_path_factory.mktemp("video") / "test.mkv", fps=20)  # FFV1: every pixel kept


def _stream(cluster: LocalCluster, export, **cfg) -> dict:
    async def go():
        client = await AsyncClient.connect(cluster.plan())
        try:
            return await run_stream(client.infer_result, load_manifest(export, verify=False), StreamConfig(**cfg))
        finally:
            await client.close()

    return asyncio.run(go())


def test_every_frame_answered_as_the_images_are(random_export, images, lossless_video):
    local = LocalModel(random_export)
    want = local(local.prepare(images)).argmax(1)
    classes = load_manifest(random_export, verify=False).classes
    with LocalCluster(random_export, pin=False) as cluster:
        r = _stream(cluster, random_export, source=str(lossless_video), speed=0, queue=64)
    s = r["summary"]
    assert s["frames_read"] == s["answered"] == 40 and s["dropped"] == s["errors"] == s["degraded"] == 0
    got = [classes.index(f["top"][0][0]) for f in r["frames"]]
    assert got == list(want)  # the decoded frames are the images: the same answers
    assert all(len(f["top"]) == 3 and f["latency_ms"] > 0 for f in r["frames"])


def test_a_fleet_behind_drops_the_oldest_frames_and_counts_them(random_export, lossless_video):
    with LocalCluster(random_export, pin=False, worker_args=["--inject-delay-ms", "25"]) as cluster:
        r = _stream(cluster, random_export, source=str(lossless_video), speed=0, queue=2, in_flight=1)
    s, frames = r["summary"], r["frames"]
    assert [f["frame"] for f in frames] == list(range(40))  # one record per frame, none lost without a word
    assert s["dropped"] > 0 and s["answered"] + s["dropped"] == 40 and s["deepest_queue"] <= 2
    assert frames[-1].get("latency_ms") is not None  # the newest frames are the ones kept


def test_a_worker_lost_mid_stream_gives_degraded_frames_not_lost_ones(random_export, lossless_video):
    with LocalCluster(random_export, pin=False) as cluster:
        victim = cluster.workers["branch1"].proc.pid
        threading.Timer(0.6, os.kill, (victim, signal.SIGKILL)).start()  # 40 frames at 20/s: about 2 s
        r = _stream(cluster, random_export, source=str(lossless_video), queue=64)
    s = r["summary"]
    assert s["answered"] == 40 and s["errors"] == 0
    assert 0 < s["degraded"] < 40 and not r["frames"][0]["degraded"] and r["frames"][-1]["degraded"]


def test_the_cli_writes_annotated_video_and_records(random_export, lossless_video, tmp_path):
    import av

    out, records = tmp_path / "annotated.mp4", tmp_path / "frames.json"
    proc = subprocess.run(
        [sys.executable, "-m", "edgesplit", "stream", "--local", str(random_export), "--source", str(lossless_video),
         "--speed", "0", "--queue", "64", "--out", str(out), "--json", str(records), "--max-frames", "25"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "frame    24" in proc.stdout and "25 frames read" in proc.stdout
    r = json.loads(records.read_text())
    assert r["summary"]["answered"] == 25 and len(r["frames"]) == 25
    with av.open(str(out)) as c:
        rate, frames = c.streams.video[0].average_rate, list(c.decode(video=0))
    assert len(frames) == 25 and frames[0].width >= 224 and rate == 20  # the source's rate


def test_a_folder_with_a_broken_image_goes_on(random_export, images, tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(images[i, :, :, 0]).save(tmp_path / f"{i}.png")
    (tmp_path / "1b.png").write_bytes(os.urandom(300))  # between the good ones, by name
    with LocalCluster(random_export, pin=False) as cluster:
        r = _stream(cluster, random_export, source=str(tmp_path), speed=0, queue=8)
    s = r["summary"]
    assert s["frames_read"] == 4 and s["answered"] == 3 and s["errors"] == 1
    assert "1b.png: cannot decode" in r["frames"][2]["error"]


def test_video_from_real_images_and_bad_sources_are_one_line(random_export, tmp_path):
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "edgesplit", *map(str, argv)], capture_output=True, text=True, timeout=120)

    made = run("video", "--out", tmp_path / "t.mp4", "--count", 12, "--fps", 5)
    assert made.returncode == 0 and "12 frames of 28x28 at 5 frames/s" in made.stdout
    (tmp_path / "garbage.mp4").write_bytes(os.urandom(4000))
    (tmp_path / "empty").mkdir()
    for argv, needle in [
        (["--source", tmp_path / "missing.mp4"], "does not exist"),
        (["--source", tmp_path / "garbage.mp4"], "cannot open"),
        (["--source", tmp_path / "empty"], "holds no images"),
        (["--source", tmp_path / "t.mp4", "--queue", 0], "bad --queue 0"),
        ([], "give --source"),
    ]:
        proc = run("stream", "--local", random_export, *argv)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_stream_serves_its_dashboard_and_metrics_while_it_runs(random_export, lossless_video):
    import urllib.request

    cmd = [sys.executable, "-m", "edgesplit", "stream", "--local", str(random_export), "--source", str(lossless_video),
           "--speed", "0.25", "--quiet", "--dashboard-port", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("dashboard: http://127.0.0.1:"), line
        base = line.split()[1].rsplit("/", 1)[0]
        with urllib.request.urlopen(base + "/dashboard/events", timeout=20) as events:
            snapshot = {}
            while not snapshot.get("totals", {}).get("answered"):  # the first frames take a moment
                data = events.readline().decode()
                if data.startswith("data: "):
                    snapshot = json.loads(data[6:])
        assert snapshot["model"] == "resnet18-split2" and {d["part"] for d in snapshot["devices"]} == {"branch0", "branch1"}
        assert snapshot["last"]["shape"] == [1, 28, 28] and len(snapshot["last"]["top"]) == 3  # the frame, (C, H, W)
        metrics = urllib.request.urlopen(base + "/metrics", timeout=20).read().decode()
        assert "edgesplit_frames_dropped_total" in metrics and "nv_inference_request_success{" in metrics
        assert proc.wait(60) == 0
    finally:
        proc.kill()
        proc.wait()


def test_a_video_cut_short_gives_the_frames_before_the_cut(random_export, lossless_video, tmp_path):
    cut = tmp_path / "cut.mkv"  # a recording that stopped mid-file (a camera unplugged while it was written)
    data = lossless_video.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    with LocalCluster(random_export, pin=False) as cluster:
        r = _stream(cluster, random_export, source=str(cut), speed=0, queue=64)
    s = r["summary"]
    assert 0 < s["frames_read"] < 40 and s["answered"] == s["frames_read"] and s["errors"] == 0


def test_a_video_over_http_is_a_source_too(random_export, lossless_video):
    """A network stream (what an IP camera serves): the lossless video from a loopback HTTP server."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(lossless_video.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{lossless_video.name}"
        with LocalCluster(random_export, pin=False) as cluster:
            r = _stream(cluster, random_export, source=url, speed=0, queue=64)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert r["summary"]["frames_read"] == r["summary"]["answered"] == 40
