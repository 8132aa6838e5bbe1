"""Hot-swap an adapter's current model into a running endpoint: save it, export it to ONNX with the
export pipeline's parity check (on frames the vehicle just saw), then POST /admin/reload.

Lives beside the fleet code, not in `adapt/`, because it reaches into `export/` and `serving/`
(`adapt/` must not import `serving/`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DigaError
from ..online.adapter import OnlineAdapter
from ..progress import log


def _write_frames(adapter: OnlineAdapter, folder: Path, n: int) -> int:
    """The newest `n` frames of the replay buffer as PNGs (the parity check's images)."""
    images = adapter.replay.images[-n:]
    for k, img in enumerate(images):
        Image.fromarray(img.permute(1, 2, 0).numpy().astype(np.uint8)).save(folder / f"{k:03d}.png")
    return len(images)


def push_model(adapter: OnlineAdapter, models_dir: str | Path, url: str, token: str | None, name: str | None = None,
               parity_data: str | None = None, parity_images: int = 4) -> dict[str, Any]:
    """Export the adapter's teacher to `models_dir/NAME.onnx` (parity-checked) and reload the endpoint on it.

    Parity runs on the newest frames of the replay buffer (or `parity_data`, a dataset spec); an export
    that fails parity raises before the endpoint is touched."""
    from ..export.pipeline import export_model
    from ..serving.client import SegmentClient

    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise DigaError(f"models directory {models_dir} does not exist; it must be the serving endpoint's models dir")
    name = name or f"online-{adapter.frame_index:07d}.onnx"
    if Path(name).name != name or not name.endswith(".onnx"):
        raise DigaError(f"hot-swap file name {name!r} must be a plain file name ending in .onnx")
    with tempfile.TemporaryDirectory(prefix="diga-hotswap-") as tmp:
        tmp_dir = Path(tmp)
        ckpt = adapter.save_model(tmp_dir / "model.safetensors")
        if parity_data is None:
            frames = tmp_dir / "frames"
            frames.mkdir()
            if _write_frames(adapter, frames, parity_images) == 0:
                raise DigaError("the adapter has no recent frames for the parity check; pass parity_data")
            parity_data = f"folder:{frames}"
        report = export_model(ckpt, "onnx", models_dir / name, parity_data=parity_data, parity_images=parity_images)
    log.info("exported %s (parity %s); asking %s to reload", name,
             "passed" if (report.get("parity") or {}).get("passed") else "skipped", url)
    with SegmentClient(url, token=token) as client:
        reply = client.reload(name)
    return {"file": str(models_dir / name), "parity": report.get("parity"), "reload": reply,
            "frame_index": adapter.frame_index}
