"""Load test of the serving endpoint on loopback: N concurrent clients (bounded in requests and seconds)
against the real `bentoml serve` server, with adaptive batching on and off, beside the runtime's own
in-process batched throughput. Writes JSON + a markdown table.

    python benchmarks/bench_serving.py --model MODEL --out runs/bench-serving \
        [--runtime auto] [--size 256x512] [--clients-on 16,32] [--clients-off 16] [--requests 2000]

Everything runs on this machine: the clients share its cores with the server (noted in the output).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def payloads(size: tuple[int, int], images_dir: Path | None, n: int = 8) -> list[bytes]:
    """`n` PNG-encoded frames at `size`: real frames from `images_dir` if given, else structured noise."""
    from PIL import Image

    from diga_sdk.serving.codecs import encode_png, resize_image
    from diga_sdk.serving.swap import probe_images

    frames: list[np.ndarray] = []
    if images_dir is not None:
        for p in sorted(images_dir.rglob("*.png"))[:n]:
            frames.append(resize_image(np.asarray(Image.open(p).convert("RGB")), size))
    if len(frames) < n:
        frames += list(probe_images(size, n=n - len(frames), seed=11))
    return [encode_png(f) for f in frames]


def in_process(model: Path, runtime: str, size: tuple[int, int], batch: int, seconds: float) -> dict[str, Any]:
    """The runtime's own throughput on (batch, H, W, 3) uint8 arrays, no HTTP, no codecs."""
    from diga_sdk.runtime.runtimes import open_runtime
    from diga_sdk.serving.swap import probe_images

    rt = open_runtime(model, runtime=runtime)
    out: dict[str, Any] = {"runtime": rt.label}
    for b in sorted({1, batch}):
        x = probe_images(size, n=b, seed=3)
        rt.predict(x)  # warm-up
        times = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(times) < 5:
            t0 = time.perf_counter()
            rt.predict(x)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        out[f"batch{b}"] = {"calls": len(times), "median_ms": med * 1e3, "images_per_s": b / med}
    return out


async def load(url: str, token: str | None, bodies: list[bytes], clients: int, requests: int,
               seconds: float) -> dict[str, Any]:
    """`clients` concurrent loops posting images until `requests` were sent or `seconds` passed."""
    import aiohttp

    headers = {"Content-Type": "image/png", **({"Authorization": f"Bearer {token}"} if token else {})}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession, k: int) -> None:
        nonlocal issued
        i = k
        while issued < requests and time.perf_counter() < deadline:
            issued += 1
            body = bodies[i % len(bodies)]
            i += clients
            t0 = time.perf_counter()
            try:
                async with session.post(f"{url}/segment", data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
                        continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)

    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session, k) for k in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1e3
    return {"clients": clients, "requests": issued, "ok": len(latencies), "errors": sum(errors.values()),
            "error_kinds": errors, "seconds": wall, "throughput_rps": len(latencies) / wall,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None}


