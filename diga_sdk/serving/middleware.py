"""The service's guard, a plain ASGI middleware (BentoML has neither auth nor a body-size limit):
bearer-token auth with a constant-time compare on every route but the health probes, the admin routes
refused outright when no token is configured, and the request body capped before any handler runs."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEALTH_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
ADMIN_PREFIX = "/admin/"


class GuardMiddleware:
    """Auth (401), admin lock-out (403), body cap (413); everything else passes through unchanged."""

    def __init__(self, app: ASGIApp, api_token: str | None = None, max_body_bytes: int = 20 * 1024 * 1024) -> None:
        self.app = app
        self.token = api_token.encode() if api_token else None
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in HEALTH_PATHS:
            await self.app(scope, receive, send)
            return
        if path.startswith(ADMIN_PREFIX) and self.token is None:
            await _reply(send, 403, "admin routes are disabled: start the server with DIGA_API_TOKEN set to enable them")
            return
        if self.token is not None and not self._authorized(scope):
            await _reply(send, 401, "missing or wrong bearer token: send 'Authorization: Bearer <DIGA_API_TOKEN>'",
                         [(b"www-authenticate", b'Bearer realm="diga"')])
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _reply(send, 413, self._too_large(declared))
            return
        body = bytearray()
        more = True
        while more:  # read (and cap) the whole body before the app sees any of it
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await _reply(send, 413, self._too_large(None))
                return
        await self.app(scope, _replay(bytes(body), receive), send)

    def _authorized(self, scope: Scope) -> bool:
        assert self.token is not None
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                given = value
                break
        scheme, _, credential = given.partition(b" ")
        # compare_digest runs in time independent of where the bytes differ
        ok = hmac.compare_digest(credential.strip(), self.token)
        return ok and scheme.lower() == b"bearer"

    def _too_large(self, declared: int | None) -> str:
        body = f"request body of {declared} bytes" if declared is not None else "request body"
        return (f"{body} exceeds the limit of {self.max_body_bytes} bytes (DIGA_MAX_BODY_BYTES); "
                "send a smaller image")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands the buffered body over once, then defers to the real one (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reply(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})
