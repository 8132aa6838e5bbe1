"""`diga serve` as a supervisor of `bentoml serve`: fail fast before start-up (busy port, a model that
does not load), stop the whole process tree on SIGTERM/SIGINT after draining in-flight requests
(readiness goes false first, then a deadline), and stop with one line when the model worker cannot
load its model instead of letting BentoML restart it forever."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ..errors import DigaError
from ..progress import log
from .settings import ServeSettings

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
POLL_S = 0.5
ENTRY_SERVICE = "diga_segmenter"  # the public BentoML service's name (service.py)


@dataclass(frozen=True)
class Supervision:
    """Deadlines of the supervisor (seconds)."""

    startup_timeout: float = 300.0  # until the first 200 from /readyz
    unready_timeout: float = 120.0  # a ready server that stays unready this long is stopped (its worker died)
    drain_timeout: float = 30.0  # in-flight requests get this long after a stop signal
    stop_timeout: float = 10.0  # after SIGTERM to the tree, then SIGKILL


def check_port_free(host: str, port: int) -> None:
    """Bind the address once: a busy port fails now, with the port named, not as a traceback in a worker."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DigaError(f"port {port} on {host} is already in use (another server?); stop it or pass "
                                "another --port") from None
            raise DigaError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def preflight(settings: ServeSettings) -> str:
    """Open the start-up model once here, as the model worker will, and smoke-test it: a model that cannot
    be served fails before any server process starts. Returns the runtime's label."""
    from ..runtime.runtimes import open_runtime
    from .swap import smoke_test

    try:
        rt = open_runtime(settings.model_path(), runtime=settings.runtime, device=settings.device,
                          precision=settings.precision, threads=settings.threads)
        smoke_test(rt, None)
    except DigaError as exc:
        raise DigaError(f"cannot serve {settings.model_path()}: {exc}") from None
    label = str(rt.label)
    del rt
    return label


class _Stop:
    """Which stop signal arrived (SIGTERM/SIGINT), set by the handlers."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            log.info("%s received: draining, then stopping the server", signal.Signals(signum).name)
        self.signum = self.signum or signum


def supervise(settings: ServeSettings, host: str, port: int, command: list[str], env: dict[str, str],
              limits: Supervision = Supervision()) -> int:
    """Run `command` (bentoml serve) in its own process group and watch it; returns the exit code:
    0 after a SIGTERM drain, 130 after SIGINT; raises DigaError (exit 1) when the server fails."""
    work = Path(tempfile.mkdtemp(prefix="diga-serve-"))
    drain_file, fatal_file = work / "draining", work / "fatal"
    env = {**env, "DIGA_DRAIN_FILE": str(drain_file), "DIGA_FATAL_FILE": str(fatal_file)}
    env.setdefault("DIGA_SERVE_SESSION", uuid.uuid4().hex)
    stop = _Stop()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    url = f"http://{_url_host(host)}:{port}"
    headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
    try:
        ready_since: float | None = None
        unready_since: float | None = None
        started = time.monotonic()
        while True:
            if stop.signum is not None:
                t0 = time.monotonic()
                left = drain(url, headers, drain_file, limits.drain_timeout)
                t1 = time.monotonic()
                stop_tree(proc, limits.stop_timeout)
                log.info("drained in %.1f s (%d request(s) left), server stopped in %.1f s", t1 - t0, left,
                         time.monotonic() - t1)
                return EXIT_INTERRUPTED if stop.signum == signal.SIGINT else EXIT_OK
            fatal = _read_fatal(fatal_file)
            if fatal:
                stop_tree(proc, limits.stop_timeout)
                raise DigaError(fatal)
            code = proc.poll()
            if code is not None:
                stop_tree(proc, limits.stop_timeout)
                raise DigaError(f"the server exited with code {code}; see its log above")
            now = time.monotonic()
            if _ready(url):
                if ready_since is None:
                    log.info("server ready at %s", url)
                ready_since, unready_since = ready_since or now, None
            elif ready_since is None and now - started > limits.startup_timeout:
                stop_tree(proc, limits.stop_timeout)
                raise DigaError(f"the server was not ready after {limits.startup_timeout:.0f} s; stopped it")
            elif ready_since is not None:
                unready_since = unready_since or now
                if now - unready_since > limits.unready_timeout:
                    stop_tree(proc, limits.stop_timeout)
                    raise DigaError(f"the server stayed unready for {limits.unready_timeout:.0f} s (its model worker "
                                    "does not come back); stopped it")
            time.sleep(POLL_S)
    except BaseException:
        stop_tree(proc, limits.stop_timeout)
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for f in (drain_file, fatal_file):
            with contextlib.suppress(OSError):
                f.unlink()
        with contextlib.suppress(OSError):
            work.rmdir()


def drain(url: str, headers: dict[str, str], drain_file: Path, timeout: float) -> int:
    """Readiness false first (the drain file), then wait for in-flight requests to finish, up to `timeout`;
    returns the requests still running at the end (0 when drained)."""
    drain_file.touch()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _ready(url):  # load balancers stop sending once /readyz fails
        time.sleep(0.1)
    running = in_flight(url, headers)
    quiet = 0
    while time.monotonic() < deadline:
        running = in_flight(url, headers)
        quiet = quiet + 1 if running == 0 else 0
        if quiet >= 2 or running < 0:
            return max(running, 0)
        time.sleep(0.2)
    log.warning("drain deadline of %.0f s passed with %d request(s) still running; stopping anyway", timeout, running)
    return running


def in_flight(url: str, headers: dict[str, str]) -> int:
    """Public requests in progress across the API workers (BentoML's Prometheus gauge of the entry service,
    probes and the metrics request itself left out); -1 when the server does not answer.

    The model service's own gauge is not counted: every model call runs inside a public request, and a model
    worker killed mid-call leaves its gauge entries behind (BentoML does not clear a dead worker's values)."""
    import httpx

    try:
        text = httpx.get(f"{url}/metrics", headers=headers, timeout=2).text
    except httpx.HTTPError:
        return -1
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or "request_in_progress" not in line or f'service_name="{ENTRY_SERVICE}"' not in line:
            continue
        if any(f'endpoint="{p}"' in line for p in ("/metrics", "/readyz", "/livez", "/healthz")):
            continue
        with contextlib.suppress(ValueError):
            total += float(line.rsplit(" ", 1)[1])
    return int(round(total))


def stop_tree(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the server's process group and every descendant, SIGKILL what is left after `timeout`."""
    procs = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + timeout
    for p in procs:
        with contextlib.suppress(Exception):
            p.wait(max(0.1, deadline - time.monotonic()))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(Exception):
            p.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _descendants(pid: int) -> list:
    try:
        import psutil
    except ImportError:  # the process group still reaches every worker BentoML starts
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _read_fatal(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