def serve_and_load(args: argparse.Namespace, bodies: list[bytes], batching: bool, clients: list[int],
                   requests: dict[int, int], log_dir: Path) -> list[dict[str, Any]]:
    """Start the server (batching on/off), warm it up, run each client count, read the batch sizes it used."""
    import httpx

    from diga_sdk.progress import log
    from diga_sdk.serving.launch import background_server
    from diga_sdk.serving.settings import ServeSettings

    token = "bench-token"
    settings = ServeSettings(model=args.model.resolve(), runtime=args.runtime, api_token=token, batching=batching,
                             max_batch_size=args.max_batch_size, max_latency_ms=args.max_latency_ms,
                             workers=args.workers)
    rows = []
    with background_server(settings, log_dir / f"server-batching-{'on' if batching else 'off'}.log") as srv:
        asyncio.run(load(srv.url, token, bodies, max(clients), args.warmup, 120))  # warm-up + batcher calibration
        for n in clients:
            before = httpx.get(f"{srv.url}/metadata", headers={"Authorization": f"Bearer {token}"}).json()
            res = asyncio.run(load(srv.url, token, bodies, n, requests[n], args.duration))
            after = httpx.get(f"{srv.url}/metadata", headers={"Authorization": f"Bearer {token}"}).json()
            b0, b1 = before["batching"]["batch_sizes"], after["batching"]["batch_sizes"]
            used = {k: v - b0.get(k, 0) for k, v in b1.items() if v - b0.get(k, 0) > 0}
            calls = sum(used.values())
            res.update(batching=batching, runtime=after["runtime"], batch_sizes=used,
                       mean_batch=(sum(int(k) * v for k, v in used.items()) / calls) if calls else None)
            log.info("batching %s, %d clients: %.1f req/s, p50 %.0f ms, p99 %.0f ms, %d errors, mean batch %.2f",
                     "on" if batching else "off", n, res["throughput_rps"], res["p50_ms"] or -1, res["p99_ms"] or -1,
                     res["errors"], res["mean_batch"] or 0)
            rows.append(res)
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The load-test table and the ratios the issue asks for."""
    lines = ["| batching | clients | requests | errors | req/s | p50 ms | p99 ms | mean batch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["server"]:
        lines.append(f"| {'on' if r['batching'] else 'off'} | {r['clients']} | {r['requests']} | {r['errors']} | "
                     f"{r['throughput_rps']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                     f"{(r['mean_batch'] or 0):.2f} |")
    ip = result["in_process"]
    lines += ["", f"In-process runtime ({ip['runtime']}), no HTTP: "
              + ", ".join(f"batch {k[5:]}: {v['images_per_s']:.1f} images/s ({v['median_ms']:.1f} ms/call)"
                          for k, v in ip.items() if k.startswith("batch")), ""]
    for k, v in result["ratios"].items():
        lines.append(f"- {k}: {v:.2f}" if isinstance(v, float) else f"- {k}: {v}")
    env = result["env"]
    lines += ["", f"Machine: {env['cpu']}, {env['cores']} cores; load average at start {result['loadavg_start']}, "
              f"at end {result['loadavg_end']} (clients, server and other jobs share the cores)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import os

    from diga_sdk.cli.common import parse_size
    from diga_sdk.io import atomic_write_bytes, atomic_write_json
    from diga_sdk.progress import log, setup_logging
    from diga_sdk.results import env_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--images", type=Path, default=None, help="folder of real frames (PNG) to send")
    ap.add_argument("--clients-on", default="16,32")
    ap.add_argument("--clients-off", default="16")
    ap.add_argument("--requests", type=int, default=2000, help="requests at the largest client count")
    ap.add_argument("--requests-small", type=int, default=600, help="requests at the other client counts")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--duration", type=float, default=300.0, help="time bound of one load run (s)")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--max-latency-ms", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--inproc-seconds", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-serving"))
    args = ap.parse_args(argv)
    setup_logging()
    size = parse_size(args.size)
    args.out.mkdir(parents=True, exist_ok=True)
    bodies = payloads(size, args.images)
    load0 = " ".join(f"{v:.1f}" for v in os.getloadavg())
    log.info("in-process runtime throughput (%s, %dx%d)", args.runtime, *size)
    inproc = in_process(args.model, args.runtime, size, args.max_batch_size, args.inproc_seconds)
    clients_on = [int(c) for c in args.clients_on.split(",")]
    clients_off = [int(c) for c in args.clients_off.split(",")]
    # the largest client count with batching on gets --requests (the zero-error run); every other run --requests-small
    on = serve_and_load(args, bodies, True, clients_on,
                        {n: args.requests if n == max(clients_on) else args.requests_small for n in clients_on}, args.out)
    off = serve_and_load(args, bodies, False, clients_off, {n: args.requests_small for n in clients_off}, args.out)
    best_inproc = max(v["images_per_s"] for k, v in inproc.items() if k.startswith("batch"))
    ratios: dict[str, Any] = {}
    for n in sorted({r["clients"] for r in on} & {r["clients"] for r in off}):
        r_on = next(r for r in on if r["clients"] == n)
        r_off = next(r for r in off if r["clients"] == n)
        ratios[f"batching on / off at {n} clients (target >= 1.3)"] = r_on["throughput_rps"] / r_off["throughput_rps"]
    best_on = max(on, key=lambda r: r["throughput_rps"])
    ratios[f"served (batching on, {best_on['clients']} clients) / in-process runtime, best of batch 1 and "
           f"{args.max_batch_size} (target >= 0.8)"] = (
        best_on["throughput_rps"] / best_inproc)
    big = max(on, key=lambda r: r["clients"])
    ratios[f"errors at {big['clients']} clients over {big['requests']} requests (target 0 over >= 2000)"] = big["errors"]
    result = {"size": list(size), "model": str(args.model), "in_process": inproc, "server": on + off, "ratios": ratios,
              "settings": {k: str(v) for k, v in vars(args).items()}, "env": env_info(), "loadavg_start": load0,
              "loadavg_end": " ".join(f"{v:.1f}" for v in os.getloadavg())}
    atomic_write_json(args.out / "bench_serving.json", result)
    table = markdown(result)
    atomic_write_bytes(args.out / "bench_serving.md", table.encode())
    print(table)
    return result


if __name__ == "__main__":
    main()
