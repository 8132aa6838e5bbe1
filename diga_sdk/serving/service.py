"""The BentoML service (`bentoml serve diga_sdk.serving.service:Segmenter`, or `diga serve`).

Two BentoML services in one deployment:
- `SegmentModel` (internal, one worker, reached over a private unix socket) owns the runtime; its
  `infer` API is `batchable=True`, so BentoML's adaptive batcher merges concurrent requests into one
  model call; hot-swap replaces the runtime there, so every front worker sees the same model.
- `Segmenter` (public, `--workers N`) decodes, validates and encodes: POST /segment, GET /metadata,
  POST /admin/reload, plus BentoML's /healthz, /livez, /readyz and /metrics; the `GuardMiddleware`
  enforces auth and the body limit before any of it runs.

Settings come from `DIGA_*` environment variables (see settings.py), read when `bentoml serve`
imports this module: the batching parameters are fixed by the decorator at that point.
"""

import logging
import time
from typing import Annotated, Any, Literal

import aiohttp
import anyio
import bentoml
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ..errors import DigaError
from .codecs import RequestError, resize_image, resize_labels
from .middleware import GuardMiddleware
from .pipeline import check_format, prepare, render
from .settings import ServeSettings
from .swap import ModelSlot, describe, record_current, recorded_current, resolve_model_file, smoke_test

logger = logging.getLogger("diga.serving")
SETTINGS = ServeSettings.from_env()
META_TTL_S = 1.0  # how long a front worker trusts its copy of the model metadata
MODEL_CALL_ATTEMPTS = 3


def report_fatal(settings: ServeSettings, message: str) -> None:
    """Tell the `diga serve` supervisor (through its fatal file) that this worker cannot start, so it stops
    the server with this one line instead of BentoML restarting the worker forever."""
    line = " ".join(message.split())
    logger.error("%s", line)
    if settings.fatal_file is not None:
        try:
            from ..io import atomic_write_bytes

            atomic_write_bytes(settings.fatal_file, line.encode())
        except OSError:
            logger.exception("cannot write the fatal file %s", settings.fatal_file)


def _pin_dependency_session(proxy: Any) -> None:
    """Stop BentoML's dependency client from recycling its HTTP session under load.

    BentoML 1.4's `SessionManager` (_bentoml_impl/client/proxy2.py) replaces its aiohttp session every
    100 requests or 300 s by closing the old one, which cuts off requests still in flight on it
    (ServerDisconnectedError / "Cannot write to closing transport" -> failed requests; measured here with 8
    concurrent clients). Over a private unix socket there is nothing to refresh, so keep one session."""
    manager = getattr(getattr(proxy, "to_async", None), "_session_manager", None)
    if manager is not None and hasattr(manager, "max_requests") and hasattr(manager, "max_age"):
        manager.max_requests = 2**62
        manager.max_age = float("inf")
    else:
        logger.warning("BentoML's dependency client changed; session pinning skipped (retries still apply)")


