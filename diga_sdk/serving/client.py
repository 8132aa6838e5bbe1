"""Python client of the segmentation service, on BentoML's `SyncHTTPClient` (readiness wait, bearer
token, connection pooling); images in as paths, bytes or arrays, label maps out as numpy arrays."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DigaError


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """Fail at once, naming the address, when nothing accepts connections at `url` (no readiness wait, no
    token hint: a refused connection is not an auth problem)."""
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/livez", timeout=timeout)
    except httpx.ConnectError as exc:
        raise DigaError(f"cannot connect to {url}: {exc or 'connection refused'}; is `diga serve` running there "
                        "(check the host and port)?") from None
    except httpx.TimeoutException:
        raise DigaError(f"{url} did not answer within {timeout:.0f} s; check the address and the server") from None
    except httpx.HTTPError as exc:
        raise DigaError(f"cannot reach {url}: {exc}") from None


class SegmentClient:
    """`SegmentClient("http://127.0.0.1:3000", token=...)`: segment(), metadata(), reload()."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0, ready_timeout: float = 30.0) -> None:
        import bentoml
        import httpx

        check_reachable(url)
        try:
            self._bento = bentoml.SyncHTTPClient(url, token=token, timeout=timeout, server_ready_timeout=ready_timeout)
        except (httpx.HTTPError, bentoml.exceptions.BentoMLException) as exc:
            hint = " (check the token: DIGA_API_TOKEN)" if token is None or "schema" in str(exc) else ""
            raise DigaError(f"cannot reach the diga service at {url}: {exc}{hint}") from None
        self.url = url
        self.http: httpx.Client = self._bento.client  # carries the Authorization header

    def close(self) -> None:
        self._bento.close()

    def __enter__(self) -> SegmentClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def metadata(self) -> dict[str, Any]:
        """The served model: classes, palette, model name and hash, runtime, input size, batching."""
        return self._check(self.http.get("/metadata")).json()

    def segment_raw(self, image: str | Path | bytes | np.ndarray, format: str = "png", rle: bool = False,
                    alpha: float = 0.5, multipart: bool = False) -> tuple[bytes, str]:
        """POST /segment; returns (body, media type) as the server sent them."""
        data, ctype = _encode_input(image)
        params = {"format": format, "rle": str(rle).lower(), "alpha": alpha}
        if multipart:
            resp = self.http.post("/segment", params=params, files={"image": ("image", data, ctype)})
        else:
            resp = self.http.post("/segment", params=params, content=data, headers={"Content-Type": ctype})
        resp = self._check(resp)
        return resp.content, resp.headers.get("content-type", "")

    def segment(self, image: str | Path | bytes | np.ndarray, format: str = "png", rle: bool = False,
                alpha: float = 0.5) -> np.ndarray | dict[str, Any]:
        """Label map (H,W) uint8 for 'png', RGB overlay (H,W,3) for 'overlay', a dict for 'json'."""
        import json

        from PIL import Image

        body, media = self.segment_raw(image, format, rle, alpha)
        if media.startswith("application/json"):
            return json.loads(body)
        return np.asarray(Image.open(io.BytesIO(body)))

    def reload(self, path: str) -> dict[str, Any]:
        """POST /admin/reload: hot-swap to a model file inside the server's models directory."""
        return self._check(self.http.post("/admin/reload", json={"path": path})).json()

    @staticmethod
    def _check(resp: Any) -> Any:
        if resp.status_code >= 400:
            try:
                msg = resp.json().get("error", resp.text)
            except ValueError:
                msg = resp.text
            raise DigaError(f"server answered {resp.status_code} for {resp.request.url.path}: {msg}")
        return resp


def _encode_input(image: str | Path | bytes | np.ndarray) -> tuple[bytes, str]:
    """Bytes as they are (type sniffed), a file's bytes, or an (H,W,3) uint8 array as a PNG."""
    if isinstance(image, np.ndarray):
        from .codecs import encode_png

        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise DigaError(f"image arrays must be (H,W,3) or (H,W) uint8, got {image.shape} {image.dtype}")
        return encode_png(image), "image/png"
    if isinstance(image, str | Path):
        p = Path(image)
        if not p.is_file():
            raise DigaError(f"image {p} not found")
        image = p.read_bytes()
    return bytes(image), _sniff(bytes(image[:16]))


def _sniff(head: bytes) -> str:
    if head.startswith(b"\x89PNG"):
        return "image/png"
    if head.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def predict_files_remote(url: str, files: list[Path], out: Path, *, color: bool = False,
                         token: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """`diga predict --url`: label maps (+ overlays) from a served model, named as `predict_files` names them."""
    import os
    import time

    from ..io import atomic_write_bytes
    from ..progress import progress_bar
    from .runtime_files import claim_outputs

    token = token if token is not None else (os.environ.get("DIGA_API_TOKEN") or None)
    dests = claim_outputs(files, out, color, overwrite)
    outputs: list[str] = []
    t0 = time.perf_counter()
    with SegmentClient(url, token=token) as client:
        meta = client.metadata()
        out.mkdir(parents=True, exist_ok=True)
        with progress_bar(f"predict ({url})", len(files)) as bar:
            for f, (dest, color_dest) in zip(files, dests, strict=True):
                body, _ = client.segment_raw(f, "png")
                atomic_write_bytes(dest, body)
                outputs.append(str(dest))
                if color_dest is not None:
                    atomic_write_bytes(color_dest, client.segment_raw(f, "overlay")[0])
                bar.advance()
    seconds = time.perf_counter() - t0
    return {"runtime": f"served: {meta['runtime']} ({meta.get('precision', '')}) at {url}", "url": url,
            "model_hash": meta["model_hash"], "images": len(files), "outputs": outputs,
            "ms_per_image": 1e3 * seconds / max(len(files), 1)}
