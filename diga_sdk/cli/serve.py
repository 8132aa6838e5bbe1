"""`diga serve`: start the real BentoML server for a model (loopback by default) and supervise it."""

from __future__ import annotations

import os
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
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=64,
                                          help="decoded pixel limit (413 above; default DIGA_MAX_PIXELS or 40000000)"),
    drain_timeout: float = typer.Option(30.0, "--drain-timeout", min=0.0,
                                        help="seconds in-flight requests get after SIGTERM/SIGINT"),
    startup_timeout: float = typer.Option(300.0, "--startup-timeout", min=1.0,
                                          help="seconds until the server must be ready"),
) -> None:
    """Serve POST /segment, GET /metadata and POST /admin/reload with BentoML. Auth: set DIGA_API_TOKEN.

    SIGTERM drains and exits 0, Ctrl-C drains and exits 130; a model that cannot load, a busy port or a
    server that dies exits 1 with one line."""
    from ..serving.codecs import max_pixels_from_env
    from ..serving.launch import check_settings, serve_command, server_env
    from ..serving.settings import ServeSettings
    from ..serving.supervise import Supervision, check_port_free, preflight, supervise

    settings = ServeSettings(
        model=model.resolve(), models_dir=models_dir.resolve() if models_dir else None, runtime=runtime,
        device=device, threads=threads, max_miou_drop=max_miou_drop, api_token=os.environ.get("DIGA_API_TOKEN") or None, batching=batching,
        max_batch_size=max_batch_size, max_latency_ms=max_latency_ms, max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_pixels=max_pixels if max_pixels is not None else max_pixels_from_env(), workers=workers)
    check_settings(settings)
    check_port_free(host, port)
    if host not in ("127.0.0.1", "localhost", "::1") and settings.api_token is None:
        console.print(f"warning: serving on {host} without DIGA_API_TOKEN: anyone who can reach the port "
                      "can call the API", highlight=False, style="yellow")
    label = preflight(settings)
    console.print(f"serving {model} on http://{host}:{port} ({label}, {workers} worker(s), batching "
                  f"{'on' if batching else 'off'}, auth {'on' if settings.api_token else 'off'})", highlight=False)
    code = supervise(settings, host, port, serve_command(host, port), server_env(settings),
                     Supervision(startup_timeout=startup_timeout, drain_timeout=drain_timeout))
    if code:
        raise typer.Exit(code)
