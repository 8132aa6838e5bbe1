"""Hot-swap of the served model: a path check that keeps loads inside the models directory, a parity
smoke test a new model must pass, and a slot whose runtime reference is replaced in one assignment
(a batch that already took the old reference finishes on it)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DigaError
from .codecs import RequestError

MIN_AGREEMENT = 0.999  # argmax(logits) vs labels, and single vs batched, on the probe batch
CURRENT_FILE = ".diga-current-model.json"  # in the models dir: the model a hot-swap installed


def record_current(models_dir: Path, model: Path, model_hash: str, generation: int, session: str | None,
                   startup_model: Path) -> Path:
    """Write the swapped-in model's record atomically, so a restarted model worker serves it too."""
    from ..io import atomic_write_json

    path = models_dir / CURRENT_FILE
    try:
        atomic_write_json(path, {"model": str(model.relative_to(models_dir)), "model_hash": model_hash,
                                 "generation": generation, "session": session, "startup_model": str(startup_model)})
    except OSError as exc:
        raise DigaError(f"cannot record the new model in {path} ({exc.strerror}); a worker restart would serve the "
                        "old one, so the swap is refused: make the models directory writable") from None
    return path


def recorded_current(models_dir: Path, session: str | None, startup_model: Path) -> tuple[Path, dict[str, Any]] | None:
    """The model a hot-swap installed in this serving session (same session id and start-up model), if any."""
    import json

    try:
        rec = json.loads((models_dir / CURRENT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("session") != session or rec.get("startup_model") != str(startup_model):
        return None
    try:
        return resolve_model_file(models_dir, str(rec.get("model", ""))), rec
    except RequestError as exc:
        raise DigaError(f"the hot-swapped model recorded in {models_dir / CURRENT_FILE} is gone ({exc})") from None


def describe(rt: Any) -> dict[str, Any]:
    """What GET /metadata shows about a loaded runtime."""
    meta = rt.meta
    return {
        "model_name": meta.model_name, "model_hash": rt.model_hash, "runtime": rt.name,
        "precision": getattr(rt, "precision", ""), "device": getattr(rt, "device", "cpu"),
        "class_names": list(meta.class_names), "palette": [list(map(int, c)) for c in meta.palette],
        "num_classes": len(meta.class_names), "input_size": list(meta.input_size), "mean": list(meta.mean),
        "std": list(meta.std), "stage": meta.stage, "sdk_version": meta.sdk_version,
    }


def resolve_model_file(models_dir: Path, name: str) -> Path:
    """`name` inside `models_dir` (symlinks resolved); 400 for a malformed name, 403 if it escapes, 404 if absent."""
    if not isinstance(name, str) or not name.strip() or "\x00" in name or len(name) > 4096:
        raise RequestError("'path' must be the non-empty name of a model file inside the models directory")
    root = models_dir.resolve()
    try:
        candidate = (root / name).resolve()
    except (OSError, RuntimeError, ValueError):
        raise RequestError(f"cannot resolve model path {name!r}") from None
    if not candidate.is_relative_to(root):
        raise RequestError(f"model path {name!r} is outside the models directory; only files inside it can be loaded",
                           403)
    try:
        found = candidate.is_file()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise RequestError(f"model path {name[:80]!r} cannot be looked up: {exc.strerror}") from None
    if not found:
        raise RequestError(f"model file {name[:200]!r} not found in the models directory", 404)
    return candidate


def probe_images(size: tuple[int, int], n: int = 2, seed: int = 0) -> np.ndarray:
    """A deterministic (n,H,W,3) uint8 batch with smooth structure and noise (not a blank frame)."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h, dtype=np.float32), np.linspace(0, 1, w, dtype=np.float32), indexing="ij")
    base = np.stack([yy, xx, 1 - yy * xx], -1)[None] * 200
    noise = rng.normal(0, 25, (n, h, w, 3)).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def smoke_test(rt: Any, expect_classes: list[str] | None) -> dict[str, Any]:
    """Refuse a model that would serve wrong answers: class set, output shapes/ranges, and parity between its
    label path and argmax(logits) and between a batched and a single call (>= 99.9% agreement each)."""
    meta = rt.meta
    if expect_classes is not None and list(meta.class_names) != list(expect_classes):
        raise DigaError(f"the new model's classes {list(meta.class_names)} differ from the served model's "
                        f"{list(expect_classes)}; clients rely on the class ids, so hot-swap refuses it")
    h, w = (int(v) for v in meta.input_size)
    batch = probe_images((h, w))
    labels = np.asarray(rt.predict(batch))
    if labels.shape != (len(batch), h, w) or labels.dtype != np.uint8:
        raise DigaError(f"the new model returned labels of shape {labels.shape} {labels.dtype}, expected "
                        f"{(len(batch), h, w)} uint8")
    if int(labels.max()) >= len(meta.class_names):
        raise DigaError(f"the new model returned label {int(labels.max())} for {len(meta.class_names)} classes")
    logits = np.asarray(rt.logits(batch))
    if logits.shape != (len(batch), len(meta.class_names), h, w) or not np.isfinite(logits).all():
        raise DigaError(f"the new model's logits have shape {logits.shape} or non-finite values")
    argmax_agree = float((logits.argmax(1) == labels).mean())
    single_agree = float((np.asarray(rt.predict(batch[:1]))[0] == labels[0]).mean())
    if argmax_agree < MIN_AGREEMENT or single_agree < MIN_AGREEMENT:
        raise DigaError(f"the new model failed the parity smoke test: labels vs argmax(logits) {argmax_agree:.4%}, "
                        f"single vs batched {single_agree:.4%} (need >= {MIN_AGREEMENT:.1%})")
    return {"argmax_agreement": argmax_agree, "batch_agreement": single_agree, "probe": [len(batch), h, w]}


class ModelSlot:
    """Holds the served runtime; `current` is read once per batch, `swap` replaces it in one assignment."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self._lock = threading.Lock()  # one reload at a time
        self.generation = 0

    @property
    def current(self) -> Any:
        return self._runtime

    def load_and_swap(self, path: Path, runtime: str, device: str, precision: str | None,
                      threads: int | None, before_swap: Any = None) -> dict[str, Any]:
        """Open `path`, smoke-test it against the served model, run `before_swap(runtime, generation)` (the
        durable record), then swap; the old model serves until then."""
        from ..runtime.runtimes import open_runtime

        if not self._lock.acquire(blocking=False):
            raise RequestError("another reload is in progress; retry when it has finished", 409)
        try:
            new = open_runtime(path, runtime=runtime, device=device, precision=precision, threads=threads)
            old = self._runtime
            check = smoke_test(new, list(old.meta.class_names))
            if before_swap is not None:
                before_swap(new, self.generation + 1)
            self._runtime = new  # the swap: one reference assignment
            self.generation += 1
            return {"previous": describe(old), "current": describe(new), "smoke_test": check,
                    "generation": self.generation}
        finally:
            self._lock.release()
