"""Accuracy-checked deployment paths: the measured mIoU change of a reduced-precision path (INT8, FP16,
bf16) against fp32, kept in a JSON sidecar beside the artefact, and an index by source checkpoint so
`runtime="auto"` can find every checked path of a model.

A path is a file run by a runtime at a precision ("onnxruntime-int8": an INT8 ONNX in onnxruntime;
"openvino-bf16": an fp32 graph with OpenVINO's bf16 hint). Its check holds the artefact's content hash,
so a file replaced after its check carries no check. `diga export --val` and `diga bench precision`
write checks; `auto` takes a checked path only when its change is within `max_miou_drop`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from ..io import atomic_write_json, file_sha256
from .cache import cache_dir

SIDECAR_SUFFIX = ".accuracy.json"
INDEX_FILE = "checked-paths.json"
DEFAULT_MAX_MIOU_DROP = 0.5


class AccuracyCheck(BaseModel):
    """One path's mIoU against its fp32 reference on a labelled set."""

    model_config = ConfigDict(extra="ignore")

    path_name: str  # e.g. onnxruntime-int8, openvino-int8, onnxruntime-fp16, openvino-bf16
    runtime: str  # onnxruntime | openvino | torch
    precision: str | None = None  # the precision hint the runtime is opened with (None: what the file holds)
    artefact_sha256: str
    source_checkpoint_hash: str
    reference: str  # the fp32 path it was compared with, e.g. "torch (fp32)"
    reference_miou: float
    miou: float
    miou_change: float  # miou - reference_miou, in mIoU points
    val: str
    images: int
    measured_by: str  # "diga export" | "diga bench precision" | "diga bench latency"
    measured_at: str = ""

    def accepted(self, max_miou_drop: float = DEFAULT_MAX_MIOU_DROP) -> bool:
        """True when the path loses at most `max_miou_drop` mIoU points against fp32."""
        return -self.miou_change <= max_miou_drop


def sidecar_path(artefact: str | Path) -> Path:
    p = Path(artefact)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def artefact_sha256(artefact: str | Path) -> str:
    """Content hash of an artefact (an OpenVINO IR: its .xml and its .bin weights)."""
    p = Path(artefact)
    digest = file_sha256(p)
    if p.suffix.lower() == ".xml" and p.with_suffix(".bin").is_file():
        digest = digest[:32] + file_sha256(p.with_suffix(".bin"))[:32]
    return digest


def read_checks(artefact: str | Path) -> dict[str, AccuracyCheck]:
    """The still-valid checks of an artefact by path name (none when the file changed since)."""
    side = sidecar_path(artefact)
    try:
        raw = json.loads(side.read_text())
        checks = {k: AccuracyCheck.model_validate(v) for k, v in raw.get("checks", {}).items()}
    except (OSError, ValueError, ValidationError, AttributeError):
        return {}
    if not checks:
        return {}
    current = artefact_sha256(artefact)
    return {k: c for k, c in checks.items() if c.artefact_sha256 == current}


def record_check(artefact: str | Path, check: AccuracyCheck) -> Path:
    """Write `check` into the artefact's sidecar (other paths' checks kept) and index it by source checkpoint."""
    artefact = Path(artefact).resolve()
    if not check.measured_at:
        check = check.model_copy(update={"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    checks = read_checks(artefact)
    checks[check.path_name] = check
    side = sidecar_path(artefact)
    atomic_write_json(side, {"sidecar_version": 1, "artefact": artefact.name,
                             "checks": {k: c.model_dump() for k, c in checks.items()}})
    index = _read_index()
    index.setdefault(check.source_checkpoint_hash, {})[check.path_name] = {
        "file": str(artefact), "runtime": check.runtime, "precision": check.precision}
    try:
        atomic_write_json(cache_dir() / INDEX_FILE, index)
    except OSError:  # a read-only cache only costs auto the index; the sidecar is written
        pass
    return side


def checked_paths(source_hash: str) -> list[tuple[Path, AccuracyCheck]]:
    """Every indexed path of a source checkpoint whose artefact still exists and still matches its check."""
    out = []
    for name, entry in sorted(_read_index().get(source_hash, {}).items()):
        f = Path(entry["file"])
        if not f.is_file():
            continue
        check = read_checks(f).get(name)
        if check is not None and check.source_checkpoint_hash == source_hash:
            out.append((f, check))
    return out


def _read_index() -> dict[str, dict[str, dict[str, str | None]]]:
    try:
        data = json.loads((cache_dir() / INDEX_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


__all__ = ["DEFAULT_MAX_MIOU_DROP", "AccuracyCheck", "artefact_sha256", "checked_paths", "read_checks",
           "record_check", "sidecar_path"]
