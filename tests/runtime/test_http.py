"""The KServe v2 HTTP/REST half (`--http-port`) and /metrics, on real workers and `edgesplit serve`, with the stock
Triton HTTP client, curl, and raw requests for what a client should not send."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as triton

from edgesplit.data.datasets import load_dataset
from edgesplit.runtime.local import LocalModel
from edgesplit.runtime.transport.grpc_peer import GrpcPeer


@pytest.fixture(scope="module")
def images():
    return load_dataset("fashion-mnist", "test").data[:4]  # (4, 28, 28, 1) uint8


def _nchw(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def _http(port: int, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    """(status, body) of one request; errors are answers too."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _metric(text: str, name: str, **labels) -> float:
    """The value of the sample ``name{labels...}`` (labels given must match; others ignored), 0 when absent."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


@contextlib.contextmanager
def _worker(export, *args):
    """`edgesplit worker` of branch0 with --http-port 0 (and ``args``): (http port, gRPC port)."""
    cmd = [sys.executable, "-m", "edgesplit", "worker", str(export), "--part", "branch0", "--http-port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("EDGESPLIT-WORKER-READY"), proc.stderr.read() if proc.poll() is not None else line
        yield int(line.split("http=")[1].split()[0]), int(line.split(" port=")[1].split()[0])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


@pytest.fixture
def http_worker(random_export):
    with _worker(random_export) as ports:
        yield ports


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
def test_http_takes_the_same_token_and_tls_as_grpc(random_export, images, tmp_path):
    cert, key, token = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "token"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    token.write_text("s3cret\n")
    token.chmod(0o600)
    with _worker(random_export, "--tls-cert", cert, "--tls-key", key, "--token-file", token) as (port, _):
        import ssl

        context = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{port}/v2/health/ready"
        with pytest.raises(urllib.error.HTTPError) as err:  # TLS, but no token
            urllib.request.urlopen(url, context=context, timeout=20)
        assert err.value.code == 401 and "missing or wrong bearer token" in json.loads(err.value.read())["error"]
        wrong = urllib.request.Request(url, headers={"Authorization": "Bearer nope"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(wrong, context=context, timeout=20)
        assert err.value.code == 401
        right = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret"})
        assert urllib.request.urlopen(right, context=context, timeout=20).status == 200
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to the TLS port: no answer
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=20)


def test_worker_answers_over_http_as_over_grpc(http_worker, images, random_export):
    import asyncio

    http_port, grpc_port = http_worker
    x = _nchw(images)
    client = triton.InferenceServerClient(f"127.0.0.1:{http_port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("branch0")
    meta = client.get_model_metadata("branch0")
    assert meta["inputs"][0]["name"] == "input" and meta["outputs"][0]["name"] == "features"
    answers = []
    for binary in (True, False):  # the binary tensor data extension both ways, and JSON tensors
        t = triton.InferInput("input", list(x.shape), "UINT8")
        t.set_data_from_numpy(x, binary_data=binary)
        out = [triton.InferRequestedOutput("features", binary_data=binary)]
        answers.append(client.infer("branch0", [t], outputs=out).as_numpy("features"))

    async def over_grpc():
        peer = GrpcPeer(f"127.0.0.1:{grpc_port}", "branch0")
        try:
            return (await peer.infer({"input": x}, timeout_s=20)).outputs["features"]
        finally:
            await peer.close()

    want = asyncio.run(over_grpc())
    assert answers[0].shape == want.shape == (4, 32)
    assert np.abs(answers[0] - want).max() < 1e-5 and np.abs(answers[1] - want).max() < 1e-5
    metrics = _http(http_port, "/metrics")[1].decode()  # both halves counted: 2 over HTTP, 1 over gRPC
    assert _metric(metrics, "nv_inference_request_success", model="branch0") == 3
    assert _metric(metrics, "nv_inference_count", model="branch0") == 12
    client.close()


def test_serve_over_http_keeps_serving_through_bad_requests(random_export, images, serving):
    local = LocalModel(random_export)
    want = local(local.prepare(images))
    with serving("--local", random_export, "--http-port", 0, "--max-message-mb", 0.05) as (proc, _):
        port = int(proc.ready_line.split("http=")[1].split()[0])
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        t = triton.InferInput("input", [4, 1, 28, 28], "UINT8")
        t.set_data_from_numpy(_nchw(images))
        result = client.infer("resnet18-split2", [t])
        assert np.abs(result.as_numpy("logits") - want).max() < 1e-4
        assert result.get_response()["parameters"]["degraded"] is False

        assert _http(port, "/v2/health/live")[0] == 200 and _http(port, "/v2/health/ready")[0] == 200
        assert _http(port, "/v2/models/nope/ready")[0] == 400
        status, body = _http(port, "/v2/models/nope")
        assert status == 404 and "unknown model 'nope'; this server has: resnet18-split2" in json.loads(body)["error"]
        infer = "/v2/models/resnet18-split2/infer"
        good = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": [0] * 784}
        bad = [  # (body, headers, status, what the one-line error says)
            (b"{not json", {}, 400, "not JSON"),
            (b'{"inputs": 3}', {}, 400, '"inputs": a list of tensors'),
            (json.dumps({"inputs": [{**good, "data": [0] * 700}]}).encode(), {}, 400, "must be 784 numbers"),
            (json.dumps({"inputs": [{**good, "data": [0.5] * 784}]}).encode(), {}, 400, "must be whole numbers"),
            (json.dumps({"inputs": [{**good, "data": [300] * 784}]}).encode(), {}, 400, "outside the range of UINT8"),
            (json.dumps({"inputs": [{**good, "datatype": "STRING"}]}).encode(), {}, 400, "datatype 'STRING'"),
            (json.dumps({"inputs": [{**good, "shape": [1, 3, 28, 28], "data": [0] * 2352}]}).encode(), {}, 400, "expected"),
            (json.dumps({"inputs": [{**good, "data": [0] * 784}], "outputs": [{"name": "x"}]}).encode(), {}, 400, "unknown output 'x'"),
        ]  # fmt: skip
        head = json.dumps(
            {"inputs": [{**{k: v for k, v in good.items() if k != "data"}, "parameters": {"binary_data_size": 784}}]}
        )
        bad += [  # the binary extension with byte counts that do not add up
            (head.encode() + bytes(700), {"Inference-Header-Content-Length": str(len(head))}, 400, "goes past the body"),
            (
                head.encode() + bytes(800),
                {"Inference-Header-Content-Length": str(len(head))},
                400,
                "16 bytes of binary data after",
            ),
            (head.encode(), {"Inference-Header-Content-Length": "99999"}, 400, "is not a byte count within the body"),
            (bytes(5 << 20), {}, 413, "over this server's limit"),
        ]
        for body, headers, status, needle in bad:
            got, answer = _http(port, infer, body, {"Content-Type": "application/json", **headers})
            error = json.loads(answer)["error"]
            assert got == status and needle in error and "\n" not in error, (got, error)
        assert _http(port, "/v2/models/resnet18-split2/nothing")[0] == 404
        assert np.abs(client.infer("resnet18-split2", [t]).as_numpy("logits") - want).max() < 1e-4  # still serving

        if shutil.which("curl"):  # as a user would, with curl
            doc = json.dumps({"inputs": [good]})
            out = subprocess.run(["curl", "-s", "-X", "POST", f"http://127.0.0.1:{port}{infer}", "-d", doc], capture_output=True)
            answer = json.loads(out.stdout)
            assert answer["outputs"][0]["shape"] == [1, 10] and len(answer["outputs"][0]["data"]) == 10
            assert subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/v2/health/ready"], capture_output=True, text=True).stdout == "200"  # fmt: skip
        metrics = _http(port, "/metrics")[1].decode()
        n = 3 + bool(shutil.which("curl"))
        assert _metric(metrics, "nv_inference_request_success", model="resnet18-split2") == n
        assert _metric(metrics, "edgesplit_requests_total", outcome="exact") == n
        # the one that reached the model and was refused there (3 channels): a failure, by reason
        assert _metric(metrics, "nv_inference_request_failure", reason="invalid") == 1
        assert _metric(metrics, "edgesplit_peer_up", part="branch1") == 1
        assert _metric(metrics, "edgesplit_peer_sent_bytes_total", part="branch0") > 0
        assert _metric(metrics, "edgesplit_part_arrival_seconds_count", part="branch0") == n
        client.close()


def test_metrics_show_a_worker_gone_and_degraded_answers(random_export, images, serving):
    with serving("--local", random_export, "--http-port", 0) as (proc, _):
        port = int(proc.ready_line.split("http=")[1].split()[0])
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        t = triton.InferInput("input", [1, 1, 28, 28], "UINT8")
        t.set_data_from_numpy(_nchw(images[:1]))
        workers = [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
        branch1 = next(p for p in workers if b"branch1" in open(f"/proc/{p}/cmdline", "rb").read())
        os.kill(branch1, signal.SIGKILL)  # the device is unplugged
        deadline, degraded = time.monotonic() + 30, 0
        while time.monotonic() < deadline and degraded < 3:
            degraded += client.infer("resnet18-split2", [t]).get_response()["parameters"]["degraded"] is True
        metrics = _http(port, "/metrics")[1].decode()
        assert degraded == 3 and _metric(metrics, "edgesplit_requests_total", outcome="degraded") >= 3
        assert _metric(metrics, "edgesplit_peer_up", part="branch1") == 0
        assert _metric(metrics, "edgesplit_peer_up", part="branch0") == 1
        client.close()


def test_connections_over_the_cap_are_closed_at_once(random_export):
    import socket

    with _worker(random_export, "--max-connections", "2") as (port, _):
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        for s in held:  # both served: a request each, kept alive
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200")
        third = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:  # closed without an answer: an end of stream, or a reset for the request it sent meanwhile
            third.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert third.recv(100) == b""
        except ConnectionResetError:
            pass
        for s in (*held, third):
            s.close()
        time.sleep(0.2)  # the server sees them go
        assert _http(port, "/v2/health/live")[0] == 200  # room again
