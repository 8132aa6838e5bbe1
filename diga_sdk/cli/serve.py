"""`diga serve`: start the real BentoML server for a model (loopback by default)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import typer

from ..progress import console
from . import app


@app.command("serve")
def serve_cmd(
    model: Path = typer.Option(..., "--model", help="checkpoint, .onnx, OpenVINO .xml or TensorRT engine to serve"),
    host: str = typer.Option("127.0.0.1", "--host", help="bind address; 0.0.0.0 exposes the server to the network"),
    port: int = typer.Option(3000, "--port", min=1, max=65535),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="HTTP worker processes (decode/encode)"),
    runtime: str = typer.Option("auto", "--runtime", help="auto | torch | onnxruntime | openvino | tensorrt"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    threads: int | None = typer.Option(None, "--threads", min=1, help="inference threads of the runtime"),
    max_miou_drop: float = typer.Option(0.5, "--max-miou-drop", min=0.0,
                                        help="auto: take an INT8/FP16 path only if its checked mIoU loss is within this"),
    models_dir: Path | None = typer.Option(None, "--models-dir",
                                           help="hot-swap loads only from here (default: the model's folder)"),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="adaptive batching of the model call"),
    max_batch_size: int = typer.Option(8, "--max-batch-size", min=1, max=256),
    max_latency_ms: int = typer.Option(10_000, "--max-latency-ms", min=1,
                                       help="queueing budget; requests over it get 503"),
    max_body_mb: float = typer.Option(20.0, "--max-body-mb", min=0.001, help="request body limit (413 above)"),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", min=64, help="decoded pixel limit (413 above)"),
) -> None:
    """Serve POST /segment, GET /metadata and POST /admin/reload with BentoML. Auth: set DIGA_API_TOKEN."""
    from ..serving.launch import check_settings, serve_command, server_env
    from ..serving.settings import ServeSettings

    settings = ServeSettings(
        model=model.resolve(), models_dir=models_dir.resolve() if models_dir else None, runtime=runtime,
        device=device, threads=threads, max_miou_drop=max_miou_drop, api_token=os.environ.get("DIGA_API_TOKEN") or None, batching=batching,
        max_batch_size=max_batch_size, max_latency_ms=max_latency_ms, max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_pixels=max_pixels, workers=workers)
    check_settings(settings)
    if host not in ("127.0.0.1", "localhost", "::1") and settings.api_token is None:
        console.print(f"[yellow]warning:[/] serving on {host} without DIGA_API_TOKEN: anyone who can reach the port "
                      "can call the API", highlight=False)
    console.print(f"serving {model} on http://{host}:{port} (runtime {runtime}, {workers} worker(s), batching "
                  f"{'on' if batching else 'off'}, auth {'on' if settings.api_token else 'off'})", highlight=False)
    proc = subprocess.Popen(serve_command(host, port), env=server_env(settings))
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        code = proc.wait()
    if code not in (0, -2, -15, 130):
        raise typer.Exit(code)
