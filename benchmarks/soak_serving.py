"""Soak test of `diga serve` on loopback: mixed good and bad requests for N minutes against the real
supervised server, one hot-swap (at 1/3) and one `kill -9` of the model worker (at 2/3), then SIGTERM.

Counts requests and errors by kind, worker restarts, and the peak RSS of every server process in its
first and last minute; checks that no good request failed (a 503 with Retry-After during the worker
restart is retried, as a client is told to, and counted), that RSS did not grow by more than 10 % and
that no process outlived the stop. Writes JSON (default benchmarks/results/soak_serving.json).

    python benchmarks/soak_serving.py [--minutes 10] [--clients 4] [--json PATH]

The clients share this machine's cores with the server; the load average is recorded.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

TOKEN = "soak-token"
SIZE = (128, 256)
GOOD_RETRY_S = 180.0  # a good request answered 503 (model worker restarting) is retried for this long


def make_models(folder: Path) -> dict[str, Path]:
    """Two light models (different seeds: different answers) at SIZE, as real checkpoints."""
    import torch

    from diga_sdk.models.checkpoint import ModelMeta, save_checkpoint
    from diga_sdk.models.registry import build_model

    paths = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        model = build_model("light", 19).eval()
        paths[name] = save_checkpoint(model, folder / f"{name}.safetensors",
                                      ModelMeta(model_name="light", input_size=list(SIZE), stage="soak"))
    return paths


def request_kinds() -> list[tuple[str, float, int]]:
    """(kind, weight, expected status) of the mix: 70 % good, 30 % bad of six kinds."""
    return [("good_png", 0.35, 200), ("good_jpeg_other_size", 0.15, 200), ("good_multipart_json", 0.20, 200),
            ("bad_garbage", 0.06, 400), ("bad_token", 0.05, 401), ("bad_format_param", 0.05, 400),
            ("bad_gif", 0.03, 415), ("bad_too_many_pixels", 0.04, 413), ("bad_body_too_large", 0.03, 413),
            ("bad_truncated_png", 0.04, 400)]


def bodies() -> dict[str, bytes]:
    from PIL import Image

    from diga_sdk.serving.swap import probe_images

    def enc(img: Image.Image, fmt: str, **kw: Any) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    frame = Image.fromarray(probe_images(SIZE, n=1, seed=7)[0])
    png = enc(frame, "PNG")
    return {"png": png, "jpeg": enc(frame.resize((300, 150)), "JPEG", quality=90), "gif": enc(frame, "GIF"),
            "bomb": enc(Image.new("1", (8000, 8000)), "PNG"), "truncated": png[: len(png) // 2],
            "big": os.urandom(3 * 1024 * 1024)}


def one_request(client: httpx.Client, kind: str, data: dict[str, bytes]) -> int:
    png = {"Content-Type": "image/png"}
    if kind == "good_png":
        return client.post("/segment", content=data["png"], headers=png).status_code
    if kind == "good_jpeg_other_size":
        return client.post("/segment", content=data["jpeg"], headers={"Content-Type": "image/jpeg"}).status_code
    if kind == "good_multipart_json":
        return client.post("/segment", params={"format": "json", "rle": "true"},
                           files={"image": ("f.png", data["png"], "image/png")}).status_code
    if kind == "bad_garbage":
        return client.post("/segment", content=b"not an image at all", headers=png).status_code
    if kind == "bad_token":
        return client.post("/segment", content=data["png"], headers={**png, "Authorization": "Bearer wrong"}).status_code
    if kind == "bad_format_param":
        return client.post("/segment", params={"format": "bmp"}, content=data["png"], headers=png).status_code
    if kind == "bad_gif":
        return client.post("/segment", content=data["gif"], headers={"Content-Type": "image/gif"}).status_code
    if kind == "bad_too_many_pixels":
        return client.post("/segment", content=data["bomb"], headers=png).status_code
    if kind == "bad_body_too_large":
        return client.post("/segment", content=data["big"], headers=png).status_code
    if kind == "bad_truncated_png":
        return client.post("/segment", content=data["truncated"], headers=png).status_code
    raise ValueError(kind)


class Soak:
    def __init__(self, url: str, seconds: float, clients: int, seed: int = 0) -> None:
        self.url, self.seconds, self.clients = url, seconds, clients
        self.kinds = request_kinds()
        self.data = bodies()
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.statuses: dict[str, Counter[int]] = {k: Counter() for k, _, _ in self.kinds}
        self.unexpected: Counter[str] = Counter()
        self.good_retried_503 = 0
        self.good_failed: list[str] = []
        self.latency_ms: list[float] = []
        self.stop = threading.Event()
        self.rng = random.Random(seed)

    def client_loop(self, cid: int) -> None:
        rng = random.Random(cid)
        names = [k for k, _, _ in self.kinds]
        weights = [w for _, w, _ in self.kinds]
        expect = {k: s for k, _, s in self.kinds}
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as c:
            while not self.stop.is_set():
                kind = rng.choices(names, weights)[0]
                t0 = time.perf_counter()
                deadline = time.monotonic() + GOOD_RETRY_S
                while True:
                    try:
                        status = one_request(c, kind, self.data)
                    except httpx.HTTPError as exc:
                        status = -1
                        err = type(exc).__name__
                    else:
                        err = ""
                    retry = kind.startswith("good") and status in (503, -1) and time.monotonic() < deadline
                    if not retry:
                        break
                    with self.lock:
                        self.good_retried_503 += 1
                    time.sleep(1.0)
                with self.lock:
                    self.requests[kind] += 1
                    self.statuses[kind][status] += 1
                    if status == expect[kind] and kind.startswith("good"):
                        self.latency_ms.append((time.perf_counter() - t0) * 1e3)
                    if status != expect[kind]:
                        self.unexpected[f"{kind}:{status}{':' + err if err else ''}"] += 1
                        if kind.startswith("good"):
                            self.good_failed.append(f"{kind} -> {status} {err}")


def server_processes(pid: int) -> dict[int, str]:
    """pid -> role of the supervisor and every process under it."""
    out = {pid: "diga serve (supervisor)"}
    try:
        for p in psutil.Process(pid).children(recursive=True):
            cmd = " ".join(p.cmdline())
            role = ("model worker" if "diga_model" in cmd else "api worker" if "diga_segmenter" in cmd
                    else "bentoml arbiter" if "bentoml serve" in cmd else "other")
            out[p.pid] = role
    except psutil.Error:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "soak_serving.json")
    args = ap.parse_args()
    seconds = args.minutes * 60

    work = Path(tempfile.mkdtemp(prefix="diga-soak-"))
    models = make_models(work)
    from diga_sdk.runtime.runtimes import open_runtime
    from diga_sdk.serving.launch import free_port

    hashes = {k: open_runtime(p, runtime="torch", threads=1).model_hash for k, p in models.items()}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = work / "serve.log"
    env = {**os.environ, "DIGA_API_TOKEN": TOKEN, "DIGA_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "diga_sdk.cli", "serve", "--model", str(models["a"]), "--port", str(port),
           "--runtime", "torch", "--threads", "1", "--workers", "2", "--max-pixels", "20000000",
           "--max-body-mb", "2"]
    load_start = os.getloadavg()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t_start = time.monotonic()
    while True:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() - t_start < 300, "server not ready"
        time.sleep(0.5)
    startup_s = time.monotonic() - t_start

    soak = Soak(url, seconds, args.clients)
    seen: dict[int, str] = {}
    rss_samples: dict[int, list[tuple[float, float]]] = {}
    events: list[dict[str, Any]] = []
    threads = [threading.Thread(target=soak.client_loop, args=(i,)) for i in range(args.clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    swapped = killed = False
    old_worker = None
    while time.monotonic() - t0 < seconds:
        now = time.monotonic() - t0
        for pid, role in server_processes(proc.pid).items():
            seen.setdefault(pid, role)
            try:
                rss_samples.setdefault(pid, []).append((now, psutil.Process(pid).memory_info().rss / 2**20))
            except psutil.Error:
                pass
        if not swapped and now > seconds / 3:
            r = httpx.post(f"{url}/admin/reload", json={"path": "b.safetensors"},
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
            events.append({"t_s": round(now, 1), "event": "hot-swap to b", "status": r.status_code})
            swapped = True
        if not killed and now > 2 * seconds / 3:
            old_worker = next(pid for pid, role in server_processes(proc.pid).items() if role == "model worker")
            os.kill(old_worker, signal.SIGKILL)
            events.append({"t_s": round(now, 1), "event": f"kill -9 model worker {old_worker}"})
            killed = True
        time.sleep(2.0)
    soak.stop.set()
    for t in threads:
        t.join(300)
    meta = httpx.get(f"{url}/metadata", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60).json()
    load_end = os.getloadavg()
    t_stop = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(120)
    stop_s = time.monotonic() - t_stop
    time.sleep(1.0)
    leaked = [pid for pid in seen if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]

    def window_peak(samples: list[tuple[float, float]], first: bool) -> float | None:
        if not samples:
            return None
        t_first, t_last = samples[0][0], samples[-1][0]
        sel = [r for t, r in samples if (t <= t_first + 60 if first else t >= t_last - 60)]
        return round(max(sel), 1)

    processes = []
    for pid, role in seen.items():
        s = rss_samples.get(pid, [])
        start, end = window_peak(s, True), window_peak(s, False)
        processes.append({"pid": pid, "role": role, "seconds_sampled": round(s[-1][0] - s[0][0], 1) if s else 0,
                          "peak_rss_mib_first_minute": start, "peak_rss_mib_last_minute": end,
                          "growth_pct": round(100 * (end - start) / start, 1) if start and end else None})
    model_workers = [p for p in processes if p["role"] == "model worker"]
    total = sum(soak.requests.values())
    good = sum(n for k, n in soak.requests.items() if k.startswith("good"))
    result = {
        "minutes": args.minutes, "clients": args.clients, "startup_s": round(startup_s, 1),
        "requests": total, "good_requests": good, "bad_requests": total - good,
        "by_kind": {k: {"requests": soak.requests[k], "statuses": {str(s): n for s, n in soak.statuses[k].items()}}
                    for k, _, _ in soak.kinds},
        "errors_by_kind": {k: {str(st): n for st, n in c.items() if st != 200} for k, c in soak.statuses.items()
                           if any(st != 200 for st in c)},
        "unexpected_statuses": dict(soak.unexpected), "good_failed": len(soak.good_failed),
        "good_failed_examples": soak.good_failed[:10], "good_503_retries": soak.good_retried_503,
        "good_latency_ms": {"p50": round(float(np.percentile(soak.latency_ms, 50)), 1),
                            "p99": round(float(np.percentile(soak.latency_ms, 99)), 1)} if soak.latency_ms else None,
        "events": events, "model_worker_restarts": max(0, len(model_workers) - 1),
        "served_after": {"model_hash": meta.get("model_hash"), "is_b": meta.get("model_hash") == hashes["b"],
                         "generation": meta.get("generation")},
        "processes": processes,
        "max_growth_pct": max((p["growth_pct"] for p in processes if p["growth_pct"] is not None), default=None),
        "stop": {"exit_code": code, "seconds": round(stop_s, 1), "leaked_pids": leaked},
        "machine": {"cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                                 if ln.startswith("model name")), platform.processor()),
                    "cores": os.cpu_count(), "load_average_start": [round(x, 2) for x in load_start],
                    "load_average_end": [round(x, 2) for x in load_end]},
    }
    result["checks"] = {"no_failed_good_request": result["good_failed"] == 0,
                        "no_unexpected_bad_status": not any(k.startswith("bad") for k in soak.unexpected),
                        "swapped_model_survived_worker_kill": result["served_after"]["is_b"],
                        "rss_growth_within_10pct": all(p["growth_pct"] is None or p["growth_pct"] <= 10
                                                       for p in processes),
                        "clean_stop": code == 0 and not leaked}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("requests", "good_failed", "good_503_retries", "errors_by_kind",
                                             "model_worker_restarts", "max_growth_pct", "stop", "checks")}, indent=2))


if __name__ == "__main__":
    main()
