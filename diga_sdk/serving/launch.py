"""Start the real BentoML server: the `bentoml serve` command line for given settings, in the
foreground (`diga serve`) or as a background process that is ready when the context opens (tests,
benchmarks)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import DigaError
from .settings import ServeSettings

SERVICE = "diga_sdk.serving.service:Segmenter"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def serve_command(host: str, port: int) -> list[str]:
    """`bentoml serve` for our service, run by this interpreter."""
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]


def server_env(settings: ServeSettings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the server process: the caller's, minus stale DIGA_* serving variables, plus `settings`."""
    from .settings import ENV_VARS

    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in ENV_VARS}
    env.update(settings.to_env())
    env.setdefault("DIGA_SERVE_SESSION", uuid.uuid4().hex)  # scopes the recorded hot-swap to this start
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    return env


def check_settings(settings: ServeSettings) -> None:
    """Fail before start-up on what would only fail inside a worker: a missing model or models dir."""
    from ..runtime.runtimes import model_format

    model_format(settings.model_path())
    if settings.models_dir is not None and not settings.models_dir.is_dir():
        raise DigaError(f"models directory {settings.models_dir} does not exist; create it or drop --models-dir")


class RunningServer:
    """A `bentoml serve` child process on a loopback port; `url`, `log_path`, `stop()`."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.proc, self.url, self.log_path = proc, url, log_path

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 8.0) -> None:
        """SIGTERM the server's process group and every descendant (BentoML's workers run in sessions of
        their own, out of the group's reach), SIGKILL what lingers."""
        from .supervise import stop_tree

        stop_tree(self.proc, timeout)


@contextlib.contextmanager
def background_server(settings: ServeSettings, log_path: Path, host: str = "127.0.0.1", port: int | None = None,
                      ready_timeout: float = 120.0) -> Iterator[RunningServer]:
    """Start the server, wait until /readyz answers 200 and the model answers /metadata, stop it on exit."""
    import httpx

    check_settings(settings)
    port = port or free_port(host)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(serve_command(host, port), env=server_env(settings), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = RunningServer(proc, f"http://{host}:{port}", log_path)
    headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise DigaError(f"the server exited with code {proc.returncode} during start-up:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise DigaError(f"the server was not ready after {ready_timeout:.0f} s:\n{server.log_tail()}")
            try:
                ready = httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200
                if ready and httpx.get(f"{server.url}/metadata", headers=headers, timeout=30).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        yield server
    finally:
        server.stop()
