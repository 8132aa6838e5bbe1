"""Serving settings: one typed object read from `DIGA_*` environment variables, so that `diga serve`,
`bentoml serve` and a packaged Bento configure the service the same way."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from ..config import DigaConfig
from ..errors import DigaError
from .codecs import DEFAULT_MAX_PIXELS

# environment variable -> field name
ENV_VARS = {
    "DIGA_MODEL": "model",
    "DIGA_MODELS_DIR": "models_dir",
    "DIGA_RUNTIME": "runtime",
    "DIGA_DEVICE": "device",
    "DIGA_PRECISION": "precision",
    "DIGA_MAX_MIOU_DROP": "max_miou_drop",
    "DIGA_THREADS": "threads",
    "DIGA_API_TOKEN": "api_token",
    "DIGA_MAX_BODY_BYTES": "max_body_bytes",
    "DIGA_MAX_PIXELS": "max_pixels",
    "DIGA_BATCHING": "batching",
    "DIGA_MAX_BATCH_SIZE": "max_batch_size",
    "DIGA_MAX_LATENCY_MS": "max_latency_ms",
    "DIGA_WORKERS": "workers",
    "DIGA_TIMEOUT_S": "timeout_s",
    "DIGA_SERVE_SESSION": "session",
    "DIGA_DRAIN_FILE": "drain_file",
    "DIGA_FATAL_FILE": "fatal_file",
}


class ServeSettings(DigaConfig):
    """Everything the service reads at start-up; defaults are safe for a loopback deployment."""

    model_config = ConfigDict(frozen=True)

    model: Path | None = None  # the model file served at start-up (checkpoint, .onnx, .xml, engine)
    models_dir: Path | None = None  # hot-swap only loads files inside it (default: the model's folder)
    runtime: Literal["auto", "torch", "onnxruntime", "openvino", "tensorrt"] = "auto"
    device: str = "cpu"
    precision: Literal["fp32", "fp16", "bf16", "int8"] | None = None
    max_miou_drop: float = Field(default=0.5, ge=0)  # auto: reduced precisions within this many mIoU points
    threads: int | None = Field(default=None, ge=1)
    api_token: str | None = Field(default=None, repr=False)
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=64)
    batching: bool = True
    max_batch_size: int = Field(default=8, ge=1, le=256)
    max_latency_ms: int = Field(default=10_000, ge=1)
    workers: int = Field(default=1, ge=1, le=64)
    timeout_s: int = Field(default=60, ge=1)
    # set by the `diga serve` supervisor: one id per start (scopes the recorded hot-swap), the file whose
    # existence turns readiness off (drain), the file a worker that cannot load its model writes its error to
    session: str | None = None
    drain_file: Path | None = None
    fatal_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeSettings:
        """Read the `DIGA_*` variables (empty ones count as unset); a clear error names a bad one."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var, field in ENV_VARS.items():
            raw = env.get(var, "")
            if raw.strip():
                values[field] = raw.strip()
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = err["loc"][0] if err["loc"] else "?"
            var = next((k for k, v in ENV_VARS.items() if v == field), str(field))
            raise DigaError(f"bad serving setting {var}={values.get(str(field))!r}: {err['msg']}") from None

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings (for the server's subprocess)."""
        out: dict[str, str] = {}
        for var, field in ENV_VARS.items():
            value = getattr(self, field)
            if value is None:
                continue
            out[var] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out

    def model_path(self) -> Path:
        """The start-up model file; a clear error when none is configured."""
        if self.model is None:
            raise DigaError("no model to serve: set DIGA_MODEL (or pass --model to `diga serve`)")
        return self.model

    def resolved_models_dir(self) -> Path:
        """The only folder hot-swap may load from: DIGA_MODELS_DIR, else the start-up model's folder."""
        base = self.models_dir if self.models_dir is not None else self.model_path().parent
        return base.resolve()
