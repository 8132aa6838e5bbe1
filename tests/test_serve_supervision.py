"""`diga serve` as an operator runs it (the real CLI process supervising `bentoml serve` on loopback):
a busy port and a model that cannot load fail at once with one line; SIGTERM drains an in-flight request
(readiness false first) and ends every process of the tree; Ctrl-C exits 130; a hot-swapped model
survives a `kill -9` of the model worker; a worker that cannot load its model stops the server."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image
from serving_fixtures import write_perturbed_models

from diga_sdk.cli import main
from diga_sdk.serving.launch import free_port

TOKEN = "supervision-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """a.safetensors, b.safetensors (perturbed weights: different answers), corrupt.safetensors."""
    return write_perturbed_models(tmp_path_factory.mktemp("supervised-models"), tiny_checkpoint)


def _serve(model: Path, port: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "diga_sdk.cli", "serve", "--model", str(model), "--port", str(port),
                             "--runtime", "torch", "--threads", "1", *extra],
                            env={**os.environ, "DIGA_API_TOKEN": TOKEN, "DIGA_NO_PROGRESS": "1", **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_ready(proc: subprocess.Popen[str], url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("the server did not become ready")


def _tree(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _alive(procs: list[psutil.Process]) -> list[int]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _model_worker(pid: int) -> psutil.Process:
    found = [p for p in _tree(pid) if "diga_model" in " ".join(p.cmdline())]
    assert len(found) == 1, [p.cmdline() for p in _tree(pid)]
    return found[0]


def _png(seed: int = 5) -> bytes:
    from diga_sdk.serving.swap import probe_images

    buf = io.BytesIO()
    Image.fromarray(probe_images((64, 128), n=1, seed=seed)[0]).save(buf, format="PNG")
    return buf.getvalue()


def test_busy_port_fails_at_once(models, capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--model", str(models / "a.safetensors"), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"port {port} on 127.0.0.1 is already in use" in err


def test_a_model_that_cannot_load_exits_1_with_one_line(models, tmp_path, capsys) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"garbage")
    assert main(["serve", "--model", str(garbage), "--runtime", "onnxruntime", "--port", str(free_port())]) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "cannot serve" in lines[0] and "garbage.onnx" in lines[0], lines


def _kill_tree(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        for p in [psutil.Process(proc.pid), *_tree(proc.pid)]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(10)


@pytest.mark.slow
@pytest.mark.server
def test_ctrl_c_stops_the_tree_with_130(models) -> None:
    """SIGINT as soon as BentoML's arbiter and both workers exist (start-up need not finish)."""
    proc = _serve(models / "a.safetensors", free_port())
    try:
        deadline = time.monotonic() + 180
        while len(_tree(proc.pid)) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        tree = _tree(proc.pid)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-3000:]
        assert "Traceback" not in err and "error: interrupted" in err
        time.sleep(0.5)
        assert _alive(tree) == []
    finally:
        _kill_tree(proc)


@pytest.mark.slow
@pytest.mark.server
def test_a_worker_that_cannot_load_its_model_stops_the_server(models) -> None:
    """The hot-swapped model file is corrupted on disk, then the model worker dies: the new worker cannot load
    the recorded model, and the supervisor stops everything with exit 1 and the worker's reason (no restart loop)."""
    import shutil

    swapped = models / "c.safetensors"
    shutil.copy(models / "b.safetensors", swapped)
    port = free_port()
    proc = _serve(models / "a.safetensors", port)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}")
        r = httpx.post(f"http://127.0.0.1:{port}/admin/reload", json={"path": "c.safetensors"}, headers=AUTH,
                       timeout=60)
        assert r.status_code == 200, r.text
        swapped.write_bytes(b"\x00" * 64)
        _model_worker(proc.pid).kill()
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 1, err[-3000:]
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "c.safetensors" in lines[0], err[-3000:]
    finally:
        _kill_tree(proc)
        swapped.unlink(missing_ok=True)
        (models / ".diga-current-model.json").unlink(missing_ok=True)


@pytest.mark.slow
@pytest.mark.server
def test_hot_swap_survives_a_worker_kill_and_sigterm_drains(models, tmp_path) -> None:
    from diga_sdk.runtime.runtimes import open_runtime

    hashes = {k: open_runtime(models / f"{k}.safetensors", runtime="torch", threads=1).model_hash for k in "ab"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(models / "a.safetensors", port)
    try:
        _wait_ready(proc, url)
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as http:
            assert http.get("/metadata").json()["model_hash"] == hashes["a"]
            r = http.post("/admin/reload", json={"path": "b.safetensors"})
            assert r.status_code == 200, r.text
            record = json.loads((models / ".diga-current-model.json").read_text())
            assert record["model"] == "b.safetensors" and record["model_hash"] == hashes["b"]

            worker = _model_worker(proc.pid)
            worker.kill()  # kill -9 of the model worker: BentoML starts a new one
            worker.wait(10)
            deadline = time.monotonic() + 180
            while True:
                assert time.monotonic() < deadline, "the model worker did not come back"
                try:
                    r = http.post("/segment", content=_png(), headers={"Content-Type": "image/png"})
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            assert _model_worker(proc.pid).pid != worker.pid
            assert r.headers["X-Diga-Model"] == hashes["b"]
            assert http.get("/metadata").json()["model_hash"] == hashes["b"]

        # SIGTERM with a request in flight (its body still arriving): readiness goes false, the request
        # finishes with 200, then every process of the tree ends and the exit code is 0
        tree = _tree(proc.pid)
        body = _png()
        result: dict[str, object] = {}

        def slow_upload() -> None:
            def chunks():
                for i in range(0, len(body), max(1, len(body) // 8)):
                    time.sleep(0.5)
                    yield body[i:i + max(1, len(body) // 8)]

            try:
                r = httpx.post(f"{url}/segment", content=chunks(), headers={**AUTH, "Content-Type": "image/png"},
                               timeout=60)
                result["status"] = r.status_code
            except httpx.HTTPError as exc:
                result["status"] = repr(exc)

        t = threading.Thread(target=slow_upload)
        t.start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        saw_unready = False
        while t.is_alive():
            try:
                saw_unready |= httpx.get(f"{url}/readyz", timeout=2).status_code == 503
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        t.join()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert result["status"] == 200 and saw_unready, (result, saw_unready)
        time.sleep(0.5)
        assert _alive(tree) == []
    finally:
        _kill_tree(proc)
        (models / ".diga-current-model.json").unlink(missing_ok=True)


def test_metrics_gauge_parsing_counts_only_real_requests() -> None:
    """`in_flight` reads BentoML's Prometheus gauge: probe and metrics requests are not work to drain."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from diga_sdk.serving.supervise import in_flight

    text = ("# TYPE bentoml_service_request_in_progress gauge\n"
            'bentoml_service_request_in_progress{endpoint="/readyz",service_name="diga_segmenter"} 6.0\n'
            'bentoml_service_request_in_progress{endpoint="/metrics",service_name="diga_segmenter"} 1.0\n'
            'bentoml_service_request_in_progress{endpoint="/segment",service_name="diga_segmenter"} 2.0\n'
            'bentoml_service_request_in_progress{endpoint="/admin/reload",service_name="diga_segmenter"} 1.0\n'
            'bentoml_service_request_in_progress{endpoint="/infer",service_name="diga_model"} 3.0\n')

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(text.encode())

        def log_message(self, *args: object) -> None:
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        assert in_flight(f"http://127.0.0.1:{srv.server_address[1]}", {}) == 3
    finally:
        srv.shutdown()
    assert in_flight(f"http://127.0.0.1:{free_port()}", {}) == -1