@bentoml.service(name="diga_model", workers=1, threads=1, traffic={"timeout": SETTINGS.timeout_s})
class SegmentModel:
    """Owns the runtime: batched inference, metadata, hot-swap."""

    def __init__(self) -> None:
        from ..runtime.runtimes import open_runtime

        self.settings = ServeSettings.from_env()
        s = self.settings
        path, generation = s.model_path(), 0
        try:
            recorded = recorded_current(s.resolved_models_dir(), s.session, s.model_path())
            if recorded is not None:  # a hot-swap happened in this session: a restarted worker keeps serving it
                path, generation = recorded[0], int(recorded[1].get("generation", 1))
                logger.info("restarting with the hot-swapped model %s (generation %d)", path.name, generation)
            rt = open_runtime(path, runtime=s.runtime, device=s.device, precision=s.precision, threads=s.threads,
                              max_miou_drop=s.max_miou_drop)
            smoke_test(rt, None)  # a model that fails it is not served at start-up either
        except Exception as exc:
            report_fatal(s, f"the model worker cannot serve {path}: {exc}")
            raise
        self.slot = ModelSlot(rt)
        self.slot.generation = generation
        self.batch_sizes: dict[int, int] = {}  # batch size -> model calls (infer runs one batch at a time)
        logger.info("serving %s with %s (hash %s)", path.name, rt.label, rt.model_hash)

    @bentoml.api(batchable=SETTINGS.batching, max_batch_size=SETTINGS.max_batch_size,
                 max_latency_ms=SETTINGS.max_latency_ms)
    def infer(self, images: np.ndarray) -> np.ndarray:
        """(B,h,w,3) uint8 at the model's input size -> (B,h,w) uint8 labels, on the runtime taken once per batch."""
        rt = self.slot.current
        images = np.ascontiguousarray(images, dtype=np.uint8)
        self.batch_sizes[len(images)] = self.batch_sizes.get(len(images), 0) + 1
        size = tuple(int(v) for v in rt.meta.input_size)
        if images.shape[1:3] == size:
            return rt.predict(images)
        # the front resized for a model swapped out meanwhile: resize for this one, answer at the sent size
        sent = images.shape[1:3]
        resized = np.stack([resize_image(im, size) for im in images])
        return np.stack([resize_labels(lab, sent) for lab in rt.predict(resized)])

    @bentoml.api
    async def describe(self) -> dict:
        """The served model's metadata and the serving configuration."""
        s = self.settings
        return {**describe(self.slot.current), "generation": self.slot.generation,
                "batching": {"enabled": s.batching, "max_batch_size": s.max_batch_size,
                             "max_latency_ms": s.max_latency_ms,
                             "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}}

    @bentoml.api
    async def reload(self, path: str) -> dict:
        """Load `path` (re-checked against the models dir), smoke-test it, swap; never raises for user errors."""
        s = self.settings
        try:
            models_dir = s.resolved_models_dir()
            target = resolve_model_file(models_dir, path)

            def record(rt: Any, generation: int) -> None:
                record_current(models_dir, target, rt.model_hash, generation, s.session, s.model_path())

            result = await anyio.to_thread.run_sync(
                lambda: self.slot.load_and_swap(target, s.runtime, s.device, s.precision, s.threads, record))
        except RequestError as exc:
            return {"ok": False, "status": exc.status, "error": str(exc)}
        except DigaError as exc:
            return {"ok": False, "status": 422, "error": str(exc)}
        logger.info("hot-swap to %s done (generation %d)", target.name, result["generation"])
        return {"ok": True, "status": 200, **result}


# ------------------------------------------------------------------------------------------ public
app = FastAPI(title="diga segmentation service", version="1", docs_url=None, redoc_url=None, openapi_url=None)

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_SEGMENT_BODY = {"requestBody": {"required": True, "description": "one image as the raw body or a multipart field 'image'",
                                 "content": {"image/png": _BINARY, "image/jpeg": _BINARY, "image/webp": _BINARY,
                                             "multipart/form-data": {"schema": {
                                                 "type": "object", "required": ["image"],
                                                 "properties": {"image": {"type": "string", "format": "binary"}}}}}}}
_ERROR = {"content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}
_SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the label map (PNG, train ids), the overlay (PNG) or JSON",
          "content": {"image/png": _BINARY, "application/json": {"schema": {"type": "object"}}}},
    400: {"description": "not an image / bad parameter", **_ERROR},
    401: {"description": "missing or wrong bearer token", **_ERROR},
    413: {"description": "body or pixel count over the limit", **_ERROR},
    415: {"description": "image format not accepted", **_ERROR},
    503: {"description": "overloaded: the batch queue's latency budget is exceeded", **_ERROR},
}


class ReloadRequest(BaseModel):
    path: str = Field(min_length=1, max_length=4096, description="a model file inside the models directory")


@app.exception_handler(RequestValidationError)
async def _bad_parameters(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return JSONResponse({"error": f"bad request: {where}: {first.get('msg', 'invalid')}"}, status_code=400)


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


async def _read_image(request: Request) -> bytes:
    """The image bytes from a multipart upload (field 'image', or the only file) or the raw body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        return await request.body()
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as exc:  # python-multipart / starlette parse errors: a client error
        raise RequestError(f"malformed multipart body: {exc}") from None
    upload = form.get("image")
    if upload is None:
        files = [v for _, v in form.multi_items() if hasattr(v, "read")]
        upload = files[0] if len(files) == 1 else None
    if upload is None or not hasattr(upload, "read"):
        raise RequestError("multipart body without an image: send the file in the field 'image'")
    return await upload.read()


@bentoml.service(name="diga_segmenter", workers=SETTINGS.workers,
                 traffic={"timeout": SETTINGS.timeout_s}, metrics={"enabled": True})
@bentoml.asgi_app(app, path="/")
class Segmenter:
    """The public API: segment images, describe the model, hot-swap it."""

    model = bentoml.depends(SegmentModel)

    def __init__(self) -> None:
        self.settings = ServeSettings.from_env()
        self._meta: dict[str, Any] | None = None
        self._meta_at = 0.0
        self._pinned = False

    def __is_ready__(self) -> bool:
        """False once the supervisor started a drain (its drain file exists): load balancers stop sending."""
        drain = self.settings.drain_file
        return drain is None or not drain.exists()

    async def call_model(self, api: str, **kwargs: Any) -> Any:
        """Call the model service; a call cut off by a closed connection is retried (every API is idempotent)."""
        if not self._pinned:
            _pin_dependency_session(self.model)
            self._pinned = True
        for attempt in range(MODEL_CALL_ATTEMPTS):
            try:
                return await getattr(self.model.to_async, api)(**kwargs)
            except aiohttp.ClientConnectionError:
                if attempt == MODEL_CALL_ATTEMPTS - 1:
                    raise
                logger.warning("model service connection closed during %s; retrying", api)

    async def meta(self, fresh: bool = False) -> dict[str, Any]:
        """The served model's metadata, cached for META_TTL_S (the model side re-checks sizes anyway)."""
        now = time.monotonic()
        if fresh or self._meta is None or now - self._meta_at > META_TTL_S:
            self._meta = await self.call_model("describe")
            self._meta_at = now
        return self._meta

    @app.post("/segment", openapi_extra=_SEGMENT_BODY, responses=_SEGMENT_RESPONSES, response_class=Response,
              summary="Segment one image")
    async def segment(self, request: Request,
                      format: Annotated[Literal["png", "overlay", "json"], Query(
                          description="png: label map of train ids; overlay: colour overlay; json: histogram")] = "png",
                      rle: Annotated[bool, Query(description="json only: add a COCO RLE per class")] = False,
                      alpha: Annotated[float, Query(ge=0.0, le=1.0, description="overlay opacity")] = 0.5) -> Response:
        """One image (raw body or multipart 'image') -> its label map at the image's own size."""
        try:
            check_format(format, alpha)
            data = await _read_image(request)
            meta = await self.meta()
            size = (int(meta["input_size"][0]), int(meta["input_size"][1]))
            prepared = await anyio.to_thread.run_sync(prepare, data, size, self.settings.max_pixels)
            labels = await self.call_model("infer", images=prepared.model_input[None])
            body, media = await anyio.to_thread.run_sync(render, prepared, np.asarray(labels)[0], format, meta, rle,
                                                         alpha)
        except RequestError as exc:
            return _error(exc)
        except bentoml.exceptions.ServiceUnavailable as exc:
            return JSONResponse({"error": f"overloaded, retry later: {exc}"}, status_code=503,
                                headers={"Retry-After": "1"})
        except (bentoml.exceptions.BentoMLException, aiohttp.ClientError) as exc:  # the model service failed or restarts
            logger.exception("model service call failed")
            return JSONResponse({"error": f"the model service is unavailable ({type(exc).__name__}); retry later"},
                                status_code=503, headers={"Retry-After": "1"})
        return Response(body, media_type=media, headers={"X-Diga-Model": str(meta.get("model_hash", ""))})

    @app.get("/metadata", summary="The served model and the serving configuration")
    async def metadata(self) -> dict:
        """Classes, palette, model name and hash, runtime, input size, batching settings."""
        meta = await self.meta(fresh=True)
        s = self.settings
        return {**meta, "limits": {"max_body_bytes": s.max_body_bytes, "max_pixels": s.max_pixels},
                "auth": s.api_token is not None}

    @app.post("/admin/reload", summary="Hot-swap the model (bearer token required)",
              responses={400: _ERROR, 401: _ERROR, 403: _ERROR, 404: _ERROR, 409: _ERROR, 422: _ERROR})
    async def admin_reload(self, body: ReloadRequest) -> JSONResponse:
        """Load a model file from the models directory, smoke-test it, then swap atomically."""
        s = self.settings
        if s.api_token is None:  # the middleware refuses this route already; keep the rule in one more place
            return JSONResponse({"error": "admin routes are disabled without DIGA_API_TOKEN"}, status_code=403)
        try:
            resolve_model_file(s.resolved_models_dir(), body.path)
        except RequestError as exc:
            return _error(exc)
        result = await self.call_model("reload", path=body.path)
        if not result.get("ok"):
            return JSONResponse({"error": result.get("error", "reload failed")}, status_code=int(result["status"]))
        self._meta = None
        return JSONResponse(result)


Segmenter.add_asgi_middleware(GuardMiddleware, api_token=SETTINGS.api_token, max_body_bytes=SETTINGS.max_body_bytes)
